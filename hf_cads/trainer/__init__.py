"""``BudgetedTrainer``: a drop-in ``transformers.Trainer`` whose data selection and training share one
FLOP budget.

- :mod:`~hf_cads.trainer.arguments`: ``BudgetedTrainingArguments``
- :mod:`~hf_cads.trainer.flop_budget`: ``FlopBudgetMixin``, the budget logic (sizing, the per-step cap,
  charging, checkpointed ledger, run record), reusable by other ``Trainer`` subclasses
- :mod:`~hf_cads.trainer.trainer`: ``BudgetedTrainer`` (selection through
  :func:`hf_cads.selectors.select_within_budget`, then budgeted training)
- :mod:`~hf_cads.trainer.sft`: ``BudgetedSFTTrainer`` / ``BudgetedSFTConfig`` (TRL's ``SFTTrainer`` on the
  same mixin)
- :mod:`~hf_cads.trainer.tokenization`: tokenising and collating causal-LM batches
- :mod:`~hf_cads.trainer.model_card`: the compute-budget section of the model card
"""

from .arguments import BudgetedTrainingArguments, BudgetFields
from .flop_budget import LEDGER_FILE, FlopBudgetMixin, mean_step_flops, packed_sequence_lengths
from .tokenization import CausalLMCollator, tokenize_for_causal_lm
from .sft import BudgetedSFTConfig, BudgetedSFTTrainer, sft_config_from
from .trainer import BudgetedTrainer

__all__ = [
    "LEDGER_FILE",
    "BudgetFields",
    "BudgetedSFTConfig",
    "BudgetedSFTTrainer",
    "BudgetedTrainer",
    "BudgetedTrainingArguments",
    "CausalLMCollator",
    "FlopBudgetMixin",
    "mean_step_flops",
    "packed_sequence_lengths",
    "sft_config_from",
    "tokenize_for_causal_lm",
]
