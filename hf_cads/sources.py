"""Your own data: load any ``datasets`` source as a pool, target or eval set and bring it to one of
four formats the trainer, the selectors and the evaluation understand.

A source is a mapping of ``datasets.load_dataset`` arguments (``{path: json, data_files: pool.jsonl,
split: train}``, a Hub id with ``name``/``split``, parquet/csv/arrow files) or a folder written by
``Dataset.save_to_disk``; the shorthand string ``my_pool.jsonl``, ``folder/`` or ``hub_id[:split]``
means the same. Data is read as Arrow (memory-mapped): nothing builds a Python list of all rows.

Formats (detected from the columns, or set with ``format:`` and ``columns:``):

- ``text``: one ``text`` string per row, trained on whole.
- ``messages``: a chat (``[{role, content}, ...]``), rendered with the tokenizer's chat template;
  loss on the assistant turns only.
- ``prompt-completion``: ``prompt`` and ``completion`` strings or message lists (as TRL accepts);
  loss on the completion only.
- ``alpaca``: ``instruction`` / ``input`` / ``output``, turned into prompt-completion.

Example:
    >>> from hf_cads.sources import load_examples  # doctest: +SKIP
    >>> pool = load_examples("my_pool.jsonl", role="pool")  # doctest: +SKIP
    >>> pool.column_names  # e.g. a chat file  # doctest: +SKIP
    ['messages']
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import example_segments

logger = logging.getLogger(__name__)

FORMATS = ("text", "messages", "prompt-completion", "alpaca")
FORMAT_COLUMNS = {
    "text": ("text",),
    "messages": ("messages",),
    "prompt-completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
}
"""The columns each format needs (``alpaca`` also reads an optional ``input``)."""
CHAT_ROLES = ("system", "user", "assistant", "tool")
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
                f"columns must map a format column to a dataset column, e.g. {{prompt: question}}; got {self.columns!r}."
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
                f"The {role} source {dict(value)!r} has unknown key(s) {unknown} or no 'path'; use {list(SOURCE_KEYS)}, "
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
                    f"The {role} data file(s) {missing} do not exist; check data_files (relative paths start at {os.getcwd()})."
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
                    f"The {role} dataset {source.describe()!r} is empty after loading; point {role}: at data with rows."
                ) from err
            if local:
                raise
            offline = (
                os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or "offline" in str(err).lower()
            )
            if offline or "connect" in str(err).lower():
                raise ConnectionError(
                    f"Cannot load the {role} dataset {source.path!r} from the Hub while offline ({type(err).__name__}); "
                    "download it once with network access (or unset HF_HUB_OFFLINE), or pass a local file or folder."
                ) from err
            raise
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        split = source.split or ("train" if "train" in splits else splits[0] if len(splits) == 1 else None)
        if split not in loaded:
            raise ValueError(
                f"The {role} dataset {source.describe()!r} has no split {split!r}; its splits are {splits}: set split: to one of them."
            )
        loaded = loaded[split]
    elif source.split is not None and source.split != "train" and folder.is_dir():
        raise ValueError(
            f"The {role} folder {source.path!r} holds one split only (no {source.split!r}); drop split: or pass another folder."
        )
    return loaded


def detect_format(columns: list[str], mapping: Mapping[str, str] | None = None) -> str:
    """The first format whose columns (after ``mapping``) the dataset has."""
    present = set(columns)
    for fmt in ("messages", "prompt-completion", "alpaca", "text"):
        if all((mapping or {}).get(c, c) in present for c in FORMAT_COLUMNS[fmt]):
            return fmt
    raise ValueError(
        f"No recognisable format in columns {list(columns)}; accepted formats: "
        + "; ".join(f"{fmt} ({'/'.join(FORMAT_COLUMNS[fmt])})" for fmt in FORMATS)
        + ". Set format: and columns: (e.g. columns: {prompt: question, completion: answer})."
    )


def check_messages(messages: Any, role: str, row: int) -> None:
    """A chat must be a list of ``{role, content}`` with known roles and at least one assistant turn."""
    if not isinstance(messages, list) or not all(
        isinstance(m, Mapping) and "role" in m and "content" in m for m in messages
    ):
        raise ValueError(
            f"Row {row} of the {role} dataset is not a list of {{role, content}} messages: {messages!r:.120}."
        )
    for message in messages:
        if message["role"] not in CHAT_ROLES:
            raise ValueError(
                f"Row {row} of the {role} dataset has a message with unknown role {message['role']!r}; "
                f"use one of {list(CHAT_ROLES)} (rename it in the data or map it before loading)."
            )
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError(
            f"Row {row} of the {role} dataset has no assistant turn, so there is nothing to train on; "
            "drop such rows or add the assistant's reply."
        )


def standardise(dataset: Any, fmt: str | None, columns: Mapping[str, str] | None, role: str) -> tuple[Any, str]:
    """The dataset with its format's canonical columns only (``text``; ``messages``; ``prompt`` +
    ``completion``), and the format used."""
    mapping = dict(columns or {})
    detected = fmt is None
    fmt = fmt or detect_format(list(dataset.column_names), mapping)
    needed = FORMAT_COLUMNS[fmt]
    missing = [mapping.get(c, c) for c in needed if mapping.get(c, c) not in dataset.column_names]
    if missing:
        raise ValueError(
            f"The {role} dataset lacks column(s) {missing} for format {fmt!r} (columns: {dataset.column_names}); "
            "map them with columns: {format column: dataset column}."
        )
    logger.info(
        "%s dataset: %d rows, format %r (%s)",
        role,
        len(dataset),
        fmt,
        "detected from the columns" if detected else "as set",
    )
    if fmt == "alpaca":
        instruction, context, output = (
            mapping.get("instruction", "instruction"),
            mapping.get("input", "input"),
            mapping.get("output", "output"),
        )
        has_input = context in dataset.column_names

        def to_prompt_completion(row: dict[str, Any]) -> dict[str, str]:
            extra = str(row[context] or "").strip() if has_input else ""
            prompt = str(row[instruction]).strip() + (f"\n\n{extra}" if extra else "")
            return {"prompt": prompt + "\n", "completion": str(row[output])}

        keep = dataset.map(
            to_prompt_completion, remove_columns=dataset.column_names, desc=f"alpaca -> prompt-completion ({role})"
        )
        return keep, "prompt-completion"
    renamed = {mapping.get(c, c): c for c in needed}
    dataset = dataset.select_columns(list(renamed))
    if any(source != canonical for source, canonical in renamed.items()):
        dataset = dataset.rename_columns({s: c for s, c in renamed.items() if s != c})
    check_rows(dataset, fmt, role)
    return dataset, fmt


def check_rows(dataset: Any, fmt: str, role: str) -> None:
    """Check every row's value types (chats: roles and an assistant turn), reading one column at a time."""
    for start in range(0, len(dataset), 10_000):
        batch = dataset[start : start + 10_000]
        for name in dataset.column_names:
            for offset, value in enumerate(batch[name]):
                row = start + offset
                if fmt == "messages":
                    check_messages(value, role, row)
                elif name == "completion" and isinstance(value, list):
                    check_messages(value, role, row)
                elif isinstance(value, list):
                    check_messages(value + [{"role": "assistant", "content": ""}], role, row)
                elif not isinstance(value, str):
                    raise ValueError(
                        f"Column {name!r} of the {role} dataset must hold strings; row {row} is {type(value).__name__} ({value!r:.60})."
                    )


