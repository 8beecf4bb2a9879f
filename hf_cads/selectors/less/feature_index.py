"""LESS's feature index: warmup checkpoints and projected pool features, stored once and reused.

LESS's cost is the warmup and one forward + backward per pool row and checkpoint; the target's
share is small. The index keeps what depends only on the pool, the selection model and the
projection — warmup checkpoints and pool features — in a folder keyed by exactly that, and the
target features beside them, per target. A selection for another target on the same pool and
model then computes only the target's gradients.

Layout of an index folder::

    manifest.json                         key, what it was built from, complete flag, original cost
    warmup/epoch-<e>.pt                   LoRA weights, Adam moments, learning rate per epoch
    features/checkpoint-<c>/pool-<n>.npy  unit-norm features of pool shard n (float16 by default)
    targets/<target key>/checkpoint-<c>.npy

Every file is written atomically (:func:`hf_cads.cache.atomic_write`); a file that cannot be
read, has the wrong shape or is not unit-norm is reported and recomputed, never trusted. An
index built from another model, pool, warmup or projection is refused with the differences named.

Example:
    >>> from hf_cads import get_selector
    >>> less = get_selector("less", model=model, tokenizer=tokenizer, feature_dir="less_index")  # doctest: +SKIP
    >>> first = less.select(pool, target=bbh_task_a, fraction=0.05)  # doctest: +SKIP
    >>> second = less.select(pool, target=bbh_task_b, fraction=0.05)  # pool features reused  # doctest: +SKIP
    >>> second.extras["feature_index"]["reused"], second.flops < 0.1 * first.flops  # doctest: +SKIP
    (True, True)
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ...cache import atomic_write

logger = logging.getLogger(__name__)

INDEX_FORMAT = 3  # 3: the warmup's learning rate no longer starts at 0 (see linear_schedule)
MANIFEST = "manifest.json"
UNIT_NORM_TOLERANCE = 1e-2
"""How far a stored feature's norm may be from 1 (float16 storage rounds it by ~1e-3)."""


def pool_features_path(root: str | os.PathLike, checkpoint: int, shard: int) -> Path:
    """Where an index stores the features of pool shard ``shard`` at warmup checkpoint ``checkpoint``.

    Example:
        >>> pool_features_path("index", 0, 3).as_posix()
        'index/features/checkpoint-0/pool-00003.npy'
    """
    return Path(root) / "features" / f"checkpoint-{checkpoint}" / f"pool-{shard:05d}.npy"


def target_features_path(root: str | os.PathLike, target_key: str, checkpoint: int) -> Path:
    """Where an index stores a target's features (by the hash of its rows) at ``checkpoint``.

    Example:
        >>> target_features_path("index", "ab" * 20, 1).as_posix()
        'index/targets/abababababababababababab/checkpoint-1.npy'
    """
    return Path(root) / "targets" / target_key[:24] / f"checkpoint-{checkpoint}.npy"


class FeatureIndexMismatchError(ValueError):
    """The folder holds an index built from another model, pool, warmup or projection."""


