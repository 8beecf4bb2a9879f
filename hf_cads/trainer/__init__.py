"""``BudgetedTrainer``: a drop-in ``transformers.Trainer`` whose data selection and training share one
FLOP budget.

- :mod:`~hf_cads.trainer.arguments`: ``BudgetedTrainingArguments``
- :mod:`~hf_cads.trainer.flop_budget`: ``FlopBudgetMixin``, the budget logic (sizing, the per-step cap,
  charging, checkpointed ledger, run record), reusable by other ``Trainer`` subclasses
- :mod:`~hf_cads.trainer.trainer`: ``BudgetedTrainer`` (selection through
  :func:`hf_cads.selectors.select_within_budget`, then budgeted training)
- :mod:`~hf_cads.trainer.sft`: ``BudgetedSFTTrainer`` / ``BudgetedSFTConfig`` (TRL's ``SFTTrainer`` on the
  same mixin)
- :mod:`~hf_cads.trainer.preparation`: what both trainers do to the model first (loading by name
  with ``model_init_kwargs``, the QLoRA and vocabulary checks, the FLOP profile)
- :mod:`~hf_cads.trainer.preemption`: SIGTERM / SIGINT during a budgeted run save a checkpoint first
- :mod:`~hf_cads.trainer.tokenization`: tokenising and collating causal-LM batches
- :mod:`~hf_cads.trainer.model_card`: the compute-budget section of the model card
"""

from .arguments import BudgetedTrainingArguments, BudgetFields, convert_training_arguments
from .flop_budget import LEDGER_FILE, FlopBudgetMixin, mean_step_flops, packed_sequence_lengths
from .preemption import PreemptionGuard
from .preparation import prepare_model
from .sft import BudgetedSFTConfig, BudgetedSFTTrainer, sft_arguments, sft_config_from
from .tokenization import CausalLMCollator, tokenize_for_causal_lm
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
    "PreemptionGuard",
    "convert_training_arguments",
    "mean_step_flops",
    "packed_sequence_lengths",
    "prepare_model",
    "sft_arguments",
    "sft_config_from",
    "tokenize_for_causal_lm",
]
