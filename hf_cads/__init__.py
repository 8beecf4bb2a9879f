"""hf_cads: compute-budget-aware data selection and finetuning for the Hugging Face ecosystem.

Example:
    >>> from hf_cads import BudgetedTrainer, BudgetedTrainingArguments, get_selector, FlopLedger
"""

__version__ = "0.1.0"

from .flops import BudgetExceededError, FlopLedger, FlopProfile, LoraSpec
from .selectors import (
    LESSSelector,
    LESSSelectorConfig,
    ScoreOutput,
    SelectionResult,
    Selector,
    SelectorConfig,
    get_selector,
    list_selectors,
    register_selector,
)
from .trainer import BudgetedTrainer, BudgetedTrainingArguments

__all__ = [
    "BudgetExceededError",
    "BudgetedTrainer",
    "BudgetedTrainingArguments",
    "FlopLedger",
    "FlopProfile",
    "LESSSelector",
    "LESSSelectorConfig",
    "LoraSpec",
    "ScoreOutput",
    "SelectionResult",
    "Selector",
    "SelectorConfig",
    "__version__",
    "get_selector",
    "list_selectors",
    "register_selector",
]
