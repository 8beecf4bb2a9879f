"""Repeated pool rows: found by their text, refused (``deduplicate="error"``) or dropped before
scoring (``deduplicate="drop"``, the default) so a duplicate is never scored, chosen and trained
on twice; :class:`Deduplication` maps results on the unique rows back to the original ones.

Example:
    >>> from datasets import Dataset
    >>> from hf_cads.selectors.dedup import deduplicate_pool
    >>> deduplicate_pool(Dataset.from_dict({"text": ["a", "b", "a"]}), "text").repeats
    [(0, 2)]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data import column_values, get_texts
from .options import SelectorConfig
from .result import spread_rows

logger = logging.getLogger(__name__)


def duplicate_rows(pool: Any, text_column: str | None) -> tuple[str | None, list[tuple[int, int]]]:
    """The text column checked and every ``(first copy, repeat)`` pair of rows whose text repeats.

    Example:
        >>> from datasets import Dataset
        >>> duplicate_rows(Dataset.from_dict({"text": ["a", "b", "a"]}), None)
        ('text', [(0, 2)])
    """
    column = text_column or next((c for c in ("text", "messages") if c in pool.column_names), None)
    if column is None and {"prompt", "completion"} <= set(pool.column_names):
        column, values = "prompt+completion", get_texts(pool, role="pool")
    elif column is None or column not in pool.column_names:
        return None, []  # the selector's own text extraction reports the missing column
    else:
        values = column_values(pool, column)
    seen: dict[str, int] = {}
    repeats: list[tuple[int, int]] = []
    for row, value in enumerate(values):
        key = value if isinstance(value, str) else repr(value)
        if key in seen:
            repeats.append((seen[key], row))
        else:
            seen[key] = row
    return column, repeats


def check_no_duplicates(pool: Any, text_column: str | None) -> None:
    """Refuse a pool whose text column repeats rows, naming the first repeats and the fix."""
    column, repeats = duplicate_rows(pool, text_column)
    if repeats:
        raise ValueError(
            f"The pool has {len(repeats)} duplicated row(s) in column {column!r} (first pairs: {repeats[:3]}); "
            "each copy would be scored, selected and trained on. Pass deduplicate='drop' to keep the first "
            "copy of each, deduplicate the pool first, or pass allow_duplicates=True to keep every copy."
        )


@dataclass
class Deduplication:
    """Pool rows dropped as repeats of an earlier row (``deduplicate="drop"``)."""

    column: str
    kept_rows: np.ndarray
    """Original pool indices of the rows scored, ascending."""
    repeats: list[tuple[int, int]]
    """``(first copy, dropped repeat)`` pairs of original pool indices."""

    @property
    def dropped(self) -> int:
        return len(self.repeats)

    def to_original(self, values: np.ndarray, pool_size: int) -> np.ndarray:
        """Spread per-row values of the deduplicated pool over the original rows (NaN on dropped ones)."""
        return spread_rows(values, self.kept_rows, pool_size)

    def summary(self) -> dict[str, Any]:
        return {"column": self.column, "dropped": self.dropped, "examples": [list(pair) for pair in self.repeats[:5]]}


def deduplicate_pool(pool: Any, text_column: str | None) -> Deduplication | None:
    """Which rows to keep when only the first copy of a repeated text is scored (``None``: no repeats)."""
    column, repeats = duplicate_rows(pool, text_column)
    if not repeats:
        return None
    dropped = {row for _, row in repeats}
    kept = np.asarray([row for row in range(len(pool)) if row not in dropped], dtype=np.int64)
    logger.info(
        "Dropped %d duplicated pool row(s) (same %r as an earlier row; first pairs %s); "
        "selecting from %d unique rows.",
        len(repeats),
        column,
        repeats[:3],
        len(kept),
    )
    return Deduplication(column, kept, repeats)


def unique_pool(pool: Any, config: SelectorConfig) -> tuple[Any, Deduplication | None]:
    """``pool`` without repeated rows when ``config`` drops them (a view, nothing copied), and what
    was dropped; ``pool`` itself when it keeps them or refuses them (see :func:`check_no_duplicates`)."""
    if config.allow_duplicates or config.deduplicate == "error":
        return pool, None
    dedup = deduplicate_pool(pool, config.text_column)
    return (pool, None) if dedup is None else (pool.select(dedup.kept_rows.tolist()), dedup)
