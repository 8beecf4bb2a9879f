"""hf_cads: compute-budget-aware data selection and finetuning for the Hugging Face ecosystem.

Every public name is importable from here; its module is imported on first use, so
``import hf_cads`` loads neither the trainers (transformers' Trainer, TRL, peft, bitsandbytes) nor
the model-based selectors until they are asked for.

Example:
    >>> import subprocess, sys
    >>> heavy = "('trl', 'peft', 'bitsandbytes', 'sentence_transformers')"
    >>> check = f"import sys, hf_cads; print([m for m in {heavy} if m in sys.modules])"
    >>> subprocess.run([sys.executable, "-c", check], capture_output=True, text=True).stdout.strip()
    '[]'
    >>> import hf_cads
    >>> hf_cads.get_selector("random").name
    'random'
"""

from ._lazy import lazy_exports
from ._quiet import hold_kernel_warnings
from ._version import __version__

# Importing transformers (peft -> bitsandbytes) warns about a missing 4-bit CPU kernel on every run;
# that line is held back until 4-bit loading is asked for (hf_cads._quiet).
hold_kernel_warnings()

_EXPORTS = {
    "SelectionCharge": ".flops.charges",
    "TrainingPlan": ".flops.charges",
    "ContaminationReport": ".decontamination",
    "decontaminate": ".decontamination",
    "find_contamination": ".decontamination",
    "BudgetExceededError": ".flops",
    "FlopLedger": ".flops",
    "FlopProfile": ".flops",
    "LoraSpec": ".flops",
    "DatasetReference": ".hub",
    "push_selection": ".hub",
    "PerformanceFit": ".planner",
    "Recommendation": ".planner",
    "fit_performance_curve": ".planner",
    "make_plan": ".planner",
    "pareto_frontier": ".planner",
    "plot_plan": ".planner",
    "recommend": ".planner",
    "RunRecord": ".records",
    "append_record": ".records",
    "read_records": ".records",
    "record_from_trainer": ".records",
    "CADSSelector": ".selectors",
    "CADSSelectorConfig": ".selectors",
    "LESSSelector": ".selectors",
    "LESSSelectorConfig": ".selectors",
    "PreparedScoring": ".selectors",
    "ScoreOutput": ".selectors",
    "SelectionResult": ".selectors",
    "Selector": ".selectors",
    "SelectorConfig": ".selectors",
    "get_selector": ".selectors",
    "list_selectors": ".selectors",
    "register_selector": ".selectors",
    "select_for_targets": ".selectors",
    "select_within_budget": ".selectors",
    "BudgetedSFTConfig": ".trainer",
    "BudgetedSFTTrainer": ".trainer",
    "BudgetedTrainer": ".trainer",
    "BudgetedTrainingArguments": ".trainer",
    "FlopBudgetMixin": ".trainer",
}

__getattr__, _dir = lazy_exports(__name__, _EXPORTS)
__all__ = ["__version__", *sorted(_EXPORTS)]


def __dir__() -> list[str]:
    return [*_dir(), "__version__"]
