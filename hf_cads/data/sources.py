"""Your own data: load any ``datasets`` source as a pool, target or eval set, in one of the formats
of :mod:`hf_cads.data.formats`.

A source is a mapping of ``datasets.load_dataset`` arguments (``{path: json, data_files: pool.jsonl,
split: train}``, a Hub id with ``name``/``split``, parquet/csv/arrow files) or a folder written by
``Dataset.save_to_disk``; the shorthand string ``my_pool.jsonl``, ``folder/`` or ``hub_id[:split]``
means the same. Data is read as Arrow (memory-mapped): nothing builds a Python list of all rows.

Example:
    >>> source = parse_source({"path": "json", "data_files": "pool.jsonl", "format": "messages"}, "pool")
    >>> source.describe()
    'json pool.jsonl'
    >>> pool, fmt = load_examples("my_pool.jsonl", role="pool")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .formats import FORMATS, standardise

logger = logging.getLogger(__name__)

FILE_BUILDERS = {
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".arrow": "arrow",
    ".txt": "text",
}
SOURCE_KEYS = ("path", "name", "split", "data_files", "data_dir", "revision", "format", "columns")


@dataclass
class DataSource:
    """Where a dataset comes from and how to read its rows.

    Args:
        path: a ``load_dataset`` builder (``json``, ``parquet``, ``csv``, ``arrow``), a Hub id, or a
            folder (a ``save_to_disk`` folder or a folder of data files).
        name: the Hub dataset's config.
        split: which split (``None``: the only split, else ``train``).
        data_files: file(s) for a builder ``path``.
        data_dir / revision: passed on to ``load_dataset``.
        format: ``text``, ``messages``, ``prompt-completion`` or ``alpaca`` (``None``: detected).
        columns: the dataset's column for a format's column, e.g. ``{"prompt": "question",
            "completion": "answer"}``.
    """

    path: str
    name: str | None = None
    split: str | None = None
    data_files: Any = None
    data_dir: str | None = None
    revision: str | None = None
    format: str | None = None
    columns: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.format is not None and self.format not in FORMATS:
            raise ValueError(f"format must be one of {list(FORMATS)}, got {self.format!r}.")
        if not isinstance(self.columns, Mapping):
            raise ValueError(
                "columns must map a format column to a dataset column, e.g. {prompt: question}; "
                f"got {self.columns!r}."
            )

    def describe(self) -> str:
        """A short human-readable name, for logs and dataset cards."""
        files = (
            self.data_files
            if isinstance(self.data_files, str)
            else (",".join(map(str, self.data_files)) if self.data_files else "")
        )
        parts = [
            self.path + (f"/{self.name}" if self.name else ""),
            files,
            f"split={self.split}" if self.split else "",
        ]
        return " ".join(p for p in parts if p)


def parse_source(value: Any, role: str) -> DataSource:
    """A :class:`DataSource` from a mapping, a JSON object string or a shorthand string
    (``file.jsonl``, ``folder``, ``hub_id[:split]``)."""
    if isinstance(value, DataSource):
        return value
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"The {role} source {value!r} is not a valid mapping: {err}.") from err
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(SOURCE_KEYS))
        if unknown or "path" not in value:
            raise ValueError(
                f"The {role} source {dict(value)!r} has unknown key(s) {unknown} or no 'path'; "
                f"use {list(SOURCE_KEYS)}, "
                f"e.g. {{path: json, data_files: my_{role}.jsonl, split: train}}."
            )
        options = {k: v for k, v in value.items() if v is not None}
        builder = FILE_BUILDERS.get(Path(str(options["path"])).suffix.lower())
        if builder is not None and "data_files" not in options:
            # {path: my.jsonl, ...}: the file shorthand plus the other keys (format, columns, split)
            shorthand = _shorthand(str(options.pop("path")), role)
            options = {"path": shorthand.path, "data_files": shorthand.data_files, "split": "train", **options}
        return DataSource(**options)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"The {role} source must be a file, a folder, a Hub id or a mapping, got {value!r}.")
    return _shorthand(value.strip(), role)


def _shorthand(value: str, role: str) -> DataSource:
    path = Path(value).expanduser()
    builder = FILE_BUILDERS.get(path.suffix.lower())
    if builder is not None:
        if not path.is_file():
            raise FileNotFoundError(
                f"The {role} file {value!r} does not exist; check the path (relative paths start at {os.getcwd()})."
            )
        return DataSource(builder, data_files=str(path), split="train")
    if path.is_dir():
        return DataSource(str(path))
    if value.startswith((".", "/", "~")) or os.sep in value and value.count("/") > 1:
        raise FileNotFoundError(
            f"The {role} folder {value!r} does not exist; pass an existing file, folder or a Hub id."
        )
    repo, _, split = value.partition(":")
    if "/" not in repo:
        raise FileNotFoundError(
            f"The {role} source {value!r} is neither an existing file or folder nor a Hub id (owner/name[:split]); "
            "pass a .jsonl/.json/.parquet/.csv/.arrow file, a dataset folder or a Hub id."
        )
    return DataSource(repo, split=split or None)


def hub_unreachable(err: BaseException) -> bool:
    """Whether a failed ``load_dataset`` of a Hub id failed for want of the Hub (offline mode or no
    network), rather than for what was asked.

    Example:
        >>> hub_unreachable(ConnectionError("Couldn't reach 'x/y' on the Hub (OfflineModeIsEnabled)"))
        True
    """
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    return offline or any(word in str(err).lower() for word in ("offline", "connect", "resolve"))


def load_source(source: DataSource, role: str) -> Any:
    """The source's rows as a memory-mapped ``datasets.Dataset`` (one split)."""
    import datasets

    folder = Path(source.path).expanduser()
    if folder.is_dir() and ((folder / "dataset_info.json").is_file() or (folder / "dataset_dict.json").is_file()):
        loaded = datasets.load_from_disk(str(folder))
    else:
        if source.path in set(FILE_BUILDERS.values()) and source.data_files is not None:
            files = [source.data_files] if isinstance(source.data_files, str) else list(source.data_files)
            missing = [f for f in files if "*" not in str(f) and not Path(f).expanduser().exists()]
            if missing:
                raise FileNotFoundError(
                    f"The {role} data file(s) {missing} do not exist; check data_files "
                    f"(relative paths start at {os.getcwd()})."
                )
        kwargs = {
            k: getattr(source, k)
            for k in ("name", "data_files", "data_dir", "revision")
            if getattr(source, k) is not None
        }
        try:
            loaded = datasets.load_dataset(source.path, **kwargs)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"Cannot load the {role} dataset {source.describe()!r}: {err}") from err
        except Exception as err:  # the Hub client raises several types when it cannot reach the network
            local = source.path in set(FILE_BUILDERS.values()) or Path(source.path).expanduser().exists()
            if local and "corresponds to no data" in str(err):
                raise ValueError(
                    f"The {role} dataset {source.describe()!r} is empty after loading; "
                    f"point {role}: at data with rows."
                ) from err
            if local:
                raise
            if hub_unreachable(err):
                raise ConnectionError(
                    f"Cannot load the {role} dataset {source.path!r} from the Hub while offline "
                    f"({type(err).__name__}); "
                    "download it once with network access (or unset HF_HUB_OFFLINE), or pass a local file or folder."
                ) from err
            raise
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        split = source.split or ("train" if "train" in splits else splits[0] if len(splits) == 1 else None)
        if split not in loaded:
            raise ValueError(
                f"The {role} dataset {source.describe()!r} has no split {split!r}; "
                f"its splits are {splits}: set split: to one of them."
            )
        loaded = loaded[split]
    elif source.split is not None and source.split != "train" and folder.is_dir():
        raise ValueError(
            f"The {role} folder {source.path!r} holds one split only (no {source.split!r}); "
            "drop split: or pass another folder."
        )
    return loaded


def load_examples(value: Any, role: str) -> tuple[Any, str]:
    """Load a source (see :func:`parse_source`) and standardise it: ``(dataset, format)``."""
    source = parse_source(value, role)
    dataset = load_source(source, role)
    if len(dataset) == 0:
        raise ValueError(
            f"The {role} dataset {source.describe()!r} is empty after loading; point {role}: at data with rows."
        )
    return standardise(dataset, source.format, source.columns, role)