def load_examples(value: Any, role: str) -> tuple[Any, str]:
    """Load a source (see :func:`parse_source`) and standardise it: ``(dataset, format)``."""
    source = parse_source(value, role)
    dataset = load_source(source, role)
    if len(dataset) == 0:
        raise ValueError(
            f"The {role} dataset {source.describe()!r} is empty after loading; point {role}: at data with rows."
        )
    return standardise(dataset, source.format, source.columns, role)


def prompt_answer_pairs(dataset: Any, tokenizer: Any = None) -> tuple[list[str], list[str]] | None:
    """``(prompts, answers)`` of a prompt-completion or chat dataset for exact match: the text before
    the last completion piece and that piece (``None`` for other datasets)."""
    if not ({"prompt", "completion"} <= set(dataset.column_names) or dataset.column_names == ["messages"]):
        return None
    prompts, answers = [], []
    for row in dataset:
        segments = example_segments(row, tokenizer)
        last = max(i for i, (_, flag) in enumerate(segments) if flag)
        answer = segments[last][0]
        if "messages" in row:
            answer = [m for m in row["messages"] if m["role"] == "assistant"][-1]["content"]
        elif isinstance(row["completion"], list):
            answer = row["completion"][-1]["content"]
        prompts.append("".join(text for text, _ in segments[:last]))
        answers.append(str(answer).strip())
    return prompts, answers


