"""Uniform random selection: the baseline every other selector must beat at equal FLOPs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import PreparedScoring, ScoreOutput, Selector, SelectorConfig
from .registry import register_selector


@dataclass
class RandomSelectorConfig(SelectorConfig):
    """Random selection needs only a seed.

    Example:
        >>> RandomSelectorConfig(seed=7).seed
        7
    """


@register_selector("random")
class RandomSelector(Selector):
    """Keeps a seeded uniform sample; costs no FLOPs and ignores the target.

    Example:
        >>> from datasets import Dataset
        >>> from hf_cads import get_selector
        >>> pool = Dataset.from_dict({"text": [str(i) for i in range(10)]})
        >>> len(get_selector("random", seed=1).select(pool, k=3))
        3
    """

    config_class = RandomSelectorConfig
    requires_target = False
    shardable = True

    def score_rows(
        self, pool: Any, target: Any | None, rows: range, prepared: PreparedScoring, progress: Any = None
    ) -> ScoreOutput:
        # Row i gets the i-th draw of the seeded stream (as default_rng(seed).random(len(pool))
        # would give it), whichever shard or process scores it: each double takes one 64-bit step.
        generator = np.random.PCG64(self.config.seed)
        generator.advance(rows.start)
        return ScoreOutput(np.random.Generator(generator).random(len(rows)), 0.0)

    def estimate_flops(self, pool: Any, target: Any | None) -> float:
        return 0.0
