"""hf_cads: compute-budget-aware data selection and finetuning for the Hugging Face ecosystem.

Example:
    >>> from hf_cads import BudgetedTrainer, BudgetedTrainingArguments, get_selector, FlopLedger
"""

from ._version import __version__
from .flops.charges import SelectionCharge, TrainingPlan
from .decontamination import ContaminationReport, decontaminate, find_contamination
from .flops import BudgetExceededError, FlopLedger, FlopProfile, LoraSpec
from .hub import DatasetReference, push_selection
from .planner import (
    PerformanceFit,
    Recommendation,
    fit_performance_curve,
    make_plan,
    pareto_frontier,
    plot_plan,
    recommend,
)
from .records import RunRecord, append_record, read_records, record_from_trainer
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
    select_for_targets,
    select_within_budget,
)
from .trainer import BudgetedSFTConfig, BudgetedSFTTrainer, BudgetedTrainer, BudgetedTrainingArguments, FlopBudgetMixin

__all__ = [
    "BudgetExceededError",
    "BudgetedSFTConfig",
    "BudgetedSFTTrainer",
    "BudgetedTrainer",
    "BudgetedTrainingArguments",
    "CADSSelector",
    "CADSSelectorConfig",
    "ContaminationReport",
    "DatasetReference",
    "FlopBudgetMixin",
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
    "SelectionCharge",
    "SelectionResult",
    "Selector",
    "SelectorConfig",
    "TrainingPlan",
    "__version__",
    "append_record",
    "decontaminate",
    "find_contamination",
    "fit_performance_curve",
    "get_selector",
    "list_selectors",
    "make_plan",
    "pareto_frontier",
    "push_selection",
    "plot_plan",
    "read_records",
    "recommend",
    "record_from_trainer",
    "register_selector",
    "select_for_targets",
    "select_within_budget",
]
