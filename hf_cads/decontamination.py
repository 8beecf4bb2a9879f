"""Decontamination: find training-pool rows that hold an evaluation / test row's own content.

Texts are normalised (lowercase, punctuation and underscores replaced by spaces, whitespace
collapsed) and cut into word n-grams (``ngram_size`` consecutive words, default 8 as in PaLM's
contamination study). A pool row is contaminated by a test row when

- it equals the test row (``exact``), or
- it contains at least ``min_overlap`` (default 0.25) of the test row's *distinctive* n-grams
  (``ngram``): n-gram precision, the share of the test row's n-grams found in the pool row,
  counted over the n-grams that are the row's own content.

An n-gram is *template* text, not distinctive, when it occurs in many rows of its test set (a
document-frequency filter): in at least ``template_rows`` rows (default 5), or in a
``template_share`` of them (default 5%) but never fewer than 3 rows. A task's fixed instruction
("The following paragraphs each describe a set of three objects ..."), its answer options, an
MMLU-style "The following are multiple choice questions about ..." preamble occur in every row of
the task, so a pool row (or a validation exemplar) that shares only them is no match, while a copy
of one test item is, whatever template it is wrapped in: template n-grams count neither in the
test row's total nor in the shared count, so re-wording the template of a copied item does not
hide it. As the rule is a share, a copy with ~10% of its words edited is still found (an 8-gram
survives 10% random edits with probability 0.9**8 = 0.43).

Test rows with no distinctive n-gram (shorter than ``ngram_size`` words, or all template) can only
match exactly; so can all rows of a test set where every word is punctuation (BBH's Dyck
languages normalise to their instruction). ``min_overlap=0`` flags a pool row that shares any one
distinctive n-gram; ``template_rows=None, template_share=None`` turns the template filter off
(``ngram_size=13, min_overlap=0`` with both ``None`` is the plain "any shared 13-gram" rule).

Measured on a labelled set from the real data (copies of eval rows of 8 templated BBH tasks and
GSM8K, verbatim, with the template re-worded, or with 10% of the words replaced, against held-out
rows of the same tasks that share only the template; ``tests/test_decontamination_quality.py``):
precision 0.98, recall 0.96-0.99 over seeds, 97-98% of the template-only rows kept.

Cost is linear in the pool's bytes: rows are normalised a chunk at a time (one ``translate`` for
ASCII text), words and n-grams hashed to 64-bit integers with numpy, and n-grams whose words all
occur in a test row looked up in one sorted table of the test rows' distinctive n-grams.

:func:`find_contamination` returns a :class:`ContaminationReport`: which pool rows to drop and, for
each, the test row it matched (with a shared n-gram and the share) for reports and dataset cards;
:func:`decontaminate` returns the pool without them.

Example:
    >>> from hf_cads.decontamination import find_contamination
    >>> pool = ["Q: What is 2 + 2?\\nA: 4", "Q: Name a colour.\\nA: Red"]
    >>> report = find_contamination(pool, {"test": ["q: what is 2+2? a: 4"]})
    >>> report.drop_rows, report.matches[0].kind, report.matches[0].test_row
    ([0], 'exact', 0)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

DEFAULT_NGRAM_SIZE = 8
DEFAULT_MIN_OVERLAP = 0.25
DEFAULT_TEMPLATE_SHARE = 0.05
DEFAULT_TEMPLATE_ROWS = 5
_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
_CHUNK_ROWS = 4096  # rows hashed per numpy pass: enough to amortise numpy calls, little memory
_FILTER_BITS = 24  # a 16 MiB membership bitmap in front of the sorted n-gram table
_HASH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
_TEMPLATE_MIN_ROWS = 3  # text in 2 rows of a small test set may be one item asked twice

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


@dataclass(frozen=True)
class Contamination:
    """One contaminated pool row and the test row it overlaps.

    Attributes:
        pool_row: index of the row in the pool.
        test_set: name of the test set (a key of the ``tests`` mapping).
        test_row: index of the matched row in that test set.
        kind: ``exact`` (equal after normalisation) or ``ngram`` (shares distinctive n-grams).
        overlap: the shared text, normalised (the whole row for ``exact``, the first shared
            distinctive n-gram otherwise).
        share: share of the test row's distinctive n-grams found in the pool row (1.0 for ``exact``).

    Example:
        >>> Contamination(3, "gsm8k", 42, "ngram", "how many apples does she have", 0.5).to_dict()["share"]
        0.5
    """

    pool_row: int
    test_set: str
    test_row: int
    kind: MatchKind
    overlap: str
    share: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "pool_row": self.pool_row,
            "test_set": self.test_set,
            "test_row": self.test_row,
            "kind": self.kind,
            "overlap": self.overlap,
            "share": round(self.share, 4),
        }


@dataclass
class ContaminationReport:
    """What :func:`find_contamination` found: one :class:`Contamination` per contaminated pool row
    (an exact match is preferred, else the test row with the largest share of distinctive n-grams).

    Example:
        >>> report = find_contamination(["a b c d", "x y"], {"t": ["A, B, C, D."]}, ngram_size=2)
        >>> report.keep_rows, report.summary()["exact"]
        ([1], 1)
    """

    matches: list[Contamination]
    pool_size: int
    test_sizes: dict[str, int]
    ngram_size: int
    counts: dict[str, int] = field(default_factory=dict)
    """Contaminated pool rows per test set."""
    min_overlap: float = DEFAULT_MIN_OVERLAP
    template_share: float | None = DEFAULT_TEMPLATE_SHARE
    template_rows: int | None = DEFAULT_TEMPLATE_ROWS

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
            "min_overlap": self.min_overlap,
            "template_share": self.template_share,
            "template_rows": self.template_rows,
            "dropped_per_test_set": dict(self.counts),
            "exact": sum(m.kind == "exact" for m in self.matches),
            "ngram": sum(m.kind == "ngram" for m in self.matches),
        }

    def format(self, limit: int = 3) -> str:
        """One line of counts plus up to ``limit`` example matches."""
        per_set = ", ".join(f"{name}: {count}" for name, count in self.counts.items()) or "none"
        lines = [
            f"decontamination ({self.ngram_size}-grams, >= {self.min_overlap:.0%} of a test row's distinctive "
            f"n-grams): {len(self.matches)} of {self.pool_size} pool rows overlap test rows ({per_set})"
        ]
        for m in self.matches[:limit]:
            lines.append(
                f"  pool row {m.pool_row} ~ {m.test_set}[{m.test_row}] ({m.kind}, {m.share:.0%}): {m.overlap[:80]!r}"
            )
        return "\n".join(lines)


def _texts(rows: Any, column: str | None, role: str) -> list[str]:
    """Texts of a list of strings or a ``datasets.Dataset`` (``column``, else ``text``/``messages``)."""
    if hasattr(rows, "column_names"):
        from .data.rendering import get_texts

        return get_texts(rows, column, role=role)
    if isinstance(rows, str) or not isinstance(rows, Sequence):
        raise TypeError(f"The {role} rows must be a datasets.Dataset or a list of strings, got {type(rows).__name__}.")
    for index, text in enumerate(rows):
        if not isinstance(text, str):
            raise TypeError(f"Row {index} of the {role} rows is {type(text).__name__}, not a string.")
    return list(rows)


_KEEP_BYTES = bytes(c if (48 <= c <= 57 or 97 <= c <= 122 or c == 0) else 32 for c in range(256))
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_HASH_INVERSE = np.uint64(pow(int(_HASH_MULTIPLIER), -1, 1 << 64))
_powers_cache: dict[str, np.ndarray] = {}


def _powers(length: int) -> tuple[np.ndarray, np.ndarray]:
    """``(M**k, M**-k)`` (mod 2**64, ``M = _HASH_MULTIPLIER``) for ``k < length``, cached."""
    if len(_powers_cache.get("up", ())) < length:
        size = max(2 * length, 1 << 20)
        with np.errstate(over="ignore"):
            for name, base in (("up", _HASH_MULTIPLIER), ("down", _HASH_INVERSE)):
                factors = np.full(size, base, dtype=np.uint64)
                factors[0] = 1
                _powers_cache[name] = np.cumprod(factors)
    return _powers_cache["up"][:length], _powers_cache["down"][:length]


def _mix(values: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: spreads the bits of sums and products over the whole word."""
    values = values ^ (values >> np.uint64(30))
    values *= _MIX1
    values ^= values >> np.uint64(27)
    values *= _MIX2
    return values ^ (values >> np.uint64(31))


