"""``BudgetedTrainer``: a drop-in ``transformers.Trainer`` whose data selection and training share one
FLOP budget.

- :mod:`~hf_cads.trainer.arguments`: ``BudgetedTrainingArguments``
- :mod:`~hf_cads.trainer.budget`: ``FlopBudgetMixin``, the budget logic (sizing, the per-step cap,
  charging, checkpointed ledger, run record), reusable by other ``Trainer`` subclasses
- :mod:`~hf_cads.trainer.trainer`: ``BudgetedTrainer`` (selection through
  :func:`hf_cads.selectors.select_within_budget`, then budgeted training)
- :mod:`~hf_cads.trainer.data`: tokenising and collating causal-LM batches
- :mod:`~hf_cads.trainer.model_card`: the compute-budget section of the model card
"""

from .arguments import BudgetedTrainingArguments
from .budget import LEDGER_FILE, FlopBudgetMixin, mean_step_flops
from .data import CausalLMCollator, tokenize_for_causal_lm
from .trainer import BudgetedTrainer

__all__ = [
    "LEDGER_FILE",
    "BudgetedTrainer",
    "BudgetedTrainingArguments",
    "CausalLMCollator",
    "FlopBudgetMixin",
    "mean_step_flops",
    "tokenize_for_causal_lm",
]
