"""FLOP accounting: analytic cost estimates for transformer models and a budget ledger.

The estimates count the floating point operations of matrix multiplications (2 per multiply-add),
which is what dominates LLM compute and what :class:`torch.utils.flop_counter.FlopCounterMode`
measures. Unlike the common ``6 * N * tokens`` rule they include the attention score term
(``QK^T`` and ``AV``, quadratic in the sequence length) and they know that LoRA leaves the base
weights frozen, so their backward pass needs input gradients only (no weight-gradient matmuls).

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
