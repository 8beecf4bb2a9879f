"""On-disk cache of selector scores: reuse a finished scoring run, resume an interrupted one.

Scores are stored under ``<cache_dir>/<selector>-<key>/``, where the key hashes everything the
scores depend on: the pool's and target's ``datasets`` fingerprints, the selector's name and
configuration (without cosmetic options such as ``show_progress``) and the scoring model (its
name, revision and local files, or a hash of the weights of a model object passed in).

A folder holds ``manifest.json`` and one ``shard-NNNNN.npz`` per scored shard of pool rows. Every
file is written under a temporary name and moved into place with ``os.replace``, so a killed
process leaves complete shards or none: a rerun scores only the missing ones. When all shards are
there the manifest is marked complete and a rerun scores nothing. A job holds the folder's lock
(:func:`exclusive_lock`) while it scores, so a second job with the same ``cache_dir`` waits and
then reuses the scores instead of computing them again.

FLOP accounting follows the work actually done for a result: a complete cache hit charges 0 FLOPs
(the run that wrote it was charged) and reports the original cost in ``extras["cache"]``; a
resumed run charges the shards it reused too, since the interrupted run that spent them never
reported them, so an interrupted-then-resumed selection costs what an uninterrupted one does.

Example:
    >>> from hf_cads import get_selector
    >>> selector = get_selector("bm25", cache_dir="/tmp/hf_cads_cache")  # doctest: +SKIP
    >>> first = selector.select(pool, target=target, k=100)  # doctest: +SKIP
    >>> again = selector.select(pool, target=target, k=100)  # doctest: +SKIP
    >>> info = again.extras["cache"]  # doctest: +SKIP
    >>> again.flops, info["hit"], info["original_flops"] == first.flops  # doctest: +SKIP
    (0.0, True, True)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

CACHE_ENV = "HF_CADS_CACHE"
"""Environment variable naming a cache folder, used when a selector's ``cache_dir`` is ``None``."""

FORMAT_VERSION = 2
"""Version of the cache key and folder layout. 2: the key hashes exactly the options marked as
affecting the result (``SelectorConfig`` field metadata); folders of version 1 are not reused."""
MANIFEST = "manifest.json"
EXTRA_PREFIX = "extra__"


class CacheError(RuntimeError):
    """A cache folder that cannot be used (written by something else, or unwritable)."""


def resolve_cache_dir(configured: str | os.PathLike | None) -> Path | None:
    """The cache folder to use: the configured one, else ``$HF_CADS_CACHE``, else none (no caching)."""
    value = configured if configured is not None else os.environ.get(CACHE_ENV) or None
    return Path(value).expanduser() if value is not None else None


# -- what the scores depend on ---------------------------------------------------------------------
def weights_digest(model: Any) -> str:
    """A hash of every parameter and buffer of a ``torch.nn.Module`` (names, dtypes, shapes, values)."""
    import torch

    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        if not isinstance(tensor, torch.Tensor):
            continue
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        if tensor.is_meta:  # a model built from its config alone (cost estimates): no values to hash
            continue
        data = tensor.detach().to("cpu").contiguous()
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def tokenizer_digest(tokenizer: Any) -> str:
    """A hash of a tokenizer's vocabulary, rules, special tokens and chat template."""
    from datasets.fingerprint import Hasher

    return Hasher.hash(tokenizer)


def local_files_signature(path: str | os.PathLike, limit: int = 200) -> list[tuple[str, int, int]] | None:
    """``(relative path, size, mtime)`` of the files of a local model folder (or file); ``None`` for a
    name that is not on disk, such as a Hub id or a built-in alias."""
    root = Path(os.path.expanduser(str(path)))
    if not root.exists():
        return None
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return [
        (str(p.relative_to(root)) if p != root else p.name, p.stat().st_size, p.stat().st_mtime_ns)
        for p in files[:limit]
    ]


def model_identity(
    model: Any, tokenizer: Any, config: Any, *, model_given: bool, tokenizer_given: bool
) -> dict[str, Any]:
    """What identifies the scoring model in a cache key.

    A model object the caller passed in is identified by its weights (it may be a finetuned or
    randomly initialised one whose name says nothing); a model the selector loads itself by its
    ``model_name_or_path``, ``revision`` and, for a local folder, its files.
    """
    identity: dict[str, Any] = {}
    if model_given and model is not None:
        identity["weights"] = weights_digest(model)
    else:
        name = getattr(config, "model_name_or_path", None)
        if name is not None:
            identity["model_name_or_path"] = name
            identity["revision"] = getattr(config, "revision", None)
            identity["files"] = local_files_signature(name)
    if tokenizer_given and tokenizer is not None:
        identity["tokenizer"] = tokenizer_digest(tokenizer)
    return identity