def read_manifest(root: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of the index at ``root``, ``None`` if there is none (or it is unreadable)."""
    path = Path(root) / MANIFEST
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        logger.warning("Unreadable LESS feature-index manifest %s (%s).", path, err)
        return None


def describe_differences(stored: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``name: stored -> current`` for every entry that differs (nested mappings flattened)."""
    differences = []
    for name in sorted(set(stored) | set(current)):
        old, new = stored.get(name), current.get(name)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            differences += describe_differences(old, new, f"{prefix}{name}.")
        elif json.dumps(old, sort_keys=True, default=str) != json.dumps(new, sort_keys=True, default=str):
            differences.append(f"{prefix}{name}: {old!r} -> {new!r}")
    return differences


class FeatureIndex:
    """One folder of LESS warmup checkpoints and features, for one (model, pool, warmup, projection).

    ``key`` hashes ``description`` (see :meth:`hf_cads.selectors.LESSSelector.index_key`); a
    folder whose manifest carries another key is refused, naming what differs. ``complete`` says
    whether a finished run wrote every pool feature: features read from a complete index were
    paid for by that run (its cost is in the manifest), those read from an incomplete one by an
    interrupted run that never reported them.
    """

    def __init__(
        self, root: str | os.PathLike, key: str, description: Mapping[str, Any], *, create: bool = True
    ) -> None:
        self.root = Path(root)
        self.key = key
        self.temporary = False
        """``True`` for a throw-away folder (no ``feature_dir`` or cache root): nothing is reused later."""
        stored = read_manifest(self.root)
        if stored is not None:
            if stored.get("format") != INDEX_FORMAT:
                raise FeatureIndexMismatchError(
                    f"feature_dir {str(self.root)!r} holds LESS features written by another hf_cads version (format "
                    f"{stored.get('format')}, this version writes {INDEX_FORMAT}); they are not reused. "
                    "Delete the folder "
                    "or pass a new one."
                )
            if stored.get("key") != key:
                differences = describe_differences(
                    stored.get("description") or {}, json.loads(json.dumps(description, default=str))
                )
                raise FeatureIndexMismatchError(
                    f"feature_dir {str(self.root)!r} holds a LESS feature index built from another model, "
                    "pool, warmup "
                    f"or projection ({'; '.join(differences[:6]) or 'different key'}), which cannot be reused. "
                    "Pass another feature_dir (or none, with cache_dir set, for one folder per index), "
                    "or delete this one."
                )
            self.manifest = stored
        else:
            # Hidden entries are this module's own: the lock file, and temporary files being written.
            if self.root.exists() and any(not entry.name.startswith(".") for entry in self.root.iterdir()):
                raise FeatureIndexMismatchError(
                    f"feature_dir {str(self.root)!r} is not empty and was not written by LESS; "
                    "pass an empty or new folder."
                )
            self.manifest = {
                "format": INDEX_FORMAT,
                "key": key,
                "description": dict(description),
                "complete": False,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            if create:
                self._write_manifest()

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def original_flops(self) -> dict[str, float]:
        """What the run that completed the index spent on it, by stage (empty while incomplete)."""
        return dict(self.manifest.get("original_flops") or {})

    def mark_complete(self, flops: Mapping[str, float]) -> None:
        """Record that every pool feature is stored, and what the warmup and pool features cost."""
        self.manifest.update(
            complete=True,
            original_flops={k: float(v) for k, v in flops.items()},
            finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        self._write_manifest()

    def _write_manifest(self) -> None:
        text = json.dumps(self.manifest, indent=2, sort_keys=True, default=str).encode("utf-8")
        atomic_write(self.root / MANIFEST, lambda handle: handle.write(text))

    # -- warmup checkpoints ------------------------------------------------------------------------
    def checkpoint_path(self, epoch: int) -> Path:
        return self.root / "warmup" / f"epoch-{epoch}.pt"

    def load_checkpoint(self, epoch: int) -> dict[str, Any] | None:
        """A stored warmup checkpoint as a dict, ``None`` when missing or unreadable (then retrained)."""
        import torch

        path = self.checkpoint_path(epoch)
        if not path.exists():
            return None
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a truncated or foreign file: retrain the epoch rather than trust it
            logger.warning("Ignoring unreadable LESS warmup checkpoint %s (%s); retraining that epoch.", path, err)
            return None
        if not isinstance(data, dict) or data.get("epoch") != epoch:
            logger.warning("LESS warmup checkpoint %s does not hold epoch %d; retraining that epoch.", path, epoch)
            return None
        return data

    def save_checkpoint(self, epoch: int, data: Mapping[str, Any]) -> None:
        import torch

        atomic_write(self.checkpoint_path(epoch), lambda handle: torch.save(dict(data), handle))

    # -- features ----------------------------------------------------------------------------------
    def pool_path(self, checkpoint: int, shard: int) -> Path:
        return pool_features_path(self.root, checkpoint, shard)

    def target_path(self, target_key: str, checkpoint: int) -> Path:
        return target_features_path(self.root, target_key, checkpoint)

    def load_features(self, path: Path, rows: int, dim: int) -> np.ndarray | None:
        """The features stored at ``path`` as float32 ``rows x dim``; ``None`` when missing or
        not trustworthy (unreadable, wrong shape, non-finite or not unit-norm), after a warning."""
        if not path.exists():
            return None
        try:
            features = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            logger.warning("Ignoring unreadable LESS features %s (%s); recomputing them.", path, err)
            return None
        problem = None
        if features.shape != (rows, dim):
            problem = f"shape {features.shape}, expected {(rows, dim)}"
        elif not np.isfinite(features).all():
            problem = "non-finite values"
        else:
            norms = np.linalg.norm(features.astype(np.float32), axis=1)
            if rows and np.abs(norms - 1.0).max() > UNIT_NORM_TOLERANCE:
                problem = f"row norms up to {np.abs(norms - 1.0).max():.3g} away from 1"
        if problem is not None:
            logger.warning("Ignoring corrupt LESS features %s (%s); recomputing them.", path, problem)
            return None
        return features.astype(np.float32, copy=False)

    def save_features(self, path: Path, features: np.ndarray) -> None:
        atomic_write(path, lambda handle: np.save(handle, features))
