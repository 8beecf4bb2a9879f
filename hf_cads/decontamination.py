"""Decontamination: find training-pool rows that overlap evaluation / test rows.

A pool row is contaminated when, after normalisation (lowercase, punctuation replaced by spaces,
whitespace collapsed), it

- equals a test row (``exact``), or
- shares a run of ``ngram_size`` consecutive words with one (``ngram``; default 13 words, the
  threshold of the GPT-3 and FLAN contamination studies).

Test rows shorter than ``ngram_size`` words can only match exactly. Lookups go through one hash
table of the test rows' n-grams, so the cost is linear in the words of pool and test sets.

:func:`find_contamination` returns a :class:`ContaminationReport`: which pool rows to drop and, for
each, the test row it matched (with the shared n-gram) for reports and dataset cards;
:func:`decontaminate` returns the pool without them.

Example:
    >>> from hf_cads.decontamination import find_contamination
    >>> pool = ["Q: What is 2 + 2?\\nA: 4", "Q: Name a colour.\\nA: Red"]
    >>> report = find_contamination(pool, {"test": ["q: what is 2+2? a: 4"]})
    >>> report.drop_rows, report.matches[0].kind, report.matches[0].test_row
    ([0], 'exact', 0)
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

DEFAULT_NGRAM_SIZE = 13
_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)

MatchKind = Literal["exact", "ngram"]


def normalise_text(text: str) -> str:
    """Lowercase, punctuation (and underscores) replaced by spaces, whitespace collapsed to one space.

    Example:
        >>> normalise_text("  Hello,\\n  World!! (x_1)")
        'hello world x 1'
    """
    if not isinstance(text, str):
        raise TypeError(f"normalise_text needs a string, got {type(text).__name__} {text!r:.60}.")
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


def word_ngrams(words: Sequence[str], n: int) -> Iterator[tuple[str, ...]]:
    """The runs of ``n`` consecutive words (none when there are fewer than ``n`` words)."""
    for start in range(len(words) - n + 1):
        yield tuple(words[start : start + n])


@dataclass(frozen=True)
class Contamination:
    """One contaminated pool row and the test row it overlaps.

    Attributes:
        pool_row: index of the row in the pool.
        test_set: name of the test set (a key of the ``tests`` mapping).
        test_row: index of the matched row in that test set.
        kind: ``exact`` (equal after normalisation) or ``ngram`` (a shared run of words).
        overlap: the shared text, normalised (the whole row for ``exact``, the first shared n-gram otherwise).
    """

    pool_row: int
    test_set: str
    test_row: int
    kind: MatchKind
    overlap: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "pool_row": self.pool_row,
            "test_set": self.test_set,
            "test_row": self.test_row,
            "kind": self.kind,
            "overlap": self.overlap,
        }


@dataclass
class ContaminationReport:
    """What :func:`find_contamination` found: one :class:`Contamination` per contaminated pool row
    (the first test row it matched; an exact match is preferred over an n-gram one)."""

    matches: list[Contamination]
    pool_size: int
    test_sizes: dict[str, int]
    ngram_size: int
    counts: dict[str, int] = field(default_factory=dict)
    """Contaminated pool rows per test set."""

    @property
    def drop_rows(self) -> list[int]:
        """Pool rows to drop, ascending."""
        return [m.pool_row for m in self.matches]

    @property
    def keep_rows(self) -> list[int]:
        """Pool rows to keep, ascending."""
        dropped = set(self.drop_rows)
        return [row for row in range(self.pool_size) if row not in dropped]

    def examples(self, limit: int = 5) -> list[dict[str, Any]]:
        """The first ``limit`` matches as dicts, for reports and dataset cards."""
        return [m.to_dict() for m in self.matches[:limit]]

    def summary(self) -> dict[str, Any]:
        return {
            "pool_size": self.pool_size,
            "dropped": len(self.matches),
            "test_sizes": dict(self.test_sizes),
            "ngram_size": self.ngram_size,
            "dropped_per_test_set": dict(self.counts),
            "exact": sum(m.kind == "exact" for m in self.matches),
            "ngram": sum(m.kind == "ngram" for m in self.matches),
        }

    def format(self, limit: int = 3) -> str:
        """One line of counts plus up to ``limit`` example matches."""
        per_set = ", ".join(f"{name}: {count}" for name, count in self.counts.items()) or "none"
        lines = [
            f"decontamination ({self.ngram_size}-grams): {len(self.matches)} of {self.pool_size} pool rows overlap "
            f"test rows ({per_set})"
        ]
        for m in self.matches[:limit]:
            lines.append(f"  pool row {m.pool_row} ~ {m.test_set}[{m.test_row}] ({m.kind}): {m.overlap[:80]!r}")
        return "\n".join(lines)


def _texts(rows: Any, column: str | None, role: str) -> list[str]:
    """Texts of a list of strings or a ``datasets.Dataset`` (``column``, else ``text``/``messages``)."""
    if hasattr(rows, "column_names"):
        from .data import get_texts

        return get_texts(rows, column, role=role)
    if isinstance(rows, str) or not isinstance(rows, Sequence):
        raise TypeError(f"The {role} rows must be a datasets.Dataset or a list of strings, got {type(rows).__name__}.")
    for index, text in enumerate(rows):
        if not isinstance(text, str):
            raise TypeError(f"Row {index} of the {role} rows is {type(text).__name__}, not a string.")
    return list(rows)


def find_contamination(
    pool: Any,
    tests: Mapping[str, Any] | Any,
    *,
    ngram_size: int = DEFAULT_NGRAM_SIZE,
    pool_column: str | None = None,
    test_column: str | None = None,
    min_overlap: float = 0.0,
) -> ContaminationReport:
    """The pool rows that equal or share an ``ngram_size``-word run with a test row.

    Args:
        pool: the training pool: a ``datasets.Dataset`` (its ``pool_column``, else ``text``, else
            chat ``messages``) or a list of strings.
        tests: ``{name: rows}`` of evaluation / test sets (Datasets or lists of strings), or one set
            (named ``test``).
        ngram_size: words per n-gram (13 by default; smaller catches shorter overlaps and more
            false positives).
        pool_column / test_column: the text column of Dataset inputs.
        min_overlap: share of a test row's n-grams a pool row must contain to match it (``0``: any
            one shared n-gram). Raise it (e.g. ``0.5``) when test rows share a fixed preamble with
            legitimate training rows (BBH's task templates), so that the template alone is no match.

    Example:
        >>> report = find_contamination(pool, {"gsm8k": gsm8k_test, "bbh": bbh_test})  # doctest: +SKIP
        >>> clean = pool.select(report.keep_rows)  # doctest: +SKIP
    """
    if isinstance(ngram_size, bool) or not isinstance(ngram_size, int) or ngram_size < 1:
        raise ValueError(f"ngram_size must be an integer >= 1 (words), got {ngram_size!r}.")
    if isinstance(min_overlap, bool) or not isinstance(min_overlap, (int, float)) or not 0 <= min_overlap <= 1:
        raise ValueError(f"min_overlap must be a share in [0, 1] (0: any shared n-gram), got {min_overlap!r}.")
    test_sets = dict(tests) if isinstance(tests, Mapping) else {"test": tests}
    if not test_sets:
        raise ValueError("tests is empty: pass {name: rows} with at least one test set.")
    test_ids: list[tuple[str, int]] = []  # (test set, row) of every test row, by a flat id
    exact: dict[str, int] = {}
    ngrams: dict[tuple[str, ...], list[int]] = {}
    ngram_totals: list[int] = []
    sizes: dict[str, int] = {}
    for name, rows in test_sets.items():
        texts = _texts(rows, test_column, f"test set {name!r}")
        sizes[str(name)] = len(texts)
        for row, text in enumerate(texts):
            test_id = len(test_ids)
            test_ids.append((str(name), row))
            normalised = normalise_text(text)
            grams = set(word_ngrams(normalised.split(" "), ngram_size)) if normalised else set()
            ngram_totals.append(len(grams))
            if normalised:
                exact.setdefault(normalised, test_id)
            for gram in grams:
                ngrams.setdefault(gram, []).append(test_id)
    matches: list[Contamination] = []
    counts: dict[str, int] = {}
    pool_texts = _texts(pool, pool_column, "pool")
    for row, text in enumerate(pool_texts):
        normalised = normalise_text(text)
        if not normalised:
            continue
        if normalised in exact:
            hit, kind, overlap = exact[normalised], "exact", normalised
        else:
            hit, overlap = _ngram_hit(normalised.split(" "), ngram_size, ngrams, ngram_totals, min_overlap)
            kind = "ngram"
        if hit is not None:
            name, test_row = test_ids[hit]
            matches.append(Contamination(row, name, test_row, kind, overlap))  # type: ignore[arg-type]
            counts[name] = counts.get(name, 0) + 1
    return ContaminationReport(matches, len(pool_texts), sizes, ngram_size, counts)


def _ngram_hit(
    words: list[str], n: int, ngrams: dict[tuple[str, ...], list[int]], totals: list[int], min_overlap: float
) -> tuple[int | None, str]:
    """The test row a pool row's n-grams match (and the first shared n-gram), or ``(None, "")``."""
    if min_overlap == 0:
        for gram in word_ngrams(words, n):
            hits = ngrams.get(gram)
            if hits:
                return hits[0], " ".join(gram)
        return None, ""
    shared: dict[int, int] = {}
    first: dict[int, tuple[str, ...]] = {}
    for gram in set(word_ngrams(words, n)):
        for test_id in ngrams.get(gram, ()):
            shared[test_id] = shared.get(test_id, 0) + 1
            first.setdefault(test_id, gram)
    best = max(shared, key=lambda t: (shared[t] / totals[t], -t), default=None)
    if best is None or shared[best] / totals[best] < min_overlap:
        return None, ""
    return best, " ".join(first[best])


def decontaminate(pool: Any, tests: Mapping[str, Any] | Any, **options: Any) -> tuple[Any, ContaminationReport]:
    """``(pool without the contaminated rows, report)``; ``options`` as in :func:`find_contamination`.

    A Dataset pool is returned as a Dataset (``select``), a list as a list.

    Example:
        >>> clean, report = decontaminate(["a b c", "x y z"], {"test": ["X, Y, Z!"]})
        >>> clean, report.drop_rows
        (['a b c'], [1])
    """
    report = find_contamination(pool, tests, **options)
    if hasattr(pool, "select") and hasattr(pool, "column_names"):
        return (pool.select(report.keep_rows) if report.matches else pool), report
    keep = report.keep_rows
    return [pool[row] for row in keep], report
