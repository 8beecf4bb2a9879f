"""hf_cads: compute-budget-aware data selection and finetuning for the Hugging Face ecosystem.

Example:
    >>> from hf_cads import BudgetedTrainer, BudgetedTrainingArguments, get_selector, FlopLedger
"""

__version__ = "0.1.0"

from .decontamination import ContaminationReport, decontaminate, find_contamination
from .flops import BudgetExceededError, FlopLedger, FlopProfile, LoraSpec
from .selectors import (
    CADSSelector,
    CADSSelectorConfig,
    LESSSelector,
    LESSSelectorConfig,
    PreparedScoring,
    ScoreOutput,
    SelectionResult,
    Selector,
    SelectorConfig,
    get_selector,
    list_selectors,
    register_selector,
)
from .hub import DatasetReference
from .planner import PerformanceFit, Recommendation, fit_performance_curve, make_plan, pareto_frontier, plot_plan, recommend
from .records import RunRecord, append_record, read_records, record_from_trainer
from .trainer import BudgetedTrainer, BudgetedTrainingArguments

__all__ = [
    "BudgetExceededError",
    "BudgetedTrainer",
    "BudgetedTrainingArguments",
    "CADSSelector",
    "CADSSelectorConfig",
    "ContaminationReport",
    "DatasetReference",
    "FlopLedger",
    "FlopProfile",
    "LESSSelector",
    "LESSSelectorConfig",
    "LoraSpec",
    "PerformanceFit",
    "PreparedScoring",
    "Recommendation",
    "RunRecord",
    "ScoreOutput",
    "SelectionResult",
    "Selector",
    "SelectorConfig",
    "__version__",
    "append_record",
    "decontaminate",
    "find_contamination",
    "fit_performance_curve",
    "get_selector",
    "list_selectors",
    "make_plan",
    "pareto_frontier",
    "plot_plan",
    "read_records",
    "recommend",
    "record_from_trainer",
    "register_selector",
]
