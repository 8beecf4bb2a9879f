"""Perplexity selection: score each pool row by the causal-LM loss of a (small) selection model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..data import get_texts
from .base import PreparedScoring, ScoreOutput, Selector, SelectorConfig
from .registry import register_selector
from .scoring import CausalLMSelectorMixin


@dataclass
class PerplexitySelectorConfig(SelectorConfig):
    """Options of :class:`PerplexitySelector`.

    Args:
        model_name_or_path: the selection model (alias, folder or Hub id); ignored when a model
            object is passed to the selector.
        prefer: ``low`` keeps the rows the model finds most likely (clean, in-distribution);
            ``high`` keeps the most surprising ones.
    """

    model_name_or_path: str = "smollm2-135m-instruct"
    prefer: Literal["low", "high"] = "low"

    def __post_init__(self) -> None:
        if self.prefer not in ("low", "high"):
            raise ValueError(f"prefer must be 'low' or 'high', got {self.prefer!r}.")


@register_selector("perplexity")
class PerplexitySelector(CausalLMSelectorMixin, Selector):
    """Keeps the rows with the lowest (or highest) per-token LM loss. The target is not used.

    Example:
        >>> from hf_cads import get_selector
        >>> selector = get_selector("perplexity", model=model, tokenizer=tokenizer)  # doctest: +SKIP
        >>> result = selector.select(pool, fraction=0.1)  # doctest: +SKIP
    """

    config_class = PerplexitySelectorConfig
    requires_target = False
    uses_model = True
    reuses_training_model = True
    shardable = True

    def _texts(self, pool: Any) -> list[str]:
        _, tokenizer = self._load_model()
        return get_texts(pool, self.config.text_column, tokenizer, role="pool")

    def score_rows(
        self, pool: Any, target: Any | None, rows: range, prepared: PreparedScoring, progress: Any = None
    ) -> ScoreOutput:
        losses, flops = self._scorer().losses(
            self._texts(pool.select(rows)), desc="perplexity scoring", progress=progress
        )
        scores = -losses if self.config.prefer == "low" else losses
        return ScoreOutput(scores, flops, {"loss": losses})

    def estimate_flops(self, pool: Any, target: Any | None) -> float:
        scorer, texts = self._scorer(), self._texts(pool)
        return sum(scorer.estimate_flops(texts[rows.start : rows.stop]) for rows in self.shard_ranges(len(pool)))
