"""LESS: targeted data selection by the similarity of optimizer-aware gradient features.

Implements LESS (Xia, Malladi, Gururangan, Arora & Chen, "LESS: Selecting Influential Data for
Targeted Instruction Tuning", ICML 2024, arXiv:2402.04333):

1. **Warmup.** LoRA-train the selection model on a random ``warmup_fraction`` of the pool for
   ``warmup_epochs`` epochs (AdamW, linear schedule with warmup), keeping a checkpoint at the end of
   every epoch: LoRA weights, Adam moments and the epoch's mean learning rate.
2. **Gradient features** at every checkpoint, LoRA parameters only. A pool example is represented by
   the direction Adam would move the weights if its next step saw that example alone,
   ``m' / (sqrt(v') + eps)`` with the checkpoint's moments; a target example by its plain gradient.
   Both are projected to ``projection_dim`` dimensions with a seeded Johnson-Lindenstrauss
   projection (sparse by default: each coordinate hashed to a few signed outputs; the paper's
   dense Rademacher or a Gaussian matrix as options) and L2-normalised.
3. **Score.** Per checkpoint, the cosine similarity of a pool feature with each target feature of a
   sub-task, averaged over that sub-task's examples; checkpoints are weighted by their learning
   rate and summed; with several sub-tasks (``subtask_column``) a row's score is its best sub-task.
   The top-k rows are kept.

LESS is by far the most expensive selector here (a forward and backward pass per pool row and
checkpoint, plus the warmup): under a compute budget it only pays off when the trained model is
much (~10x) larger than the selection model (Yin & Rush, "Compute-Constrained Data Selection",
2024). Per-example gradients come from one batched backward per batch (see
:class:`~hf_cads.selectors.less.gradients.PerExampleGradients`). Every FLOP is charged: warmup
training, one forward + backward per example and checkpoint, the random projection and the
similarity products, and :meth:`LESSSelector.estimate_flops` predicts that total before any work.

Warmup checkpoints and pool features form a reusable index (:mod:`hf_cads.selectors.less.feature_index`),
keyed by the model, pool, warmup options and projection: features are written in shards (float16
by default), so a large pool never has to fit in memory, an interrupted run resumes from its last
finished shard, and a selection for another target on the same pool computes only the target's
gradients (:meth:`LESSSelector.select_many` selects for several targets in one pass). Under
``accelerate launch`` the warmup runs once, on the main process, and the pool's shards are split
over the processes.

Example:
    >>> from hf_cads import get_selector
    >>> selector = get_selector("less", model=model, tokenizer=tokenizer, subtask_column="task")  # doctest: +SKIP
    >>> result = selector.select(pool, target=validation, fraction=0.05)  # doctest: +SKIP
    >>> result.extras["flops_breakdown"]  # doctest: +SKIP
    {'warmup': ..., 'pool_gradients': ..., 'target_gradients': ..., 'projection': ..., 'similarity': ...}
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...cache import LOCK_FILE, cache_key, exclusive_lock, resolve_cache_dir
from ...data import column_values
from ...distributed import Processes, current_processes
from ...flops import matmul_flops
from ..base import ScoreOutput, SelectionResult, Selector
from ..registry import register_selector
from ..round_robin import PerTargetChoiceMixin
from .config import LESSSelectorConfig
from .feature_index import INDEX_FORMAT, FeatureIndex, read_manifest, target_features_path
from .features import LESSFeatures, WarmupCheckpoint

# Options that change a LESS result but not the warmup checkpoints or the pool's features: target-side
# options, and the duplicate handling, which reaches the features only through the pool rows the
# index key hashes anyway. An index built with other values of these is reused.
_NOT_IN_INDEX_KEY = ("subtask_column", "aggregate", "target_text_column", "allow_duplicates", "deduplicate")


def influence_scores(pool_features: Any, target_means: Any, learning_rate: float) -> Any:
    """One checkpoint's LESS term: ``learning_rate * cos(pool row, target row)`` averaged per sub-task.

    Features are unit-norm, so the mean cosine over a sub-task's examples equals the dot product
    with their mean feature: ``pool_features`` (rows x d) times ``target_means`` (sub-tasks x d)
    transposed.
    """
    return (pool_features @ target_means.T) * learning_rate


@dataclass
class LESSInputs:
    """Tokenised pool and target plus each target row's sub-task."""

    pool_ids: list[list[int]]
    target_ids: list[list[int]]
    subtask_index: np.ndarray
    subtasks: list[str]
    extras: dict[str, Any] = field(default_factory=dict)


