"""Data selectors on ``datasets.Dataset``, by name: ``get_selector("bm25")``.

Importing this package registers the built-in selectors.
"""

from .base import Selector
from .bm25 import BM25Selector, BM25SelectorConfig
from .cads import CADSSelector, CADSSelectorConfig, CausalLMBackend, TensorBackend
from .embedding import EmbeddingSelector, EmbeddingSelectorConfig
from .less import LESSSelector, LESSSelectorConfig
from .options import SelectorConfig
from .perplexity import PerplexitySelector, PerplexitySelectorConfig
from .random import RandomSelector, RandomSelectorConfig
from .rds import RDSSelector, RDSSelectorConfig
from .registry import get_selector, get_selector_class, list_selectors, register_selector
from .result import (
    INDEX_COLUMN,
    SCORE_COLUMN,
    PreparedScoring,
    ScoreOutput,
    SelectionResult,
    resolve_k,
    top_k_indices,
)
from .within_budget import (
    MULTI_TARGET_PATHS,
    TargetSelections,
    build_selector,
    select_for_targets,
    select_within_budget,
    solve_budget_split,
)

__all__ = [
    "INDEX_COLUMN",
    "SCORE_COLUMN",
    "BM25Selector",
    "BM25SelectorConfig",
    "CADSSelector",
    "CADSSelectorConfig",
    "CausalLMBackend",
    "TensorBackend",
    "EmbeddingSelector",
    "EmbeddingSelectorConfig",
    "LESSSelector",
    "LESSSelectorConfig",
    "PerplexitySelector",
    "PerplexitySelectorConfig",
    "PreparedScoring",
    "RandomSelector",
    "RandomSelectorConfig",
    "RDSSelector",
    "RDSSelectorConfig",
    "ScoreOutput",
    "SelectionResult",
    "Selector",
    "SelectorConfig",
    "build_selector",
    "select_for_targets",
    "select_within_budget",
    "solve_budget_split",
    "MULTI_TARGET_PATHS",
    "TargetSelections",
    "get_selector",
    "get_selector_class",
    "list_selectors",
    "register_selector",
    "resolve_k",
    "top_k_indices",
]