def cache_key(description: Mapping[str, Any]) -> str:
    """A stable hex digest of a JSON-able description."""
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def report_stale_folders(root: Path, selector_name: str) -> list[Path]:
    """Folders of ``selector_name`` under ``root`` written with another :data:`FORMAT_VERSION`: never
    reused (their keys were computed another way), and reported once per call with what to do."""
    stale = []
    for manifest in sorted(root.glob(f"{selector_name}-*/{MANIFEST}")):
        try:
            version = json.loads(manifest.read_text(encoding="utf-8")).get("format")
        except (OSError, json.JSONDecodeError):
            continue
        if version != FORMAT_VERSION:
            stale.append(manifest.parent)
    if stale:
        logger.warning(
            "%d %s score-cache folder(s) under %s were written by another hf_cads version (cache format %s, this "
            "version uses %d and keys scores differently); they are not reused and these scores are computed "
            "afresh. Delete them to free the space: %s",
            len(stale),
            selector_name,
            root,
            sorted({str(json.loads((p / MANIFEST).read_text()).get("format")) for p in stale}),
            FORMAT_VERSION,
            ", ".join(p.name for p in stale[:5]) + (" ..." if len(stale) > 5 else ""),
        )
    return stale


# -- storage -------------------------------------------------------------------------------------
def atomic_write(path: Path, write: Any) -> None:
    """Write through ``write(handle)`` to a temporary file beside ``path``, then move it into place:
    a reader (or a killed writer) never leaves or sees a partial ``path``.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> atomic_write(folder / "scores.txt", lambda handle: handle.write(b"0.5"))
        >>> (folder / "scores.txt").read_text(), sorted(p.name for p in folder.iterdir())
        ('0.5', ['scores.txt'])
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per writer: processes on two hosts sharing a file system may have the same pid.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


LOCK_FILE = ".lock"
"""The lock file inside a cache or feature-index folder (see :func:`exclusive_lock`)."""


@contextlib.contextmanager
def exclusive_lock(path: Path, what: str = "these results") -> Iterator[None]:
    """Hold an exclusive advisory lock (``fcntl.flock``) on the file ``path`` while the block runs.

    Two jobs that compute the same results into one folder (two ``hf-cads select`` with one
    ``cache_dir``, two LESS runs with one ``feature_dir``) take turns: the second waits here and
    then finds the first one's complete results, so the work is done once. The lock goes with the
    open file, so a killed holder releases it. Without ``fcntl`` (Windows) there is no lock and
    both compute; every file is still written atomically. On a network file system the lock holds
    only where it supports ``flock`` (NFSv4 does).

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> with exclusive_lock(folder / LOCK_FILE):
        ...     atomic_write(folder / "scores.txt", lambda handle: handle.write(b"0.5"))
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("Another process is computing %s in %s; waiting for it to finish.", what, path.parent)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


@dataclass
class StoredScores:
    """Scores read back from the cache, with the FLOPs their computation spent."""

    scores: np.ndarray
    flops: float
    extras: dict[str, Any]