# -- presets and a run's three sets -----------------------------------------------------------
POOL_PRESET = "shared-mix"


@dataclass
class TaskData:
    """A run's data: ``validation`` (what targeted selectors aim at), ``test`` (evaluated on,
    already cut to ``eval_examples``), ``pool`` (selected from), and what each one is."""

    validation: Any
    test: Any
    pool: Any
    descriptions: dict[str, str] = field(default_factory=dict)
    formats: dict[str, str] = field(default_factory=dict)
    presets: bool = True


def target_preset(target: str, data_dir: Any = None) -> str | None:
    """The built-in target a recipe value names (``gsm8k``, a BBH task or ``bbh/<task>``), else ``None``."""
    from .data import bbh_tasks

    if not isinstance(target, str) or target.strip().startswith("{"):
        return None
    name = target[4:] if target.startswith("bbh/") else target
    if name == "gsm8k":
        return name
    if "/" in name or "." in name or ":" in name or Path(name).exists():
        return None
    try:
        tasks = bbh_tasks(data_dir)
    except FileNotFoundError:
        return None
    if name not in tasks:
        raise ValueError(
            f"target {target!r} is not a file, folder or Hub id, nor a built-in target (gsm8k or a BBH task: {tasks[:5]}...); "
            "pass your own data (target: my_target.jsonl) or a built-in name."
        )
    return name


def load_preset_target(preset: str, data_dir: Any = None) -> tuple[Any, Any]:
    """``(validation, test)`` of a built-in target: GSM8K's first 8 test rows and the rest, or a BBH
    task's chain-of-thought exemplars and its examples."""
    from .data import load_bbh_target, load_gsm8k

    if preset == "gsm8k":
        full = load_gsm8k("test", data_dir)
        return full.select(range(8)), full.select(range(8, len(full)))
    return load_bbh_target(preset, data_dir)


def load_task_data(
    target: Any,
    pool: Any = None,
    eval_set: Any = None,
    *,
    data_dir: Any = None,
    pool_sources: Any = None,
    max_per_source: int | None = None,
    max_pool_chars: int | None = None,
    eval_examples: int = 32,
    seed: int = 0,
) -> TaskData:
    """Load a run's target, eval and pool from presets or your own sources.

    ``target`` / ``pool`` / ``eval_set`` are presets (``gsm8k``, a BBH task, ``shared-mix`` or
    ``None`` for the pool) or sources (see :func:`parse_source`). Without ``eval_set`` a user
    target is split (seeded): ``min(eval_examples, half its rows)`` rows to test on, the rest to
    select for.
    """
    return load_targets_data(
        [target],
        pool,
        eval_set,
        data_dir=data_dir,
        pool_sources=pool_sources,
        max_per_source=max_per_source,
        max_pool_chars=max_pool_chars,
        eval_examples=eval_examples,
        seed=seed,
    )[0]


