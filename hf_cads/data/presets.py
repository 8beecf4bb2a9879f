"""Built-in data: the BBH and GSM8K targets and the ``shared-mix`` multi-source pool.

Every preset comes from a public Hub dataset (:data:`HUB_DATASETS`, pinned to a revision) and is
read with ``datasets.load_dataset``. When ``HF_CADS_DATA_DIR`` is set, the data is read from that
local folder instead (``bbh/``, ``bbh/cot-prompts/``, ``gsm8k/``, ``code_alpaca/``,
``alpaca_seed/``, the layout of the original releases): that is what the tests, CI and offline
demos use. The rows are the same except for Code Alpaca, whose local copy holds the 2k and 4.5k-row
releases where the Hub holds the 20k one. Loading the many small preset files is quiet (no per-file
progress bars) unless the ``hf_cads`` logger is at DEBUG (``hf-cads --verbose``).

Example:
    >>> HUB_DATASETS["gsm8k"].repo_id
    'openai/gsm8k'
    >>> target_preset("bbh/boolean_expressions"), target_preset("my_target.jsonl")
    ('boolean_expressions', None)
    >>> validation, test = load_bbh_target("boolean_expressions")  # doctest: +SKIP
    >>> pool = build_multisource_pool(target_task="boolean_expressions", max_per_source=200)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._quiet import quiet_loading
from .rendering import column_values, format_qa
from .sources import hub_unreachable

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "HF_CADS_DATA_DIR"
"""Environment variable naming a local copy of the preset data (then nothing is loaded from the Hub)."""
POOL_PRESET = "shared-mix"
"""The name of the built-in multi-source pool (``pool: shared-mix`` in a recipe)."""
POOL_SOURCES = ("gsm8k", "code_alpaca", "alpaca_seed", "bbh")
"""The sources of the ``shared-mix`` pool (the ``source`` column's values)."""
BBH_TASKS = (
    "boolean_expressions",
    "causal_judgement",
    "date_understanding",
    "disambiguation_qa",
    "dyck_languages",
    "formal_fallacies",
    "geometric_shapes",
    "hyperbaton",
    "logical_deduction_five_objects",
    "logical_deduction_seven_objects",
    "logical_deduction_three_objects",
    "movie_recommendation",
    "multistep_arithmetic_two",
    "navigate",
    "object_counting",
    "penguins_in_a_table",
    "reasoning_about_colored_objects",
    "ruin_names",
    "salient_translation_error_detection",
    "snarks",
    "sports_understanding",
    "temporal_sequences",
    "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects",
    "tracking_shuffled_objects_three_objects",
    "web_of_lies",
    "word_sorting",
)
"""The 27 BBH tasks on the Hub; a local ``bbh/`` folder offers the tasks it has files for."""


@dataclass(frozen=True)
class HubDataset:
    """Where a preset's rows come from: a Hub dataset, and the folder of ``HF_CADS_DATA_DIR`` that
    holds the same rows. ``{task}`` / ``{split}`` in ``name``, ``split`` and ``data_files`` are
    filled in per call."""

    repo_id: str
    revision: str
    split: str
    folder: str
    name: str | None = None
    data_files: str | None = None

    def describe(self, **fill: str) -> str:
        """The Hub id with its config, for messages and dataset cards.

        Example:
            >>> HUB_DATASETS["bbh"].describe(task="navigate"), HUB_DATASETS["bbh"].describe()
            ('lukaemon/bbh (config navigate)', 'lukaemon/bbh (config <task>)')
        """
        config = f" (config {self.name.format_map(_Placeholders(fill))})" if self.name else ""
        return f"{self.repo_id}{config}"


class _Placeholders(dict):
    def __missing__(self, key: str) -> str:
        return f"<{key}>"


HUB_DATASETS = {
    "bbh": HubDataset("lukaemon/bbh", "6bbf1afb2f52dfb244dd25b61576e1f8c8be7d52", "test", "bbh", name="{task}"),
    "bbh_cot_prompts": HubDataset(
        "openeval/BIG-Bench-Hard-cot-prompts",
        "017ae05bb9f7b1f50df8e4d1cb7198d04e43c4db",
        "train",
        "bbh/cot-prompts",
        data_files="{task}.txt",
    ),
    "gsm8k": HubDataset("openai/gsm8k", "e53f048856ff4f594e959d75785d2c2d37b678ee", "{split}", "gsm8k", name="main"),
    "code_alpaca": HubDataset(
        "sahil2801/CodeAlpaca-20k", "469fd122c8e99d31d9fcd75b2fd01f6bd7eb6846", "train", "code_alpaca"
    ),
    "alpaca_seed": HubDataset(
        "HuggingFaceH4/self-instruct-seed", "853eb0af253a307ead4db0a80e03d86d3ec436e2", "train", "alpaca_seed"
    ),
}
"""The one table of the presets' Hub datasets: id, config, split and pinned revision (BBH examples
and chain-of-thought exemplars, GSM8K, Code Alpaca, the self-instruct seed tasks)."""


# -- where the data is -------------------------------------------------------------------------
def local_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The local preset folder: ``data_dir``, else ``$HF_CADS_DATA_DIR``, else ``None`` (the Hub).

    Example:
        >>> local_data_dir("../shared/data")
        PosixPath('../shared/data')
    """
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    return None if chosen is None else Path(chosen).expanduser()


def _local_folder(root: Path, preset: str, spec: HubDataset) -> Path:
    folder = root / spec.folder
    if not folder.is_dir():
        raise FileNotFoundError(
            f"The preset {preset!r} is built in, but its data folder {str(folder)!r} does not exist: point "
            f"{DATA_DIR_ENV} (or data_dir) at the folder that holds {spec.folder}/, or unset it to load "
            f"{spec.repo_id} from the Hub."
        )
    return folder


def _load_hub(preset: str, spec: HubDataset, **fill: str) -> Any:
    """One split of a preset's Hub dataset; offline (and not cached) it is one line naming the fix."""
    import datasets

    options = {"revision": spec.revision, "split": spec.split.format(**fill)}
    if spec.name:
        options["name"] = spec.name.format(**fill)
    if spec.data_files:
        options["data_files"] = spec.data_files.format(**fill)
        options["sample_by"] = "document"  # one exemplar file is one row, parsed below
    try:
        return datasets.load_dataset(spec.repo_id, **options)
    except Exception as err:  # the Hub client raises several types when it cannot reach the network
        if not hub_unreachable(err):
            raise
        raise ConnectionError(
            f"The preset {preset!r} needs the Hub dataset {spec.describe(**fill)}, which is not cached and "
            f"cannot be downloaded offline; connect to the Hub once, or set {DATA_DIR_ENV} to a folder "
            f"holding {spec.folder}/ (e.g. {DATA_DIR_ENV}=../shared/data)."
        ) from err


def _load_json(path: Path, field: str | None = None) -> Any:
    from datasets import load_dataset

    return load_dataset("json", data_files=str(path), split="train", **({"field": field} if field else {}))


# -- BBH ---------------------------------------------------------------------------------------
def bbh_tasks(data_dir: str | os.PathLike | None = None, preset: str = "bbh") -> list[str]:
    """The BBH tasks on offer: the files of the local ``bbh/`` folder, else all of :data:`BBH_TASKS`.

    Example:
        >>> len(bbh_tasks())  # HF_CADS_DATA_DIR=../shared/data holds 24 of the 27 tasks
        24
    """
    root = local_data_dir(data_dir)
    if root is None:
        return list(BBH_TASKS)
    return sorted(p.stem for p in _local_folder(root, preset, HUB_DATASETS["bbh"]).glob("*.json"))


def _check_task(task: str, data_dir: str | os.PathLike | None) -> None:
    tasks = bbh_tasks(data_dir, f"bbh/{task}")
    if task not in tasks:
        raise ValueError(f"Unknown BBH task {task!r}; available tasks: {tasks}.")


def load_bbh_examples(task: str, data_dir: str | os.PathLike | None = None) -> Any:
    """The BBH task's examples as a Dataset with ``input``, ``target``, ``text`` and ``task``.

    Example:
        >>> examples = load_bbh_examples("boolean_expressions")
        >>> examples.column_names, len(examples)
        (['input', 'target', 'text', 'task'], 250)
    """
    _check_task(task, data_dir)
    root = local_data_dir(data_dir)
    with quiet_loading():
        if root is None:
            examples = _load_hub(f"bbh/{task}", HUB_DATASETS["bbh"], task=task).select_columns(["input", "target"])
        else:
            folder = _local_folder(root, f"bbh/{task}", HUB_DATASETS["bbh"])
            examples = _load_json(folder / f"{task}.json", "examples")
        return examples.map(
            lambda row: {"text": format_qa(row["input"], row["target"]), "task": task},
            desc=f"formatting bbh/{task}",
        )


def load_bbh_cot_prompts(task: str, data_dir: str | os.PathLike | None = None) -> Any:
    """The 3 chain-of-thought exemplars of a BBH task (its usual validation set) as a Dataset.

    Example:
        >>> load_bbh_cot_prompts("boolean_expressions")[0]["text"][:33]
        'Q: not ( ( not not True ) ) is\\nA:'
    """
    from datasets import Dataset

    _check_task(task, data_dir)
    root = local_data_dir(data_dir)
    spec = HUB_DATASETS["bbh_cot_prompts"]
    if root is None:
        with quiet_loading():
            raw = "\n".join(_load_hub(f"bbh/{task}", spec, task=task)["text"])
        origin = spec.describe()
    else:
        path = _local_folder(root, f"bbh/{task}", spec) / f"{task}.txt"
        raw, origin = path.read_text(encoding="utf-8"), str(path)
    body = raw.split("-----", 1)[-1].strip()
    blocks = [b.strip() for b in re.split(r"\n\s*\n(?=Q:)", body) if b.strip().startswith("Q:")]
    rows = []
    for block in blocks:
        question, _, answer = block.partition("\nA:")
        question, answer = question[2:].strip(), answer.strip()
        rows.append({"input": question, "target": answer, "text": format_qa(question, answer), "task": task})
    if not rows:
        raise ValueError(f"No 'Q:/A:' exemplars found for BBH task {task!r} in {origin}.")
    return Dataset.from_list(rows)


def load_bbh_target(task: str, data_dir: str | os.PathLike | None = None) -> tuple[Any, Any]:
    """``(validation, test)`` for a BBH task: its cot-prompt exemplars and its examples.

    Example:
        >>> validation, test = load_bbh_target("boolean_expressions")
        >>> len(validation), len(test)
        (3, 250)
    """
    test = load_bbh_examples(task, data_dir)  # first: a missing dataset is named by its main Hub id
    return load_bbh_cot_prompts(task, data_dir), test


# -- GSM8K -------------------------------------------------------------------------------------
def load_gsm8k(split: str = "train", data_dir: str | os.PathLike | None = None) -> Any:
    """GSM8K ``train`` or ``test`` with ``question``, ``answer``, ``text`` and ``task``.

    Example:
        >>> len(load_gsm8k("test"))
        1319
    """
    if split not in ("train", "test"):
        raise ValueError(f"GSM8K split must be 'train' or 'test', got {split!r}.")
    root = local_data_dir(data_dir)
    with quiet_loading():
        if root is None:
            rows = _load_hub("gsm8k", HUB_DATASETS["gsm8k"], split=split)
        else:
            rows = _load_json(_local_folder(root, "gsm8k", HUB_DATASETS["gsm8k"]) / f"{split}.jsonl")
        return rows.map(
            lambda row: {"text": format_qa(row["question"], row["answer"]), "task": "gsm8k"}, desc="formatting gsm8k"
        )


# -- the shared pool ---------------------------------------------------------------------------
def _instruction_prompt(instruction: str, context: str | None) -> str:
    context = context or ""
    return instruction if not context.strip() else f"{instruction}\n\n{context}"


def _source_rows(source: str, root: Path | None, excluded: Sequence[str], data_dir: Any) -> list[dict[str, Any]]:
    """``{prompt, response, subtask}`` rows of one pool source, from the local folder or the Hub."""
    rows: list[dict[str, Any]] = []
    spec = HUB_DATASETS[source]
    if source == "bbh":
        for task in bbh_tasks(data_dir, POOL_PRESET):
            if task not in excluded:
                examples = load_bbh_examples(task, data_dir)
                rows += [
                    {"prompt": q, "response": a, "subtask": task}
                    for q, a in zip(examples["input"], examples["target"])
                ]
        return rows
    if root is None:
        parts = [_load_hub(POOL_PRESET, spec, split="train")]
    else:
        folder = _local_folder(root, POOL_PRESET, spec)
        files = {"gsm8k": ["train.jsonl"], "alpaca_seed": ["seed_tasks.jsonl"]}.get(source)
        parts = (
            [_load_json(folder / name) for name in files]
            if files
            else [_load_json(p) for p in sorted(folder.glob("*.json"))]
        )
    for part in parts:
        for row in part:
            if source == "gsm8k":
                rows.append({"prompt": row["question"], "response": row["answer"], "subtask": "gsm8k"})
            elif source == "code_alpaca":
                prompt = _instruction_prompt(row["instruction"], row.get("input"))
                rows.append({"prompt": prompt, "response": row["output"], "subtask": "code_alpaca"})
            else:  # alpaca_seed: one row per instance of a seed task
                for instance in row["instances"]:
                    prompt = _instruction_prompt(row["instruction"], instance.get("input"))
                    rows.append({"prompt": prompt, "response": instance["output"], "subtask": row["name"]})
    return rows


def build_multisource_pool(
    target_task: str | Sequence[str] | None = None,
    data_dir: str | os.PathLike | None = None,
    sources: Sequence[str] = POOL_SOURCES,
    max_per_source: int | None = None,
    max_chars: int | None = 2000,
    seed: int = 0,
) -> Any:
    """The multi-source training pool: GSM8K train, Code Alpaca, the self-instruct seed tasks and the
    BBH tasks other than ``target_task`` (one task or several: every target of a multi-target
    selection), with ``text``, ``messages`` and ``source`` columns.

    ``max_per_source`` subsamples each source (seeded) to keep CPU runs short; ``max_chars`` drops
    rows whose text is longer.

    Example:
        >>> pool = build_multisource_pool("boolean_expressions", max_per_source=20)
        >>> sorted(set(pool["source"])), "text" in pool.column_names
        (['alpaca_seed', 'bbh', 'code_alpaca', 'gsm8k'], True)
    """
    from datasets import Dataset, concatenate_datasets

    unknown = sorted(set(sources) - set(POOL_SOURCES))
    if unknown or not sources:
        raise ValueError(f"Unknown pool source(s) {unknown or sources}; choose from {list(POOL_SOURCES)}.")
    root = local_data_dir(data_dir)
    excluded = [target_task] if isinstance(target_task, str) else list(target_task or [])
    for task in excluded:
        _check_task(task, data_dir)
    parts = []
    with quiet_loading():
        for source in sources:
            ds = Dataset.from_list(_source_rows(source, root, excluded, data_dir))
            if max_per_source is not None and len(ds) > max_per_source:
                ds = ds.shuffle(seed=seed).select(range(max_per_source))
            parts.append(ds.add_column("source", [source] * len(ds)))
        pool = concatenate_datasets(parts).map(
            lambda row: {
                "text": format_qa(row["prompt"], row["response"]),
                "messages": [
                    {"role": "user", "content": row["prompt"]},
                    {"role": "assistant", "content": row["response"]},
                ],
            },
            desc="formatting pool",
        )
        if max_chars is not None:
            pool = pool.filter(lambda row: len(row["text"]) <= max_chars, desc="dropping overlong rows")
    first_rows: dict[str, int] = {}
    for row, text in enumerate(column_values(pool, "text")):
        first_rows.setdefault(text, row)
    if len(first_rows) < len(pool):
        pool = pool.select(sorted(first_rows.values()))  # exact repeats (a few BBH items) would be trained on twice
    return pool


# -- recipe names ------------------------------------------------------------------------------
def target_preset(target: Any, data_dir: Any = None) -> str | None:
    """The built-in target a recipe value names (``gsm8k``, a BBH task or ``bbh/<task>``), else ``None``.

    Example:
        >>> target_preset("gsm8k"), target_preset("owner/dataset:test")
        ('gsm8k', None)
    """
    if not isinstance(target, str) or target.strip().startswith("{"):
        return None
    name = target[4:] if target.startswith("bbh/") else target
    if name == "gsm8k":
        return name
    if "/" in name or "." in name or ":" in name or Path(name).exists():
        return None
    if name not in BBH_TASKS:
        raise ValueError(
            f"target {target!r} is not a file, folder or Hub id, nor a built-in target (gsm8k or a BBH task: "
            f"{list(BBH_TASKS[:5])}...); pass your own data (target: my_target.jsonl) or a built-in name."
        )
    tasks = bbh_tasks(data_dir, target)
    if name not in tasks:
        raise ValueError(
            f"target {target!r} is a BBH task that the local folder {DATA_DIR_ENV}={local_data_dir(data_dir)} does "
            f"not hold; unset {DATA_DIR_ENV} to load it from the Hub, or pick one it has: {tasks[:5]}..."
        )
    return name


def load_preset_target(preset: str, data_dir: Any = None) -> tuple[Any, Any]:
    """``(validation, test)`` of a built-in target: GSM8K's first 8 test rows and the rest, or a BBH
    task's chain-of-thought exemplars and its examples.

    Example:
        >>> validation, test = load_preset_target("gsm8k")
        >>> len(validation), len(test)
        (8, 1311)
    """
    if preset == "gsm8k":
        full = load_gsm8k("test", data_dir)
        return full.select(range(8)), full.select(range(8, len(full)))
    return load_bbh_target(preset, data_dir)