class ScoreCache:
    """One cache folder: the scores of one (pool, target, selector configuration, model) combination.

    Built by the selection flow (:meth:`hf_cads.selectors.Selector.select`); use it directly only
    to inspect a cache (``ScoreCache(folder).manifest()``).
    """

    def __init__(
        self, folder: str | os.PathLike, key: str | None = None, description: Mapping[str, Any] | None = None
    ) -> None:
        self.folder = Path(folder)
        self.key = key
        self.description = dict(description or {})

    @classmethod
    def for_selection(cls, root: str | os.PathLike, selector_name: str, description: Mapping[str, Any]) -> ScoreCache:
        key = cache_key({"format": FORMAT_VERSION, **description})
        cache = cls(Path(root) / f"{selector_name}-{key[:24]}", key, description)
        if not cache.folder.exists():
            report_stale_folders(Path(root), selector_name)
        return cache

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        """This folder's :func:`exclusive_lock`: hold it from checking the cache to storing the
        scores, so two jobs scoring the same pool into one ``cache_dir`` score it once."""
        return exclusive_lock(self.folder / LOCK_FILE, "these scores")

    # -- manifest --------------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any] | None:
        path = self.folder / MANIFEST
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            logger.warning("Ignoring unreadable cache manifest %s (%s); rescoring.", path, err)
            return None
        if self.key is not None and data.get("key") != self.key:
            raise CacheError(
                f"Cache folder {self.folder} belongs to other scores (key {data.get('key')!r}, "
                f"expected {self.key!r}); "
                "delete the folder or point cache_dir elsewhere."
            )
        return data

    def _write_manifest(self, data: Mapping[str, Any]) -> None:
        text = json.dumps(data, indent=2, sort_keys=True, default=_json_default).encode()
        atomic_write(self.folder / MANIFEST, lambda handle: handle.write(text))

    def begin(self, pool_size: int, shards: Sequence[range]) -> None:
        """Create the folder and an incomplete manifest (kept as is when a run resumes)."""
        if self.manifest() is not None:
            return
        self._write_manifest(
            {
                "format": FORMAT_VERSION,
                "key": self.key,
                "description": self.description,
                "pool_size": pool_size,
                "shards": [[r.start, r.stop] for r in shards],
                "complete": False,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        )

    def is_complete(self) -> bool:
        manifest = self.manifest()
        return bool(manifest and manifest.get("complete"))

    def finish(self, flops: float, prepare_flops: float, extras: Mapping[str, Any] | None = None) -> None:
        """Mark the scores complete, recording their total cost and the non-per-row extras."""
        manifest = self.manifest() or {}
        manifest.update(
            complete=True, flops=float(flops), prepare_flops=float(prepare_flops), extras=dict(extras or {})
        )
        manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self._write_manifest(manifest)

    # -- shards ----------------------------------------------------------------------------------
    def shard_path(self, index: int) -> Path:
        return self.folder / f"shard-{index:05d}.npz"

    def save_shard(
        self, index: int, rows: range, scores: np.ndarray, flops: float, row_extras: Mapping[str, np.ndarray]
    ) -> None:
        arrays = {
            "scores": np.asarray(scores, dtype=np.float64),
            "flops": np.float64(flops),
            "rows": np.array([rows.start, rows.stop]),
        }
        arrays.update({EXTRA_PREFIX + name: np.asarray(value) for name, value in row_extras.items()})
        atomic_write(self.shard_path(index), lambda handle: np.savez(handle, **arrays))

    def load_shard(self, index: int, rows: range) -> StoredScores | None:
        """The stored scores of shard ``index``, or ``None`` when it is missing or does not match ``rows``."""
        path = self.shard_path(index)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                stored_rows = tuple(int(v) for v in data["rows"])
                scores = np.array(data["scores"], dtype=np.float64)
                flops = float(data["flops"])
                extras = {
                    name[len(EXTRA_PREFIX) :]: np.array(data[name])
                    for name in data.files
                    if name.startswith(EXTRA_PREFIX)
                }
        except (OSError, ValueError, KeyError) as err:
            logger.warning("Ignoring unreadable cached shard %s (%s); rescoring it.", path, err)
            return None
        if stored_rows != (rows.start, rows.stop) or scores.shape != (len(rows),):
            logger.warning(
                "Cached shard %s covers rows %s, expected %s; rescoring it.",
                path,
                stored_rows,
                (rows.start, rows.stop),
            )
            return None
        return StoredScores(scores, flops, extras)

    def stored_shards(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self.folder.glob("shard-*.npz"))

    # -- whole results (selectors that score the pool in one piece) ------------------------------
    def save_result(self, scores: np.ndarray, flops: float, extras: Mapping[str, Any]) -> bool:
        """Store a whole-pool result as shard 0 plus JSON extras; ``False`` (and a warning) when
        an extra cannot be stored, so the caller can go on without the cache."""
        arrays = {name: value for name, value in extras.items() if isinstance(value, np.ndarray)}
        others = {name: value for name, value in extras.items() if name not in arrays}
        try:
            json.dumps(others, default=_json_default)
        except (TypeError, ValueError) as err:
            logger.warning("Not caching these scores: an extra cannot be stored as JSON (%s).", err)
            return False
        rows = range(0, len(scores))
        self.begin(len(scores), [rows])
        self.save_shard(0, rows, scores, flops, arrays)
        self.finish(flops, 0.0, others)
        return True

    def load_result(self) -> StoredScores | None:
        """All stored scores of a complete cache, concatenated in pool order (``None`` if incomplete)."""
        manifest = self.manifest()
        if not (manifest and manifest.get("complete")):
            return None
        shards = [range(start, stop) for start, stop in manifest["shards"]]
        parts = [self.load_shard(index, rows) for index, rows in enumerate(shards)]
        if any(part is None for part in parts):
            logger.warning("Cache %s is marked complete but lacks shards; rescoring the missing ones.", self.folder)
            return None
        scores = np.concatenate([part.scores for part in parts])  # type: ignore[union-attr]
        extras: dict[str, Any] = dict(manifest.get("extras") or {})
        for name in parts[0].extras:  # type: ignore[union-attr]
            extras[name] = np.concatenate([part.extras[name] for part in parts])  # type: ignore[union-attr]
        return StoredScores(scores, float(manifest["flops"]), extras)