@register_selector("less")
class LESSSelector(PerTargetChoiceMixin, LESSFeatures, Selector):
    """LESS (Xia et al., 2024): keep the pool rows whose Adam update direction best aligns with the
    target's gradients. A seeded LoRA warmup on ``warmup_fraction`` of the pool keeps one checkpoint
    per epoch; every pool row's Adam step direction and every target row's gradient (LoRA weights
    only) are projected to ``projection_dim`` dimensions and compared by cosine, checkpoints weighted
    by their learning rate. It costs the warmup plus a forward and backward pass per row and
    checkpoint, predicted by :meth:`estimate_flops` before any work.

    The selection model is never modified: a model passed in (plain or already LoRA-wrapped, as
    BudgetedTrainer passes it) is deep-copied, any adapters are merged, and fresh seeded LoRA
    adapters are trained on the copy.

    The per-example step, :meth:`gradient_features`, works on any subset of rows, so feature
    extraction is split across the processes of ``accelerate launch`` / ``torchrun``: the main
    process runs :meth:`warmup` and the target features and sends them to the others, each process
    computes its own block of pool shards, and every process gets the same scores as one process
    would. :meth:`select_many` selects for several targets from one pass over the pool, and with
    ``feature_dir`` (or ``cache_dir``) a later selection for another target reuses the pool features.

    Example:
        >>> from hf_cads import get_selector
        >>> less = get_selector("less", model=model, tokenizer=tokenizer, projection_dim=8192,
        ...                     subtask_column="task", feature_dir="less_features")  # doctest: +SKIP
        >>> less.estimate_flops(pool, validation)  # doctest: +SKIP
        >>> result = less.select(pool, target=validation, fraction=0.05)  # doctest: +SKIP
        >>> results = less.select_many(pool, {"dyck": dyck_val, "boolean": boolean_val}, k=500)  # doctest: +SKIP
    """

    config_class = LESSSelectorConfig
    uses_model = True
    reuses_training_model = True
    distributes_own_work = True
    shares_work_across_targets = True
    per_target_scores = "subtask_scores"  # under round_robin every target row is its own sub-task

    def __init__(
        self, config: LESSSelectorConfig | None = None, *, model: Any = None, tokenizer: Any = None, **kwargs: Any
    ) -> None:
        super().__init__(config, model=model, tokenizer=tokenizer, **kwargs)
        self._init_features(model_given=model is not None)

    # -- inputs ---------------------------------------------------------------------------------
    def subtasks(self, target: Any) -> tuple[np.ndarray, list[str]]:
        """Each target row's sub-task index and the sub-task names (one sub-task without a column,
        one per row under ``aggregate="round_robin"``)."""
        column = self.config.subtask_column
        if self.config.aggregate == "round_robin":
            return np.arange(len(target), dtype=np.int64), [f"row-{row}" for row in range(len(target))]
        if column is None:
            return np.zeros(len(target), dtype=np.int64), ["target"]
        if column not in target.column_names:
            raise ValueError(
                f"subtask_column={column!r} is not a column of the target dataset (columns: {target.column_names}). "
                "Name the column holding each row's sub-task (e.g. 'task'), or set subtask_column=None to treat "
                "the target as one task."
            )
        labels = [str(value) for value in column_values(target, column)]
        names = sorted(set(labels))
        return np.array([names.index(label) for label in labels], dtype=np.int64), names

    def _inputs(self, pool: Any, target: Any) -> LESSInputs:
        index, names = self.subtasks(target)
        return LESSInputs(self.encode(pool, "pool"), self.encode(target, "target"), index, names)

    # -- scores ---------------------------------------------------------------------------------
    def _shards(self, pool_size: int) -> list[range]:
        size = self.config.shard_size
        return [range(start, min(pool_size, start + size)) for start in range(0, pool_size, size)]

    def flops_breakdown(self, inputs: LESSInputs) -> dict[str, float]:
        """Every FLOP of :meth:`score`, by stage, computed without doing the work.

        When the feature index for this pool is complete (an earlier run built it), its warmup
        and pool features are reused and cost nothing here; so do stored features of this target.
        """
        profile = self._profile()
        epochs = self.config.warmup_epochs
        projection = self.projection()
        key = self.index_key(inputs.pool_ids)
        root = self._index_root(key)
        manifest = read_manifest(root) if root is not None else None
        reused = bool(manifest and manifest.get("key") == key and manifest.get("complete"))
        target_reused = reused and all(
            target_features_path(root, _ids_digest(inputs.target_ids), c).exists()
            for c in range(epochs)  # type: ignore[arg-type]
        )
        pool_rows = 0 if reused else len(inputs.pool_ids)
        target_rows = 0 if target_reused else len(inputs.target_ids)
        shapes = [
            s
            for shard in self._shards(len(inputs.pool_ids))
            for s in self._batcher().padded_shapes([inputs.pool_ids[i] for i in shard])
        ]
        pool_gradients = 0.0 if reused else epochs * sum(profile.train_step_flops(b, s) for b, s in shapes)
        target_shapes = [] if target_reused else self._batcher().padded_shapes(inputs.target_ids)
        return {
            "warmup": 0.0 if reused else self._warmup_flops(inputs.pool_ids),
            "pool_gradients": float(pool_gradients),
            "target_gradients": float(epochs * sum(profile.train_step_flops(b, s) for b, s in target_shapes)),
            "projection": epochs * (projection.flops(pool_rows) + projection.flops(target_rows)),
            "similarity": epochs
            * matmul_flops(len(inputs.pool_ids), self.config.projection_dim, len(inputs.subtasks)),
        }

    def estimate_flops(self, pool: Any, target: Any | None) -> float:
        return float(sum(self.flops_breakdown(self._inputs(pool, target)).values()))

    def estimate_flops_split(self, pool: Any, target: Any | None) -> dict[str, float]:
        """:meth:`estimate_flops` as ``{"pool": ..., "target": ...}``: the warmup and pool features (paid
        once for any number of targets; 0 when a complete index holds them) and this target's share."""
        inputs = self._inputs(pool, target)
        shared = sum(self.flops_breakdown(LESSInputs(inputs.pool_ids, [], np.zeros(0, dtype=np.int64), [])).values())
        return {"pool": float(shared), "target": float(sum(self.flops_breakdown(inputs).values()) - shared)}

    def score(self, pool: Any, target: Any | None) -> ScoreOutput:
        return self.score_many(pool, [target])[0]

    def select_many(
        self,
        pool: Any,
        targets: Mapping[str, Any] | Sequence[Any],
        k: int | None = None,
        fraction: float | None = None,
    ) -> dict[str, SelectionResult]:
        """Select ``k`` rows (or ``fraction`` of the pool) for each of several targets in one pass.

        The warmup and the pool's gradient features are computed once (or read from a complete
        feature index) and every pool shard is scored against all targets together. The first
        target's result is charged the shared work; each other result only its own target
        gradients and similarity, with ``extras["feature_index"]["shared_with"]`` naming the first.
        Scores are not read from or written to the score cache (``cache_dir``) here.

        Example:
            >>> targets = {"dyck": dyck_val, "boolean": boolean_val}  # doctest: +SKIP
            >>> results = less.select_many(pool, targets, fraction=0.05)  # doctest: +SKIP
            >>> {name: result.flops for name, result in results.items()}  # doctest: +SKIP
        """
        named = self._named_targets(targets)
        for target in named.values():
            self.validate_inputs(pool, target)
        unique, dedup = self.unique_pool(pool)
        size = self._resolve_size(unique, dedup, k, fraction)
        outputs = self.score_many(unique, list(named.values()))
        first = next(iter(named))
        results = {}
        for name, output in zip(named, outputs):
            if name != first:
                output.extras["feature_index"]["shared_with"] = first
            results[name] = self.result_from_scores(pool, size, output, dedup)
        return results

    def score_many(self, pool: Any, targets: Sequence[Any]) -> list[ScoreOutput]:
        """Each target's scores of every pool row, from one warmup and one pass over the pool.

        Runs on every process of a distributed launch: the main process runs (or loads) the
        warmup and the target features and sends them to the others, each process computes the
        features and scores of its own block of pool shards, and the scores are gathered (equal to
        a one-process run: the shards, and so the batches, do not depend on the process count).
        The first output charges the warmup and pool features (nothing for what a complete
        feature index provides; its cost is noted in ``extras["feature_index"]``).
        """
        if not targets:
            raise ValueError("score_many needs at least one target dataset.")
        config = self.config
        processes = current_processes()
        pool_ids = self.encode(pool, "pool")
        parts = [(self.encode(target, "target"), *self.subtasks(target)) for target in targets]
        self.projection()  # fails early on a projection_dim larger than the gradients
        shards = self._shards(len(pool_ids))
        with self._index(pool_ids, processes) as index:
            reuse = bool(processes.on_main(lambda: index.complete))
            checkpoints, warmup_flops = processes.on_main(
                lambda: self.warmup(pool_ids, index, charge_loaded=not reuse)
            )
            target_states = processes.on_main(
                lambda: [
                    self._target_features(index, ids, subtask_index, len(names), checkpoints, reuse)
                    for ids, subtask_index, names in parts
                ]
            )
            means = [np.concatenate([state["means"][c] for state in target_states]) for c in range(len(checkpoints))]
            owned = processes.share(len(shards))
            gathered = processes.gather(
                lambda: self._score_pool_shards(index, pool_ids, shards, owned, checkpoints, means, reuse, processes)
            )
            by_shard = {number: item for part in gathered for number, item in part.items()}
            pool_charged = {
                name: float(sum(by_shard[n]["charged"][name] for n in range(len(shards))))
                for name in ("pool_gradients", "projection")
            }
            if not reuse:
                processes.on_main(lambda: index.mark_complete({"warmup": warmup_flops, **pool_charged}))
            index_dir = None if index.temporary else str(index.root)
            original = index.original_flops if reuse else {}
        reused_flops = (self._warmup_flops(pool_ids) - warmup_flops) + sum(
            by_shard[n]["reused_flops"] for n in range(len(shards))
        )
        resumed = sum(by_shard[n]["resumed"] for n in range(len(shards)))
        # What the warmup and pool features cost, charged here or reused: paid once for any number of targets.
        pool_flops = warmup_flops + sum(pool_charged.values()) + reused_flops
        sharding = {
            "shards": len(shards),
            "shard_size": int(config.shard_size),
            "processes": processes.world_size,
            "rows_scored_per_process": [
                sum(len(shards[n]) for n, item in part.items() if item["computed"]) for part in gathered
            ],
        }
        columns = np.cumsum([0] + [len(names) for _, _, names in parts])
        outputs = []
        for number, ((_, _, names), state) in enumerate(zip(parts, target_states)):
            first = number == 0
            subtask_scores = np.concatenate(
                [by_shard[n]["scores"][:, columns[number] : columns[number + 1]] for n in range(len(shards))]
            )
            breakdown = {
                "warmup": warmup_flops if first else 0.0,
                "pool_gradients": pool_charged["pool_gradients"] if first else 0.0,
                "target_gradients": state["charged"]["target_gradients"],
                "projection": (pool_charged["projection"] if first else 0.0) + state["charged"]["projection"],
                "similarity": len(checkpoints) * matmul_flops(len(pool_ids), config.projection_dim, len(names)),
            }
            extras = {
                "flops_breakdown": breakdown,
                "subtasks": names,
                "subtask_scores": subtask_scores,
                "checkpoint_learning_rates": [c.learning_rate for c in checkpoints],
                "num_lora_params": self.num_lora_params(),
                "projection": self.projection().describe(),
                "resumed_feature_files": (resumed if first else 0) + state["resumed"],
                "feature_dir": index_dir,
                "feature_index": {
                    "dir": index_dir,
                    "reused": reuse,
                    "reused_flops": (reused_flops if first else 0.0) + state["reused_flops"],
                    "original_flops": original,
                },
                "sharding": sharding,
                "flops_split": {
                    "pool": pool_flops,
                    "target": float(sum(breakdown.values()))
                    + state["reused_flops"]
                    - (pool_flops - reused_flops if first else 0.0),
                },
            }
            outputs.append(ScoreOutput(subtask_scores.max(axis=1), float(sum(breakdown.values())), extras))
        return outputs

    def _load_or_compute(
        self,
        index: FeatureIndex,
        path: Any,
        token_ids: Sequence[Sequence[int]],
        checkpoint: WarmupCheckpoint,
        optimizer_aware: bool,
        progress: Any,
    ) -> tuple[np.ndarray, float, bool]:
        """Features stored at ``path`` (validated) or computed and stored; their FLOPs; whether loaded.

        Computed features are rounded to ``feature_dtype`` as stored, so a run that reads them back
        scores exactly what the run that wrote them did.
        """
        features = index.load_features(path, len(token_ids), self.config.projection_dim)
        if features is not None:
            if progress is not None:
                progress.update(len(token_ids))
            return features, self.feature_flops(token_ids), True
        computed, flops = self.gradient_features(
            token_ids, checkpoint, optimizer_aware=optimizer_aware, progress=progress
        )
        stored = computed.astype(self.config.feature_dtype)
        index.save_features(path, stored)
        return stored.astype(np.float32), flops, False

    def _target_features(
        self,
        index: FeatureIndex,
        token_ids: list[list[int]],
        subtask_index: np.ndarray,
        num_subtasks: int,
        checkpoints: list[WarmupCheckpoint],
        reuse: bool,
    ) -> dict[str, Any]:
        """One target's mean feature per sub-task at every checkpoint, and what they cost."""
        import torch
        from tqdm.auto import tqdm

        key = _ids_digest(token_ids)
        charged = {"target_gradients": 0.0, "projection": 0.0}
        resumed, reused_flops, means = 0, 0.0, []
        projection_flops = self.projection().flops(len(token_ids))
        total = len(checkpoints) * len(token_ids)
        with tqdm(total=total, desc="LESS target features", disable=not self.config.show_progress) as progress:
            for number, checkpoint in enumerate(checkpoints):
                features, flops, loaded = self._load_or_compute(
                    index, index.target_path(key, number), token_ids, checkpoint, False, progress
                )
                if loaded and reuse:
                    reused_flops += flops
                else:
                    resumed += int(loaded)
                    charged["target_gradients"] += flops - projection_flops
                    charged["projection"] += projection_flops
                tensor = torch.from_numpy(features)
                means.append(
                    torch.stack(
                        [tensor[torch.from_numpy(subtask_index == s)].mean(dim=0) for s in range(num_subtasks)]
                    ).numpy()
                )
        return {"means": means, "charged": charged, "resumed": resumed, "reused_flops": reused_flops}

    def _score_pool_shards(
        self,
        index: FeatureIndex,
        pool_ids: list[list[int]],
        shards: list[range],
        owned: range,
        checkpoints: list[WarmupCheckpoint],
        means: list[np.ndarray],
        reuse: bool,
        processes: Processes,
    ) -> dict[int, dict[str, Any]]:
        """Scores (rows x all targets' sub-tasks) of this process's pool shards, and their cost."""
        import torch
        from tqdm.auto import tqdm

        done: dict[int, dict[str, Any]] = {}
        total = len(checkpoints) * sum(len(shards[n]) for n in owned)
        show = self.config.show_progress and processes.is_main
        with tqdm(total=total, desc="LESS pool features", disable=not show) as progress:
            for number in owned:
                rows = shards[number]
                token_ids = [pool_ids[i] for i in rows]
                projection_flops = self.projection().flops(len(rows))
                item = {
                    "scores": np.zeros((len(rows), means[0].shape[0])),
                    "charged": {"pool_gradients": 0.0, "projection": 0.0},
                    "reused_flops": 0.0,
                    "resumed": 0,
                    "computed": False,
                }
                for position, checkpoint in enumerate(checkpoints):
                    features, flops, loaded = self._load_or_compute(
                        index, index.pool_path(position, number), token_ids, checkpoint, True, progress
                    )
                    item["computed"] |= not loaded
                    if loaded and reuse:
                        item["reused_flops"] += flops
                    else:
                        item["resumed"] += int(loaded)
                        item["charged"]["pool_gradients"] += flops - projection_flops
                        item["charged"]["projection"] += projection_flops
                    with torch.no_grad():
                        item["scores"] += (
                            influence_scores(
                                torch.from_numpy(features), torch.from_numpy(means[position]), checkpoint.learning_rate
                            )
                            .double()
                            .numpy()
                        )
                done[number] = item
        return done

    def cache_description(self, pool: Any, target: Any | None) -> dict[str, Any]:
        # Scores cached by a version whose warmup trained differently must not be served.
        return {**super().cache_description(pool, target), "feature_format": INDEX_FORMAT}

    # -- storage --------------------------------------------------------------------------------
    def index_description(self, pool_ids: Sequence[Sequence[int]]) -> dict[str, Any]:
        """What the warmup checkpoints and pool features depend on: model, options, projection, pool."""
        self.selection_model()
        options = {k: v for k, v in self.config.result_options().items() if k not in _NOT_IN_INDEX_KEY}
        return {
            "model": self._model_fingerprint,
            "options": json.loads(json.dumps(options, default=str)),
            "projection": self.projection().describe(),
            "pool": {"rows": len(pool_ids), "token_ids_sha256": _ids_digest(pool_ids)},
        }

    def index_key(self, pool_ids: Sequence[Sequence[int]]) -> str:
        return cache_key({"format": INDEX_FORMAT, **self.index_description(pool_ids)})

    def _index_root(self, key: str) -> Path | None:
        """``feature_dir``; else a folder per index under the cache root; else ``None`` (temporary)."""
        if self.config.feature_dir is not None:
            return Path(self.config.feature_dir).expanduser()
        root = resolve_cache_dir(self.config.cache_dir)
        return root / f"less-features-{key[:24]}" if root is not None else None

    @contextlib.contextmanager
    def _index(self, pool_ids: Sequence[Sequence[int]], processes: Processes) -> Iterator[FeatureIndex]:
        description = self.index_description(pool_ids)
        key = cache_key({"format": INDEX_FORMAT, **description})
        root = self._index_root(key)
        if root is None:
            with tempfile.TemporaryDirectory(prefix="hf_cads_less_") as folder:
                index = FeatureIndex(folder, key, description)
                index.temporary = True
                yield index
            return
        # The main process holds the folder's lock while this run reads and writes the index: a second
        # job with the same feature_dir waits, then finds it complete and reuses it.
        lock = exclusive_lock(root / LOCK_FILE, "LESS features") if processes.is_main else contextlib.nullcontext()
        with lock:
            # The main process creates (or checks) the folder; a mismatch is an error on every process.
            processes.on_main(lambda: FeatureIndex(root, key, description) and None)
            yield FeatureIndex(root, key, description, create=False)


def _ids_digest(token_ids: Sequence[Sequence[int]]) -> str:
    """A hash of tokenised rows (their order and every id)."""
    digest = hashlib.sha256()
    for ids in token_ids:
        digest.update(np.asarray(ids, dtype=np.int64).tobytes() + b"|")
    return digest.hexdigest()
