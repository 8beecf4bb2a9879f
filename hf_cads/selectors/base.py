"""The selector contract shared by every data selector: config, result and the ``select`` flow."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from .._quiet import quiet_loading
from .._version import __version__
from ..cache import ScoreCache, model_identity, resolve_cache_dir
from ..distributed import Processes, current_processes
from .dedup import Deduplication, check_no_duplicates, unique_pool
from .options import SelectorConfig, build_config
from .result import (
    INDEX_COLUMN,
    SCORE_COLUMN,
    PreparedScoring,
    ScoreOutput,
    SelectionResult,
    is_per_row,
    resolve_k,
    top_k_indices,
)

logger = logging.getLogger(__name__)

__all__ = ["Selector", "build_result", "check_shard_output", "validate_dataset"]


def validate_dataset(dataset: Any, role: str) -> None:
    """Fail early, and clearly, on something that is not a non-empty ``datasets.Dataset``.

    Example:
        >>> validate_dataset(["a", "b"], "pool")
        Traceback (most recent call last):
        ...
        TypeError: The pool must be a datasets.Dataset, got list.
    """
    from datasets import Dataset

    if not isinstance(dataset, Dataset):
        hint = " (select a split, e.g. dataset['train'])" if type(dataset).__name__ == "DatasetDict" else ""
        raise TypeError(f"The {role} must be a datasets.Dataset, got {type(dataset).__name__}{hint}.")
    if len(dataset) == 0:
        raise ValueError(f"The {role} dataset is empty (0 rows); pass a dataset with at least one row.")


class Selector(ABC):
    """Base class of all selectors.

    A selector turns a candidate ``pool`` (a :class:`datasets.Dataset`) and a ``target`` (validation
    examples of the task one finetunes for) into a :class:`SelectionResult`: the chosen rows, their
    scores and the FLOPs actually spent scoring. Subclasses implement :meth:`Selector.score` (one
    number per pool row, higher = keep) and :meth:`Selector.estimate_flops` (the cost before any work,
    so a budget can be checked up front); the top-k choice and all input validation live here.

    Selectors whose rows are scored independently (BM25, embedding, perplexity, random) set
    ``shardable = True`` and implement :meth:`Selector.prepare` (pool- and target-wide state, computed
    once) and :meth:`Selector.score_rows` (the scores of a contiguous range of rows) instead of
    ``score``. :meth:`Selector.select` then scores the pool in shards of ``shard_size`` rows, spreads
    them over the processes of a distributed launch (the chosen subset is the same as with one
    process), and with ``cache_dir`` stores every shard so reruns reuse and killed runs resume them.

    Example:
        >>> from datasets import Dataset
        >>> from hf_cads import get_selector
        >>> pool = Dataset.from_dict({"text": ["a cat sat", "stock prices fell", "the cat ran"]})
        >>> target = Dataset.from_dict({"text": ["my cat"]})
        >>> result = get_selector("bm25").select(pool, target=target, k=2)
        >>> result.indices.tolist()
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
    shardable: ClassVar[bool] = False
    """``True`` when a row's score depends only on that row and on :meth:`prepare`'s result. Such a
    selector implements :meth:`prepare` and :meth:`score_rows` instead of :meth:`score`, and
    :meth:`select` shards, distributes, caches and resumes its scoring. A selector that leaves it
    ``False`` implements :meth:`score`; with several processes the main process runs it and sends
    the result to the others, and with ``cache_dir`` the whole result is cached."""
    distributes_own_work: ClassVar[bool] = False
    """``True`` for a non-shardable selector whose :meth:`score` runs on every process of a
    distributed launch and splits its work itself (LESS); ``False`` runs it on the main process."""
    shares_work_across_targets: ClassVar[bool] = False
    """``True`` when :meth:`select_many` does the pool's share of the work once for all targets
    (LESS: the warmup and pool gradient features) and :meth:`estimate_flops_split` tells that share
    apart; :func:`~hf_cads.selectors.select_for_targets` then selects for all targets in one pass."""

    def __init__(
        self, config: SelectorConfig | None = None, *, model: Any = None, tokenizer: Any = None, **kwargs: Any
    ) -> None:
        if config is not None and kwargs:
            raise ValueError("Pass either a config object or keyword options, not both.")
        if (model is not None or tokenizer is not None) and not self.uses_model:
            raise TypeError(f"The {self.name!r} selector uses no model; drop model=/tokenizer=.")
        self.model = model
        self.tokenizer = tokenizer
        # A model object from the caller is identified by its weights in cache keys; one the
        # selector loads itself by its name (see model_identity).
        self._caller_model = model is not None
        self._caller_tokenizer = tokenizer is not None
        self.config = config if config is not None else build_config(self.config_class, kwargs, self.name)
        if not isinstance(self.config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(self.config).__name__}."
            )
        shard_size = self.config.shard_size
        if isinstance(shard_size, bool) or not isinstance(shard_size, (int, np.integer)) or shard_size < 1:
            raise ValueError(f"shard_size must be a whole number of rows >= 1, got {shard_size!r}.")
        if self.config.deduplicate not in ("drop", "error"):
            raise ValueError(f"deduplicate must be 'drop' or 'error', got {self.config.deduplicate!r}.")

    # -- to implement ---------------------------------------------------------------------------
    def score(self, pool: Any, target: Any | None) -> ScoreOutput:
        """Score every pool row (higher = more useful) and report the FLOPs spent.

        Non-shardable selectors implement this. Shardable ones inherit it: :meth:`prepare`, then
        :meth:`score_rows` shard by shard, in this process and without a cache.
        """
        if not self.shardable:
            raise NotImplementedError(
                f"{type(self).__name__} must implement score(pool, target), or set shardable = True and "
                "implement score_rows(pool, target, rows, prepared)."
            )
        return self._score_in_shards(pool, target, Processes(), None)

    def prepare(self, pool: Any, target: Any | None) -> PreparedScoring:
        """Shardable selectors: the pool- and target-wide state row scores need, computed once.

        Runs on the main process only; the result is sent to the others. Anything that makes a
        row's score depend on other rows (IDF over the whole pool, a target centroid) goes here,
        so that sharded scores equal single-process ones.
        """
        return PreparedScoring()

    def score_rows(
        self, pool: Any, target: Any | None, rows: range, prepared: PreparedScoring, progress: Any = None
    ) -> ScoreOutput:
        """Shardable selectors: the scores of pool rows ``rows`` (a contiguous range) and their FLOPs.

        ``extras`` may only hold per-row arrays (first dimension ``len(rows)``); they are
        concatenated over shards. ``progress``, when given, is a tqdm bar to advance by rows scored.
        """
        raise NotImplementedError(f"{type(self).__name__} sets shardable = True but does not implement score_rows().")

    def shard_ranges(self, num_rows: int) -> list[range]:
        """The contiguous row ranges shardable scoring works in (estimates should plan the same)."""
        size = int(self.config.shard_size)
        return [range(start, min(start + size, num_rows)) for start in range(0, num_rows, size)]

    def model_identity(self) -> dict[str, Any]:
        """What identifies the scoring model in cache keys (see :func:`hf_cads.cache.model_identity`);
        override when the selector scores with something the config and ``model=`` do not show."""
        return model_identity(
            self.model,
            self.tokenizer,
            self.config,
            model_given=getattr(self, "_caller_model", self.model is not None),
            tokenizer_given=getattr(self, "_caller_tokenizer", self.tokenizer is not None),
        )

    def cache_description(self, pool: Any, target: Any | None) -> dict[str, Any]:
        """Everything the scores depend on; its hash is the cache key."""
        return {
            "hf_cads": __version__,
            "selector": self.name or type(self).__qualname__,
            "config": self.config.result_options(),
            "pool": {"fingerprint": getattr(pool, "_fingerprint", None), "rows": len(pool)},
            "target": None
            if target is None
            else {"fingerprint": getattr(target, "_fingerprint", None), "rows": len(target)},
            "model": self.model_identity(),
        }

    def fit_to_budget(self, available_flops: float, pool: Any, target: Any | None) -> None:
        """Size the selector's own budget-dependent options to ``available_flops`` (selection plus
        training), before :meth:`estimate_flops`. Most selectors have none; CADS derives its
        training budget ``C`` from it unless ``train_budget`` was given."""
        return None

    @abstractmethod
    def estimate_flops(self, pool: Any, target: Any | None) -> float:
        """FLOPs :meth:`score` will spend, computed without doing the work."""

    def estimate_flops_split(self, pool: Any, target: Any | None) -> dict[str, float]:
        """:meth:`estimate_flops` as ``{"pool": ..., "target": ...}``: the part :meth:`select_many`
        pays once for any number of targets, and this target's own part. By default nothing is
        shared: everything is the target's (LESS overrides this).

        Example:
            >>> from datasets import Dataset
            >>> from hf_cads import get_selector
            >>> pool = Dataset.from_dict({"text": ["a cat sat", "stock prices fell"]})
            >>> split = get_selector("bm25").estimate_flops_split(pool, Dataset.from_dict({"text": ["cat"]}))
            >>> split["pool"], split["target"] > 0
            (0.0, True)
        """
        return {"pool": 0.0, "target": float(self.estimate_flops(pool, target))}

    def select_many(
        self,
        pool: Any,
        targets: Mapping[str, Any] | Sequence[Any],
        k: int | None = None,
        fraction: float | None = None,
    ) -> dict[str, SelectionResult]:
        """:meth:`select` for each of several targets, by name (a sequence is named ``target-0``,
        ``target-1``, ...). By default one selection per target; a selector that
        :attr:`shares_work_across_targets` (LESS) does the pool's work once.

        Example:
            >>> from datasets import Dataset
            >>> from hf_cads import get_selector
            >>> pool = Dataset.from_dict({"text": ["a cat sat", "stock prices fell", "the cat ran"]})
            >>> targets = {"cats": Dataset.from_dict({"text": ["cat"]})}
            >>> targets["money"] = Dataset.from_dict({"text": ["stock"]})
            >>> {name: r.indices.tolist() for name, r in get_selector("bm25").select_many(pool, targets, k=1).items()}
            {'cats': [0], 'money': [1]}
        """
        named = self._named_targets(targets)
        return {name: self.select(pool, target=target, k=k, fraction=fraction) for name, target in named.items()}

    @staticmethod
    def _named_targets(targets: Mapping[str, Any] | Sequence[Any]) -> dict[str, Any]:
        named = dict(targets) if isinstance(targets, Mapping) else {f"target-{i}": t for i, t in enumerate(targets)}
        if not named:
            raise ValueError("select_many needs at least one target dataset, e.g. {'task': validation}.")
        return named

    # -- shared flow ----------------------------------------------------------------------------
    def choose(self, scores: np.ndarray, k: int, pool: Any, extras: dict[str, Any]) -> np.ndarray:
        """Which rows to keep given their scores; top-k by default."""
        return top_k_indices(scores, k)

    def validate_inputs(self, pool: Any, target: Any | None) -> None:
        validate_dataset(pool, "pool")
        if not self.config.allow_duplicates and self.config.deduplicate == "error":
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
        """Score ``pool`` against ``target`` and keep ``k`` rows (or ``fraction`` of the pool).

        Repeated rows are dropped first (``deduplicate="drop"``): ``k`` / ``fraction`` then count
        unique rows, while ``indices`` and ``pool_index`` still point at rows of ``pool``.
        """
        self.validate_inputs(pool, target)
        unique, dedup = self.unique_pool(pool)
        size = (
            None
            if (k is None and fraction is None and self.chooses_own_size)
            else self._resolve_size(unique, dedup, k, fraction)
        )
        return self.result_from_scores(pool, size, self.score_pool(unique, target), dedup)

    def result_from_scores(
        self, pool: Any, size: int | None, output: ScoreOutput, dedup: Deduplication | None = None
    ) -> SelectionResult:
        """Check a scoring output and keep ``size`` rows of ``pool`` by it (top-k by default).

        ``output`` scores the rows of :meth:`unique_pool` (every row when ``dedup`` is ``None``)."""
        unique = pool if dedup is None else pool.select(dedup.kept_rows.tolist())
        scores = np.asarray(output.scores, dtype=np.float64)
        if scores.shape != (len(unique),):
            raise RuntimeError(f"{type(self).__name__}.score returned {scores.shape} scores for {len(unique)} rows.")
        if np.isnan(scores).any():
            bad = np.flatnonzero(np.isnan(scores))[:5]
            bad = (bad if dedup is None else dedup.kept_rows[bad]).tolist()
            raise ValueError(
                f"The {self.name!r} selector produced NaN scores for pool rows {bad}; check those rows "
                "(empty or non-text content) or the selection model (a NaN loss means broken weights)."
            )
        indices = np.asarray(self.choose(scores, size, unique, output.extras), dtype=np.int64)
        if dedup is not None:
            indices = dedup.kept_rows[indices]
            scores = dedup.to_original(scores, len(pool))
            extras = {
                name: dedup.to_original(value, len(pool)) if is_per_row(value, len(unique)) else value
                for name, value in output.extras.items()
            }
            output = ScoreOutput(output.scores, output.flops, {**extras, "deduplication": dedup.summary()})
        return build_result(self, pool, indices, scores, output)

    def unique_pool(self, pool: Any) -> tuple[Any, Deduplication | None]:
        """The rows :meth:`select` scores: ``pool`` without repeated rows under ``deduplicate="drop"``
        (a view, nothing copied), and what was dropped. Estimate costs on this pool."""
        return unique_pool(pool, self.config)

    @staticmethod
    def _resolve_size(unique: Any, dedup: Deduplication | None, k: int | None, fraction: float | None) -> int:
        try:
            return resolve_k(len(unique), k, fraction)
        except ValueError as err:
            if dedup is None:
                raise
            raise ValueError(
                f"{str(err).rstrip('.')}: the pool has {len(unique)} unique rows after dropping "
                f"{dedup.dropped} duplicates."
            ) from None

    def score_pool(self, pool: Any, target: Any | None) -> ScoreOutput:
        """:meth:`score` as :meth:`select` runs it: from the cache when it holds these scores,
        sharded over the launched processes, and stored shard by shard while it runs.

        With a cache, the main process holds the cache folder's lock from the lookup to the last
        stored shard: another job scoring the same pool into the same ``cache_dir`` waits, then
        reads these scores (a cache hit) instead of computing them again."""
        processes = current_processes()
        cache = processes.on_main(lambda: self._open_cache(pool, target))
        if cache is None:
            return self._score_pool_with(None, pool, target, processes)
        lock = cache.exclusive() if processes.is_main else contextlib.nullcontext()
        with lock, _exit_cleanly_on_sigterm(cache.folder):
            return self._score_pool_with(cache, pool, target, processes)

    def _score_pool_with(
        self, cache: ScoreCache | None, pool: Any, target: Any | None, processes: Processes
    ) -> ScoreOutput:
        if cache is not None:
            stored = processes.on_main(cache.load_result)
            if stored is not None:
                logger.info(
                    "Reusing cached %s scores from %s (%.4g FLOPs when computed).",
                    self.name,
                    cache.folder,
                    stored.flops,
                )
                info = {"hit": True, "dir": str(cache.folder), "original_flops": stored.flops}
                return ScoreOutput(stored.scores, 0.0, {**stored.extras, "cache": info})
        if self.shardable:
            return self._score_in_shards(pool, target, processes, cache)
        output = (
            self.score(pool, target)
            if self.distributes_own_work
            else processes.on_main(lambda: self.score(pool, target))
        )
        if cache is not None:
            scores = np.asarray(output.scores, dtype=np.float64)
            saved = processes.on_main(lambda: cache.save_result(scores, float(output.flops), output.extras))
            if saved:
                output.extras["cache"] = {
                    "hit": False,
                    "dir": str(cache.folder),
                    "resumed_shards": 0,
                    "resumed_flops": 0.0,
                }
        return output

    def _open_cache(self, pool: Any, target: Any | None) -> ScoreCache | None:
        root = resolve_cache_dir(self.config.cache_dir)
        if root is None:
            return None
        return ScoreCache.for_selection(root, self.name or type(self).__name__, self.cache_description(pool, target))

    def _score_in_shards(
        self, pool: Any, target: Any | None, processes: Processes, cache: ScoreCache | None
    ) -> ScoreOutput:
        from tqdm.auto import tqdm

        shards = self.shard_ranges(len(pool))
        if cache is not None:
            processes.on_main(lambda: cache.begin(len(pool), shards))
        prepared = processes.on_main(lambda: self.prepare(pool, target))
        owned = processes.share(len(shards))

        def score_owned() -> dict[int, tuple[ScoreOutput, bool]]:
            done: dict[int, tuple[ScoreOutput, bool]] = {}
            total = sum(len(shards[index]) for index in owned)
            show = self.config.show_progress and processes.is_main
            with tqdm(
                total=total, desc=f"{self.name or 'selector'} scoring", unit="row", disable=not show
            ) as progress:
                for index in owned:
                    rows = shards[index]
                    stored = cache.load_shard(index, rows) if cache is not None else None
                    if stored is not None:
                        done[index] = (ScoreOutput(stored.scores, stored.flops, stored.extras), True)
                        progress.update(len(rows))
                        continue
                    before = progress.n
                    output = check_shard_output(self, self.score_rows(pool, target, rows, prepared, progress), rows)
                    progress.update(max(0, len(rows) - (progress.n - before)))
                    if cache is not None:
                        cache.save_shard(index, rows, output.scores, output.flops, output.extras)
                        _stop_if_terminated()
                    done[index] = (output, False)
            return done

        parts = processes.gather(score_owned)
        by_shard = {index: item for part in parts for index, item in part.items()}
        outputs = [by_shard[index][0] for index in range(len(shards))]
        resumed = [index for index in range(len(shards)) if by_shard[index][1]]
        names = set(outputs[0].extras)
        if any(set(output.extras) != names for output in outputs):
            raise RuntimeError(f"{type(self).__name__}.score_rows returned different extras for different shards.")
        extras: dict[str, Any] = {name: np.concatenate([output.extras[name] for output in outputs]) for name in names}
        flops = float(prepared.flops) + sum(output.flops for output in outputs)
        extras["sharding"] = {
            "shards": len(shards),
            "shard_size": int(self.config.shard_size),
            "processes": processes.world_size,
            "rows_scored_per_process": [
                sum(len(shards[i]) for i, (_, reused) in part.items() if not reused) for part in parts
            ],
        }
        if cache is not None:
            processes.on_main(lambda: cache.finish(flops, float(prepared.flops)))
            resumed_flops = float(sum(outputs[index].flops for index in resumed))
            if resumed:
                logger.info(
                    "Resumed %d of %d %s score shards from %s.", len(resumed), len(shards), self.name, cache.folder
                )
            extras["cache"] = {
                "hit": False,
                "dir": str(cache.folder),
                "resumed_shards": len(resumed),
                "resumed_flops": resumed_flops,
            }
        return ScoreOutput(np.concatenate([output.scores for output in outputs]), flops, extras)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