def _normalised_bytes(texts: list[str]) -> bytes:
    """The texts normalised as :func:`normalise_text` does, UTF-8, joined by NUL bytes.

    ASCII chunks (most text) are lowercased and translated in one call for the whole chunk;
    other rows go through the Unicode regex one by one.
    """
    joined = "\x00".join(texts)
    if joined.isascii() and joined.count("\x00") == len(texts) - 1:
        return joined.lower().encode("ascii").translate(_KEEP_BYTES)
    return b"\x00".join(
        text.lower().encode("ascii").translate(_KEEP_BYTES)
        if text.isascii() and "\x00" not in text
        else normalise_text(text).encode("utf-8")
        for text in texts
    )


@dataclass
class _Words:
    """The words of a chunk of rows as 64-bit codes: ``codes[i]`` is word ``i``, in row ``row[i]``;
    row ``r``'s words are ``codes[first[r]:first[r + 1]]``."""

    codes: np.ndarray
    row: np.ndarray
    first: np.ndarray

    @classmethod
    def of(cls, texts: list[str]) -> _Words:
        data = np.frombuffer(_normalised_bytes(texts), dtype=np.uint8)
        in_word = (data != 32) & (data != 0)
        edges = np.diff(in_word.view(np.int8), prepend=np.int8(0), append=np.int8(0))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        # A word's code is sum(byte_i * M**i) over its bytes, read off one running sum over the
        # chunk (M**p at byte p) and shifted back by M**-start (M is odd, so invertible mod 2**64).
        powers, inverse = _powers(len(data) + 1)
        # Only differences inside words are read, so separator bytes need no masking.
        running = np.zeros(len(data) + 1, dtype=np.uint64)
        np.cumsum(data * powers[:-1], out=running[1:])
        codes = _mix((running[ends] - running[starts]) * inverse[starts])
        row = np.searchsorted(np.flatnonzero(data == 0), starts)
        first = np.searchsorted(row, np.arange(len(texts) + 1))
        return cls(codes, row, first)

    def row_hashes(self) -> np.ndarray:
        """One hash of each row's whole word sequence (0 for a row with no words)."""
        rows = len(self.first) - 1
        hashes = np.zeros(rows, dtype=np.uint64)
        if not len(self.codes):
            return hashes
        index_in_row = np.arange(len(self.codes)) - self.first[self.row]
        weighted = self.codes * _powers(int(index_in_row.max()) + 1)[0][index_in_row]
        nonempty = np.flatnonzero(self.first[1:] > self.first[:-1])
        sums = np.add.reduceat(weighted, self.first[nonempty])
        lengths = (self.first[nonempty + 1] - self.first[nonempty]).astype(np.uint64)
        hashes[nonempty] = _mix(sums ^ _mix(lengths)) | np.uint64(1)
        return hashes

    def ngrams(self, n: int, known: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(start word, hash)`` of each n-gram inside one row whose words are all ``known``."""
        count = len(self.codes) - n + 1
        if count <= 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.uint64)
        ok = self.row[n - 1 :] == self.row[:count]
        if known is not None:
            unknown = np.zeros(len(known) + 1, dtype=np.int64)
            np.cumsum(~known, out=unknown[1:])
            ok &= unknown[n:] == unknown[:count]
        starts = np.flatnonzero(ok)
        hashes = self.codes[starts].copy()
        for offset in range(1, n):
            hashes *= _HASH_MULTIPLIER
            hashes ^= self.codes[starts + offset]
        return starts, _mix(hashes)


def _sorted_pairs(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ``(first, second)`` pairs, sorted by ``first`` then ``second``."""
    order = np.lexsort((second, first))
    first, second = first[order], second[order]
    keep = np.r_[True, (first[1:] != first[:-1]) | (second[1:] != second[:-1])] if len(first) else first > 0
    return first[keep], second[keep]


@dataclass
class _TestIndex:
    """The test rows' whole-text hashes and distinctive n-grams, by a flat test id."""

    ids: list[tuple[str, int]]
    exact_keys: np.ndarray  # sorted row hashes of the test rows (first occurrence of each text)
    exact_ids: np.ndarray
    keys: np.ndarray  # sorted unique hashes of distinctive n-grams
    offsets: np.ndarray  # test ids of keys[k]: owners[offsets[k]:offsets[k + 1]]
    owners: np.ndarray
    totals: np.ndarray  # distinctive n-grams per test id
    word_filter: np.ndarray  # bitmap of the test rows' word codes
    gram_filter: np.ndarray  # bitmap of keys

    @classmethod
    def build(
        cls, test_sets: dict[str, list[str]], n: int, template_share: float | None, template_rows: int | None
    ) -> _TestIndex:
        ids = [(name, row) for name, texts in test_sets.items() for row in range(len(texts))]
        words = _Words.of([text for texts in test_sets.values() for text in texts])
        row_hashes = words.row_hashes()
        # The first test row of each text owns its n-grams; repeats still count for the template.
        exact_keys, exact_ids = np.unique(row_hashes, return_index=True)
        exact_ids = exact_ids[exact_keys != 0]
        exact_keys = exact_keys[exact_keys != 0]
        is_first = np.zeros(len(ids), dtype=bool)
        is_first[exact_ids] = True
        starts, hashes = words.ngrams(n)
        gram_rows, gram_hashes = _sorted_pairs(words.row[starts], hashes)
        totals = np.zeros(len(ids), dtype=np.int64)
        own_hashes: list[np.ndarray] = []
        own_rows: list[np.ndarray] = []
        set_start = 0
        for texts in test_sets.values():
            set_end = set_start + len(texts)
            lo, hi = np.searchsorted(gram_rows, [set_start, set_end])
            set_rows, set_hashes = gram_rows[lo:hi], gram_hashes[lo:hi]
            rows_with_words = int(np.count_nonzero(row_hashes[set_start:set_end]))
            set_start = set_end
            if not len(set_rows):
                continue
            limits = [template_rows] if template_rows is not None else []
            if template_share is not None:
                limits.append(max(_TEMPLATE_MIN_ROWS, math.ceil(template_share * rows_with_words)))
            grams, counts = np.unique(set_hashes, return_counts=True)
            template = grams[counts >= min(limits)] if limits else grams[:0]
            own = is_first[set_rows] & ~np.isin(set_hashes, template)
            own_rows.append(set_rows[own])
            own_hashes.append(set_hashes[own])
        all_rows = np.concatenate(own_rows) if own_rows else np.empty(0, dtype=np.int64)
        all_hashes = np.concatenate(own_hashes) if own_hashes else np.empty(0, dtype=np.uint64)
        np.add.at(totals, all_rows, 1)
        all_hashes, all_rows = _sorted_pairs(all_hashes, all_rows)
        keys, first_of_key = np.unique(all_hashes, return_index=True)
        offsets = np.append(first_of_key, len(all_hashes)).astype(np.int64)
        return cls(
            ids,
            exact_keys,
            exact_ids.astype(np.int64),
            keys,
            offsets,
            all_rows.astype(np.int64),
            totals,
            _bitmap(words.codes),
            _bitmap(keys),
        )

    def exact(self, row_hashes: np.ndarray) -> np.ndarray:
        """The test id each row equals after normalisation, or -1."""
        if not len(self.exact_keys):
            return np.full(len(row_hashes), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.exact_keys, row_hashes), len(self.exact_keys) - 1)
        return np.where((self.exact_keys[at] == row_hashes) & (row_hashes != 0), self.exact_ids[at], -1)

    def lookup(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(positions in hashes, key index)`` of the hashes that are distinctive test n-grams."""
        maybe = np.flatnonzero(self.gram_filter[hashes >> np.uint64(64 - _FILTER_BITS)])
        if not len(maybe) or not len(self.keys):
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        key = np.minimum(np.searchsorted(self.keys, hashes[maybe]), len(self.keys) - 1)
        found = self.keys[key] == hashes[maybe]
        return maybe[found], key[found]


def _bitmap(values: np.ndarray) -> np.ndarray:
    bitmap = np.zeros(1 << _FILTER_BITS, dtype=bool)
    bitmap[values >> np.uint64(64 - _FILTER_BITS)] = True
    return bitmap


def _check_options(ngram_size: Any, min_overlap: Any, template_share: Any, template_rows: Any) -> None:
    if isinstance(ngram_size, bool) or not isinstance(ngram_size, int) or ngram_size < 1:
        raise ValueError(f"ngram_size must be an integer >= 1 (words), got {ngram_size!r}.")
    if isinstance(min_overlap, bool) or not isinstance(min_overlap, (int, float)) or not 0 <= min_overlap <= 1:
        raise ValueError(f"min_overlap must be a share in [0, 1] (0: any shared n-gram), got {min_overlap!r}.")
    if template_share is not None and (
        isinstance(template_share, bool) or not isinstance(template_share, (int, float)) or not 0 < template_share <= 1
    ):
        raise ValueError(f"template_share must be a share in (0, 1] or None (no share limit), got {template_share!r}.")
    if template_rows is not None and (
        isinstance(template_rows, bool) or not isinstance(template_rows, int) or template_rows < 2
    ):
        raise ValueError(f"template_rows must be an integer >= 2 or None (no row-count limit), got {template_rows!r}.")


def find_contamination(
    pool: Any,
    tests: Mapping[str, Any] | Any,
    *,
    ngram_size: int = DEFAULT_NGRAM_SIZE,
    pool_column: str | None = None,
    test_column: str | None = None,
    min_overlap: float = DEFAULT_MIN_OVERLAP,
    template_share: float | None = DEFAULT_TEMPLATE_SHARE,
    template_rows: int | None = DEFAULT_TEMPLATE_ROWS,
) -> ContaminationReport:
    """The pool rows that equal a test row or hold a share of its own (non-template) n-grams.

    Args:
        pool: the training pool: a ``datasets.Dataset`` (its ``pool_column``, else ``text``, else
            chat ``messages``) or a list of strings.
        tests: ``{name: rows}`` of evaluation / test sets (Datasets or lists of strings), or one set
            (named ``test``).
        ngram_size: words per n-gram (8 by default; smaller catches shorter overlaps and more
            chance ones, larger misses lightly edited copies).
        pool_column / test_column: the text column of Dataset inputs.
        min_overlap: share of a test row's distinctive n-grams a pool row must contain to match it
            (0.25 by default; ``0``: any one shared distinctive n-gram).
        template_share / template_rows: an n-gram in at least ``max(3, template_share * rows)`` or
            in at least ``template_rows`` rows of its test set is template text and never counts
            as a match (defaults 0.05 and 5; ``None`` turns a limit off, both ``None`` the filter).

    Example:
        >>> template = "Answer the question about the three shelved books below."
        >>> tests = [f"{template} The {a} book is left of the {b} book. Which is leftmost?"
        ...          for a, b in [("red", "blue"), ("green", "white"), ("black", "pink")]]
        >>> pool = [f"{template} The grey book is right of the tan book. Which is rightmost?",
        ...         "Puzzle: the green book is left of the white book. Which is leftmost?"]
        >>> [(m.pool_row, m.test_row, m.kind) for m in find_contamination(pool, tests, ngram_size=4).matches]
        [(1, 1, 'ngram')]
    """
    _check_options(ngram_size, min_overlap, template_share, template_rows)
    test_sets = dict(tests) if isinstance(tests, Mapping) else {"test": tests}
    if not test_sets:
        raise ValueError("tests is empty: pass {name: rows} with at least one test set.")
    texts_by_set = {str(name): _texts(rows, test_column, f"test set {name!r}") for name, rows in test_sets.items()}
    index = _TestIndex.build(texts_by_set, ngram_size, template_share, template_rows)
    pool_texts = _texts(pool, pool_column, "pool")
    found = _exact_and_ngram_matches(pool_texts, index, ngram_size, min_overlap)
    matches: list[Contamination] = []
    counts: dict[str, int] = {}
    for row in sorted(found):
        test_id, kind, overlap, share = found[row]
        name, test_row = index.ids[test_id]
        matches.append(Contamination(row, name, test_row, kind, overlap, share))  # type: ignore[arg-type]
        counts[name] = counts.get(name, 0) + 1
    sizes = {name: len(texts) for name, texts in texts_by_set.items()}
    return ContaminationReport(
        matches, len(pool_texts), sizes, ngram_size, counts, min_overlap, template_share, template_rows
    )


def _exact_and_ngram_matches(
    pool_texts: list[str], index: _TestIndex, n: int, min_overlap: float
) -> dict[int, tuple[int, str, str, float]]:
    """``{pool row: (test id, kind, overlap text, share)}`` of the contaminated pool rows."""
    exact_rows: list[np.ndarray] = []
    exact_ids: list[np.ndarray] = []
    pair_rows: list[np.ndarray] = []
    pair_keys: list[np.ndarray] = []
    pair_starts: list[np.ndarray] = []
    for chunk_start in range(0, len(pool_texts), _CHUNK_ROWS):
        words = _Words.of(pool_texts[chunk_start : chunk_start + _CHUNK_ROWS])
        hits = index.exact(words.row_hashes())
        exact_rows.append(np.flatnonzero(hits >= 0) + chunk_start)
        exact_ids.append(hits[hits >= 0])
        if not len(index.keys):
            continue
        known = index.word_filter[words.codes >> np.uint64(64 - _FILTER_BITS)]
        starts, hashes = words.ngrams(n, known)
        positions, keys = index.lookup(hashes)
        starts = starts[positions]
        rows = words.row[starts]
        pair_rows.append(rows + chunk_start)
        pair_keys.append(keys)
        pair_starts.append(starts - words.first[rows])
    found: dict[int, tuple[int, str, str, float]] = {}
    for row, test_id in zip(np.concatenate(exact_rows).tolist(), np.concatenate(exact_ids).tolist()):
        found[row] = (test_id, "exact", normalise_text(pool_texts[row]), 1.0)
    if not pair_rows:
        return found
    rows, keys, starts = np.concatenate(pair_rows), np.concatenate(pair_keys), np.concatenate(pair_starts)
    # One (pool row, n-gram) pair per distinct n-gram of a row, at its first position.
    order = np.lexsort((starts, keys, rows))
    rows, keys, starts = rows[order], keys[order], starts[order]
    first = np.r_[True, (rows[1:] != rows[:-1]) | (keys[1:] != keys[:-1])] if len(rows) else rows > 0
    rows, keys, starts = rows[first], keys[first], starts[first]
    # Each shared n-gram counts for every test row it is distinctive in.
    owners_per_key = index.offsets[keys + 1] - index.offsets[keys]
    pair_row = np.repeat(rows, owners_per_key)
    pair_start = np.repeat(starts, owners_per_key)
    within = np.arange(len(pair_row)) - np.repeat(np.cumsum(owners_per_key) - owners_per_key, owners_per_key)
    pair_owner = index.owners[np.repeat(index.offsets[keys], owners_per_key) + within]
    order = np.lexsort((pair_start, pair_owner, pair_row))
    pair_row, pair_owner, pair_start = pair_row[order], pair_owner[order], pair_start[order]
    if not len(pair_row):
        return found
    boundary = np.flatnonzero(np.r_[True, (pair_row[1:] != pair_row[:-1]) | (pair_owner[1:] != pair_owner[:-1])])
    shared = np.diff(np.r_[boundary, len(pair_row)])
    row, owner, start = pair_row[boundary], pair_owner[boundary], pair_start[boundary]
    share = shared / index.totals[owner]
    passing = share >= min_overlap
    row, owner, start, share = row[passing], owner[passing], start[passing], share[passing]
    # Per pool row the test row with the largest share (the lowest test id on ties).
    order = np.lexsort((owner, -share, row))
    best = order[np.r_[True, row[order][1:] != row[order][:-1]]] if len(order) else order
    for pos in best.tolist():
        pool_row = int(row[pos])
        if pool_row in found:
            continue
        gram = normalise_text(pool_texts[pool_row]).split(" ")[int(start[pos]) : int(start[pos]) + n]
        found[pool_row] = (int(owner[pos]), "ngram", " ".join(gram), float(share[pos]))
    return found


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
