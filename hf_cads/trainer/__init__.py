"""``BudgetedTrainer``: a drop-in ``transformers.Trainer`` whose data selection and training share one
FLOP budget (see :mod:`hf_cads.trainer.trainer`), and its model card (:mod:`hf_cads.trainer.model_card`)."""

from .trainer import LEDGER_FILE, BudgetedTrainer, BudgetedTrainingArguments, CausalLMCollator, mean_step_flops, tokenize_for_causal_lm

__all__ = ["LEDGER_FILE", "BudgetedTrainer", "BudgetedTrainingArguments", "CausalLMCollator", "mean_step_flops", "tokenize_for_causal_lm"]