@contextlib.contextmanager
def _exit_cleanly_on_sigterm(cache_folder: Any) -> Iterator[None]:
    """While scoring into a cache, turn SIGTERM (a cluster's preemption notice) into a clean exit:
    the shard being written is dropped whole, the finished ones stay, the log says how to resume,
    and the process ends with the shell's SIGTERM code (143). A handler someone else installed (a
    trainer's) is left in charge; so is a non-main thread, where signals cannot be handled."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) not in (
        signal.SIG_DFL,
        None,
    ):
        yield
        return

    def terminate(signum: int, frame: Any) -> None:
        _TERMINATED.set()
        raise SystemExit(128 + signum)

    _TERMINATED.clear()
    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    except SystemExit as stop:
        if stop.code == 128 + signal.SIGTERM:
            logger.warning(
                "Terminated (SIGTERM) while scoring: the finished score shards are kept in %s. Run the same "
                "selection again to resume from them.",
                cache_folder,
            )
        raise
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _TERMINATED.clear()


# Set by the SIGTERM handler. The SystemExit it raises is lost when the signal lands inside a
# finalizer (`__del__` exceptions are only printed), so the shard loop also stops on this flag.
_TERMINATED = threading.Event()


def _stop_if_terminated() -> None:
    """Raise the SIGTERM exit after a stored shard when a handler's SystemExit was swallowed."""
    if _TERMINATED.is_set():
        raise SystemExit(128 + signal.SIGTERM)


