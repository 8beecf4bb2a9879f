"""The selector contract shared by every data selector: config, result and the ``select`` flow.

A selector turns a candidate ``pool`` (a :class:`datasets.Dataset`) and a ``target`` (validation
examples of the task one finetunes for) into a :class:`SelectionResult`: the chosen rows, their
scores and the FLOPs actually spent scoring. Subclasses implement :meth:`Selector.score` (one
number per pool row, higher = keep) and :meth:`Selector.estimate_flops` (the cost before any work,
so a budget can be checked up front); the top-k choice and all input validation live here.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

INDEX_COLUMN = "pool_index"
SCORE_COLUMN = "score"


@dataclass
class SelectorConfig:
    """Options every selector understands.

    Args:
        text_column: pool column holding the text to score. ``None`` picks ``text`` or, failing
            that, chat ``messages`` rendered with the tokenizer's chat template.
        target_text_column: the same for the target set (defaults to ``text_column``'s rule).
        seed: makes every random choice reproducible.
        batch_size: examples per forward pass for model-based selectors.
        max_length: token limit per example for model-based selectors.
        show_progress: show a tqdm bar while scoring.
        allow_duplicates: accept a pool with repeated rows (by default an error: a duplicate
            would be scored, chosen and trained on twice).
    """

    text_column: str | None = None
    target_text_column: str | None = None
    seed: int = 42
    batch_size: int = 8
    max_length: int = 512
    show_progress: bool = True
    allow_duplicates: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ScoreOutput:
    """What :meth:`Selector.score` returns: one score per pool row and the FLOPs spent."""

    scores: np.ndarray
    flops: float
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class SelectionResult:
    """The outcome of :meth:`Selector.select`.

    Attributes:
        dataset: the chosen rows in their original pool order, with a ``score`` column and the
            original row index in ``pool_index``.
        indices: chosen pool row indices, ascending.
        scores: the chosen rows' scores, aligned with ``indices`` and ``dataset``.
        flops: FLOPs spent scoring (what the budget is charged).
        selector: registry name of the selector.
        config: the selector's full configuration.
        all_scores: the score of every pool row (for histograms and cards).
        extras: selector-specific details (e.g. CADS-S's learned mixture).
    """

    dataset: Any
    indices: np.ndarray
    scores: np.ndarray
    flops: float
    selector: str
    config: dict[str, Any]
    pool_size: int
    all_scores: np.ndarray | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.indices)

    def summary(self) -> dict[str, Any]:
        return {
            "selector": self.selector,
            "k": len(self.indices),
            "pool_size": self.pool_size,
            "fraction": len(self.indices) / self.pool_size,
            "selection_flops": self.flops,
            "score_mean": float(np.mean(self.scores)) if len(self.scores) else float("nan"),
        }


def resolve_k(pool_size: int, k: int | None, fraction: float | None) -> int:
    """Turn ``k`` or ``fraction`` into a row count, with errors that say what to pass instead."""
    if k is not None and fraction is not None:
        raise ValueError("Pass either k or fraction, not both.")
    if k is None and fraction is None:
        raise ValueError("Pass k (number of rows to keep) or fraction (share of the pool, in (0, 1]).")
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be an integer number of rows, got {type(k).__name__} {k!r}.")
        if k <= 0:
            raise ValueError(f"k must be >= 1, got {k}.")
        if k > pool_size:
            raise ValueError(f"k={k} is larger than the pool ({pool_size} rows); pass k <= {pool_size} or a fraction.")
        return int(k)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not math.isfinite(fraction):
        raise TypeError(f"fraction must be a number in (0, 1], got {fraction!r}.")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
    return max(1, int(round(fraction * pool_size)))


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, ties broken by the lower index, returned ascending."""
    order = np.lexsort((np.arange(len(scores)), -np.asarray(scores, dtype=np.float64)))
    return np.sort(order[:k])


def validate_dataset(dataset: Any, role: str) -> None:
    """Fail early, and clearly, on something that is not a non-empty ``datasets.Dataset``."""
    from datasets import Dataset

    if not isinstance(dataset, Dataset):
        hint = " (select a split, e.g. dataset['train'])" if type(dataset).__name__ == "DatasetDict" else ""
        raise TypeError(f"The {role} must be a datasets.Dataset, got {type(dataset).__name__}{hint}.")
    if len(dataset) == 0:
        raise ValueError(f"The {role} dataset is empty (0 rows); pass a dataset with at least one row.")


def check_no_duplicates(pool: Any, text_column: str | None) -> None:
    """Refuse a pool whose text column repeats rows, naming the first repeats and the fix."""
    column = text_column or next((c for c in ("text", "messages") if c in pool.column_names), None)
    if column is None or column not in pool.column_names:
        return  # the selector's own text extraction reports the missing column
    seen: dict[str, int] = {}
    repeats: list[tuple[int, int]] = []
    for row, value in enumerate(pool[column]):
        key = value if isinstance(value, str) else repr(value)
        if key in seen:
            repeats.append((seen[key], row))
        else:
            seen[key] = row
    if repeats:
        raise ValueError(
            f"The pool has {len(repeats)} duplicated row(s) in column {column!r} (first pairs: {repeats[:3]}); "
            "each copy would be scored, selected and trained on. Deduplicate the pool first "
            "(e.g. keep the first of each text) or pass allow_duplicates=True."
        )


class Selector(ABC):
    """Base class of all selectors. See the module docstring for the contract.

    Example:
        >>> from datasets import Dataset
        >>> from hf_cads import get_selector
        >>> pool = Dataset.from_dict({"text": ["a cat sat", "stock prices fell", "the cat ran"]})
        >>> target = Dataset.from_dict({"text": ["my cat"]})
        >>> result = get_selector("bm25").select(pool, target=target, k=2)
        >>> list(result.indices)
        [0, 2]
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[SelectorConfig]] = SelectorConfig
    requires_target: ClassVar[bool] = True
    chooses_own_size: ClassVar[bool] = False
    """``True`` for selectors (CADS) that decide the subset size themselves when k/fraction are None."""

    reuses_training_model: ClassVar[bool] = False
    """``True`` when BudgetedTrainer may hand the model it trains to the selector as its scorer."""
    uses_model: ClassVar[bool] = False
    """``True`` for selectors that score with a model and accept ``model=`` / ``tokenizer=`` objects."""

    def __init__(
        self, config: SelectorConfig | None = None, *, model: Any = None, tokenizer: Any = None, **kwargs: Any
    ) -> None:
        if config is not None and kwargs:
            raise ValueError("Pass either a config object or keyword options, not both.")
        if (model is not None or tokenizer is not None) and not self.uses_model:
            raise TypeError(f"The {self.name!r} selector uses no model; drop model=/tokenizer=.")
        self.model = model
        self.tokenizer = tokenizer
        self.config = config if config is not None else build_config(self.config_class, kwargs, self.name)
        if not isinstance(self.config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(self.config).__name__}."
            )

    # -- to implement ---------------------------------------------------------------------------
    @abstractmethod
    def score(self, pool: Any, target: Any | None) -> ScoreOutput:
        """Score every pool row (higher = more useful) and report the FLOPs spent."""

    @abstractmethod
    def estimate_flops(self, pool: Any, target: Any | None) -> float:
        """FLOPs :meth:`score` will spend, computed without doing the work."""

    # -- shared flow ----------------------------------------------------------------------------
    def choose(self, scores: np.ndarray, k: int, pool: Any, extras: dict[str, Any]) -> np.ndarray:
        """Which rows to keep given their scores; top-k by default."""
        return top_k_indices(scores, k)

    def validate_inputs(self, pool: Any, target: Any | None) -> None:
        validate_dataset(pool, "pool")
        if not self.config.allow_duplicates:
            check_no_duplicates(pool, self.config.text_column)
        if self.requires_target:
            if target is None:
                raise ValueError(
                    f"The {self.name!r} selector needs target= (validation examples of the task you finetune for)."
                )
            validate_dataset(target, "target")

    def select(
        self,
        pool: Any,
        target: Any | None = None,
        k: int | None = None,
        fraction: float | None = None,
    ) -> SelectionResult:
        """Score ``pool`` against ``target`` and keep ``k`` rows (or ``fraction`` of the pool)."""
        self.validate_inputs(pool, target)
        size = None if (k is None and fraction is None and self.chooses_own_size) else resolve_k(len(pool), k, fraction)
        output = self.score(pool, target)
        scores = np.asarray(output.scores, dtype=np.float64)
        if scores.shape != (len(pool),):
            raise RuntimeError(f"{type(self).__name__}.score returned {scores.shape} scores for {len(pool)} rows.")
        if np.isnan(scores).any():
            bad = np.flatnonzero(np.isnan(scores))[:5].tolist()
            raise ValueError(
                f"The {self.name!r} selector produced NaN scores for pool rows {bad}; check those rows "
                "(empty or non-text content) or the selection model (a NaN loss means broken weights)."
            )
        indices = np.asarray(self.choose(scores, size, pool, output.extras), dtype=np.int64)
        return build_result(self, pool, indices, scores, output)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


def build_result(selector: Selector, pool: Any, indices: np.ndarray, scores: np.ndarray, output: ScoreOutput) -> SelectionResult:
    """Attach scores and original indices to the chosen rows, keeping pool order."""
    indices = np.sort(np.unique(indices))
    chosen_scores = scores[indices]
    dataset = pool.select(indices.tolist())
    for column in (SCORE_COLUMN, INDEX_COLUMN):
        if column in dataset.column_names:
            dataset = dataset.remove_columns(column)
    dataset = dataset.add_column(SCORE_COLUMN, chosen_scores.tolist())
    dataset = dataset.add_column(INDEX_COLUMN, indices.tolist())
    return SelectionResult(
        dataset=dataset,
        indices=indices,
        scores=chosen_scores,
        flops=float(output.flops),
        selector=selector.name,
        config=selector.config.to_dict(),
        pool_size=len(pool),
        all_scores=scores,
        extras=dict(output.extras),
    )


def build_config(config_class: type[SelectorConfig], options: dict[str, Any], name: str) -> SelectorConfig:
    """Instantiate ``config_class`` from keyword options, naming unknown ones and the valid set."""
    valid = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise TypeError(
            f"Unknown option(s) {unknown} for selector {name!r}; valid options are {sorted(valid)}."
        )
    return config_class(**options)