def load_targets_data(
    targets: Sequence[Any],
    pool: Any = None,
    eval_set: Any = None,
    *,
    data_dir: Any = None,
    pool_sources: Any = None,
    max_per_source: int | None = None,
    max_pool_chars: int | None = None,
    eval_examples: int = 32,
    seed: int = 0,
) -> list[TaskData]:
    """:func:`load_task_data` for several targets that share one pool (``hf-cads select --targets``):
    one :class:`TaskData` per target, in order, all holding the same pool object. The shared-data
    pool leaves out the BBH task of every built-in target.

    Example:
        >>> dyck, boolean = load_targets_data(["dyck_languages", "boolean_expressions"], max_per_source=50)  # doctest: +SKIP
        >>> dyck.pool is boolean.pool  # doctest: +SKIP
        True
    """
    if not targets:
        raise ValueError("Name at least one target (a file, a folder, a Hub id or a built-in target such as gsm8k).")
    loaded = [_load_target(target, eval_set, data_dir, eval_examples, seed) for target in targets]
    presets = [preset for preset, *_ in loaded]
    if pool is None or pool == POOL_PRESET:
        from .data import POOL_SOURCES, build_multisource_pool

        excluded = [preset for preset in presets if preset not in (None, "gsm8k")]
        pool_data = build_multisource_pool(
            excluded,
            data_dir,
            sources=pool_sources or POOL_SOURCES,
            max_per_source=max_per_source,
            max_chars=max_pool_chars,
            seed=seed,
        )
        pool_description = (
            f"hf_cads shared pool [{', '.join(pool_sources or POOL_SOURCES)}] "
            f"(max_per_source={max_per_source}, max_pool_chars={max_pool_chars}, seed={seed})"
        )
        pool_format = None
        if "gsm8k" in presets and "gsm8k" in (pool_sources or POOL_SOURCES):
            logger.warning(
                "GSM8K train is in the pool for a GSM8K target: it is in-distribution data, not leakage of test rows."
            )
    else:
        pool_data, pool_format = load_examples(pool, "pool")
        pool_description = parse_source(pool, "pool").describe()
    tasks = []
    for preset, validation, test, descriptions, formats in loaded:
        formats = dict(formats, **({"pool": pool_format} if pool_format else {}))
        test = test.select(range(min(eval_examples, len(test))))
        tasks.append(
            TaskData(
                validation,
                test,
                pool_data,
                {**descriptions, "pool": pool_description},
                formats,
                presets=preset is not None and not formats,
            )
        )
    return tasks


def _load_target(
    target: Any, eval_set: Any, data_dir: Any, eval_examples: int, seed: int
) -> tuple[str | None, Any, Any, dict[str, str], dict[str, str]]:
    """One target's ``(preset, validation, test, descriptions, formats)``; test not yet cut to ``eval_examples``."""
    descriptions: dict[str, str] = {}
    formats: dict[str, str] = {}
    preset = target_preset(target, data_dir)
    test = None
    if preset is not None:
        validation, test = load_preset_target(preset, data_dir)
        descriptions["target"] = (
            "gsm8k validation set"
            if preset == "gsm8k"
            else f"BBH {preset} validation set (chain-of-thought exemplars)"
        )
    else:
        validation, formats["target"] = load_examples(target, "target")
        descriptions["target"] = parse_source(target, "target").describe()
        if eval_set is None:
            if len(validation) < 2:
                raise ValueError(
                    f"The target has {len(validation)} row; give it at least 2 rows (or pass eval: for the test rows)."
                )
            size = max(1, min(eval_examples, len(validation) // 2))
            split = validation.train_test_split(test_size=size, seed=seed)
            validation, test = split["train"], split["test"]
            logger.info(
                "No eval set: testing on %d seeded target rows, selecting for the other %d.",
                len(test),
                len(validation),
            )
    if eval_set is not None:
        test, formats["eval"] = load_examples(eval_set, "eval")
        descriptions["eval"] = parse_source(eval_set, "eval").describe()
    return preset, validation, test, descriptions, formats


__all__ = [
    "CHAT_ROLES",
    "DataSource",
    "FORMATS",
    "check_messages",
    "detect_format",
    "example_segments",
    "load_examples",
    "load_source",
    "load_targets_data",
    "load_task_data",
    "parse_source",
    "prompt_answer_pairs",
    "standardise",
    "target_preset",
    "TaskData",
]