def check_shard_output(selector: Selector, output: ScoreOutput, rows: range) -> ScoreOutput:
    """A shard's scores as float64, with clear errors for wrong lengths and non-per-row extras."""
    scores = np.asarray(output.scores, dtype=np.float64)
    if scores.shape != (len(rows),):
        raise RuntimeError(
            f"{type(selector).__name__}.score_rows returned {scores.shape} scores for {len(rows)} rows {rows}."
        )
    extras = {}
    for name, value in output.extras.items():
        value = np.asarray(value) if isinstance(value, np.ndarray) else value
        if not isinstance(value, np.ndarray) or value.ndim == 0 or len(value) != len(rows):
            raise TypeError(
                f"{type(selector).__name__}.score_rows put {name!r} in extras, which is not a per-row array of "
                f"length {len(rows)}; shardable selectors may only return per-row extras (put pool-wide values "
                "in prepare())."
            )
        extras[name] = value
    return ScoreOutput(scores, float(output.flops), extras)


def build_result(
    selector: Selector, pool: Any, indices: np.ndarray, scores: np.ndarray, output: ScoreOutput
) -> SelectionResult:
    """Attach scores and original indices to the chosen rows, keeping pool order."""
    indices = np.sort(np.unique(indices))
    chosen_scores = scores[indices]
    with quiet_loading():  # add_column flattens the selection's indices: no bar for that unless --verbose
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
