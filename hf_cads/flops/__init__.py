"""FLOP accounting: analytic cost estimates for transformer models and a budget ledger.

By job: :mod:`~hf_cads.flops.profile` (:class:`FlopProfile`: what a forward, backward, training step
or generation costs, attention and frozen LoRA base weights included; BM25 and matmul cost
formulas) and :mod:`~hf_cads.flops.ledger` (:class:`FlopLedger`: FLOPs spent by phase under a hard cap).

Example:
    >>> from transformers import LlamaConfig
    >>> from hf_cads.flops import FlopProfile, FlopLedger
    >>> profile = FlopProfile.from_config(LlamaConfig(hidden_size=64, intermediate_size=128,
    ...     num_hidden_layers=2, num_attention_heads=4, vocab_size=1000))
    >>> ledger = FlopLedger(budget=1e12)
    >>> ledger.charge("train", profile.train_step_flops(batch_size=8, seq_len=128))
    >>> ledger.spent <= ledger.budget
    True
"""

from .ledger import BUDGETED_PHASES, LEDGER_FORMAT, PHASES, BudgetExceededError, FlopLedger, validate_budget
from .profile import T5_MODEL_TYPES, FlopProfile, LinearLayer, LoraSpec, bm25_flops, matmul_flops

__all__ = [
    "BUDGETED_PHASES",
    "LEDGER_FORMAT",
    "PHASES",
    "T5_MODEL_TYPES",
    "BudgetExceededError",
    "FlopLedger",
    "FlopProfile",
    "LinearLayer",
    "LoraSpec",
    "bm25_flops",
    "matmul_flops",
    "validate_budget",
]
