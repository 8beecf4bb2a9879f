"""Text extraction and the offline multi-source pool / BBH targets built from ``shared/data``.

Example:
    >>> from hf_cads.data import build_multisource_pool, load_bbh_target  # doctest: +SKIP
    >>> pool = build_multisource_pool(target_task="boolean_expressions", max_per_source=200)  # doctest: +SKIP
    >>> validation, test = load_bbh_target("boolean_expressions")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

DATA_DIR_ENV = "HF_CADS_DATA_DIR"
POOL_SOURCES = ("gsm8k", "code_alpaca", "alpaca_seed", "bbh")


# -- text --------------------------------------------------------------------------------------
def column_values(dataset: Any, column: str) -> list[Any]:
    """All values of ``column`` as a list, read in one Arrow query (iterating ``dataset[column]``
    fetches row by row, which dominates scoring time for cheap selectors)."""
    return dataset.select_columns([column])[:][column] if len(dataset) else []


def get_texts(dataset: Any, column: str | None = None, tokenizer: Any = None, role: str = "pool") -> list[str]:
    """The text of every row: from ``column``, else ``text``, else chat ``messages``, else
    ``prompt`` + ``completion`` (see :mod:`hf_cads.sources`).

    Chat messages are rendered with ``tokenizer.apply_chat_template`` when the tokenizer has a
    template, and as ``role: content`` lines otherwise.
    """
    columns = list(dataset.column_names)
    if (
        column is None
        and "text" not in columns
        and "messages" not in columns
        and {"prompt", "completion"} <= set(columns)
    ):
        # Prompt-completion rows: prompt and completion as the model reads them in training.
        return ["".join(text for text, _ in example_segments(row, tokenizer)) for row in dataset]
    if column == "prompt" and "prompt" not in columns and "messages" in columns:
        # The prompt of a chat: everything before its first assistant turn.
        return [
            next(text for text, completion in example_segments(row, tokenizer) if not completion) for row in dataset
        ]
    if column is None:
        if "text" in columns:
            column = "text"
        elif "messages" in columns:
            column = "messages"
        else:
            raise ValueError(
                f"The {role} dataset has no 'text' or 'messages' column, nor 'prompt'/'completion' (columns: {columns}); "
                "pass text_column= naming the column that holds the text."
            )
    if column not in columns:
        raise ValueError(
            f"Column {column!r} is not in the {role} dataset (columns: {columns}); set text_column to one of them."
        )
    values = column_values(dataset, column)
    if column == "messages" or (values and isinstance(values[0], list)):
        return [render_messages(m, tokenizer, role) for m in values]
    texts: list[str] = []
    for row, value in enumerate(values):
        if not isinstance(value, str):
            raise TypeError(
                f"Column {column!r} of the {role} dataset must hold strings; row {row} is "
                f"{type(value).__name__} ({value!r:.60}). Pick a text column or convert it first."
            )
        texts.append(value)
    return texts


def render_messages(messages: Any, tokenizer: Any = None, role: str = "pool") -> str:
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "content" in m for m in messages):
        raise TypeError(
            f"A 'messages' value in the {role} dataset must be a list of {{'role', 'content'}} dicts, got {messages!r:.80}."
        )
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return "\n".join(f"{m.get('role', 'user')}: {m['content']}" for m in messages)


# -- prompt / completion pieces ---------------------------------------------------------
def example_segments(row: Mapping[str, Any], tokenizer: Any = None) -> list[tuple[str, bool]]:
    """The row's text as ``(piece, is_completion)`` pieces: assistant turns / the completion are
    ``True``. Joined, they are the text the model reads (and that selectors and evaluation see)."""
    if "prompt" in row and "completion" in row:
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(prompt, str) and isinstance(completion, str):
            return [(prompt, False), (completion, True)]
        prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        completion = (
            [{"role": "assistant", "content": completion}] if isinstance(completion, str) else list(completion)
        )
        return _chat_segments(prompt + completion, tokenizer, first_completion=len(prompt))
    if "messages" in row:
        return _chat_segments(list(row["messages"]), tokenizer)
    raise ValueError(
        f"A row needs prompt/completion or messages to be split into prompt and completion; it has {sorted(row)}."
    )


def _render(messages: list[dict[str, Any]], tokenizer: Any, generation_prompt: bool = False) -> str:
    if not messages:
        return ""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    text = render_messages(messages) + "\n"
    return text + "assistant: " if generation_prompt else text


def _chat_segments(
    messages: list[dict[str, Any]], tokenizer: Any, first_completion: int = 0
) -> list[tuple[str, bool]]:
    templated = tokenizer is not None and getattr(tokenizer, "chat_template", None)
    segments: list[tuple[str, bool]] = []
    done = ""
    for index, message in enumerate(messages):
        if message.get("role") != "assistant" or index < first_completion:
            continue
        prompt = _render(messages[:index], tokenizer, generation_prompt=True)
        full = _render(messages[: index + 1], tokenizer)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise ValueError(
                "The tokenizer's chat template does not render a conversation as the prefix of its continuation, so "
                "assistant turns cannot be located; set train_on_prompt: true to train on the whole text."
            )
        if not templated:
            full = prompt + f"{message['content']}\n"
        segments += [(prompt[len(done) :], False), (full[len(prompt) :], True)]
        done = full
    rest = _render(messages, tokenizer)[len(done) :]
    if rest:
        segments.append((rest, False))
    return [(text, flag) for text, flag in segments if text]


# -- shared data -------------------------------------------------------------------------------
def default_data_dir() -> Path:
    """``$HF_CADS_DATA_DIR``, else the ``shared/data`` folder beside the project checkout."""
    env = os.environ.get(DATA_DIR_ENV)
    candidates = [Path(env)] if env else []
    candidates += [Path.cwd().parent / "shared" / "data", Path(__file__).resolve().parents[2] / "shared" / "data"]
    candidates += [Path.cwd() / "shared" / "data"]
    for path in candidates:
        if (path / "bbh").is_dir():
            return path
    raise FileNotFoundError(
        "Cannot find the shared data folder (looked in "
        + ", ".join(str(p) for p in candidates)
        + f"). Set {DATA_DIR_ENV} to the folder that holds bbh/, gsm8k/, code_alpaca/ and alpaca_seed/."
    )


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    if data_dir is None:
        return default_data_dir()
    path = Path(data_dir)
    if not (path / "bbh").is_dir():
        raise FileNotFoundError(
            f"Data folder {str(path)!r} does not exist or has no bbh/ subfolder; point data_dir (or "
            f"${DATA_DIR_ENV}) at the folder with bbh/, gsm8k/, code_alpaca/ and alpaca_seed/."
        )
    return path


def bbh_tasks(data_dir: str | os.PathLike | None = None) -> list[str]:
    root = resolve_data_dir(data_dir)
    return sorted(p.stem for p in (root / "bbh").glob("*.json"))


def _check_task(task: str, root: Path) -> None:
    tasks = sorted(p.stem for p in (root / "bbh").glob("*.json"))
    if task not in tasks:
        raise ValueError(f"Unknown BBH task {task!r}; available tasks: {tasks}.")


def load_bbh_examples(task: str, data_dir: str | os.PathLike | None = None) -> Any:
    """The BBH task's examples as a Dataset with ``input``, ``target``, ``text`` and ``task``."""
    from datasets import load_dataset

    root = resolve_data_dir(data_dir)
    _check_task(task, root)
    ds = load_dataset("json", data_files=str(root / "bbh" / f"{task}.json"), field="examples", split="train")
    return ds.map(
        lambda row: {"text": format_qa(row["input"], row["target"]), "task": task},
        desc=f"formatting bbh/{task}",
    )


def load_bbh_cot_prompts(task: str, data_dir: str | os.PathLike | None = None) -> Any:
    """The 3 chain-of-thought exemplars of a BBH task (its usual validation set) as a Dataset."""
    from datasets import Dataset

    root = resolve_data_dir(data_dir)
    _check_task(task, root)
    raw = (root / "bbh" / "cot-prompts" / f"{task}.txt").read_text(encoding="utf-8")
    body = raw.split("-----", 1)[-1].strip()
    blocks = [b.strip() for b in re.split(r"\n\s*\n(?=Q:)", body) if b.strip().startswith("Q:")]
    rows = []
    for block in blocks:
        question, _, answer = block.partition("\nA:")
        rows.append(
            {
                "input": question[2:].strip(),
                "target": answer.strip(),
                "text": format_qa(question[2:].strip(), answer.strip()),
                "task": task,
            }
        )
    if not rows:
        raise ValueError(f"No 'Q:/A:' exemplars found in {root / 'bbh' / 'cot-prompts' / (task + '.txt')}.")
    return Dataset.from_list(rows)


def load_bbh_target(task: str, data_dir: str | os.PathLike | None = None) -> tuple[Any, Any]:
    """``(validation, test)`` for a BBH task: its cot-prompt exemplars and its examples."""
    return load_bbh_cot_prompts(task, data_dir), load_bbh_examples(task, data_dir)


def load_gsm8k(split: str = "train", data_dir: str | os.PathLike | None = None) -> Any:
    from datasets import load_dataset

    if split not in ("train", "test"):
        raise ValueError(f"GSM8K split must be 'train' or 'test', got {split!r}.")
    root = resolve_data_dir(data_dir)
    ds = load_dataset("json", data_files=str(root / "gsm8k" / f"{split}.jsonl"), split="train")
    return ds.map(
        lambda row: {"text": format_qa(row["question"], row["answer"]), "task": "gsm8k"}, desc="formatting gsm8k"
    )


def format_qa(question: str, answer: str) -> str:
    return f"Q: {question.strip()}\nA: {answer.strip()}"


def build_multisource_pool(
    target_task: str | Sequence[str] | None = None,
    data_dir: str | os.PathLike | None = None,
    sources: Sequence[str] = POOL_SOURCES,
    max_per_source: int | None = None,
    max_chars: int | None = 2000,
    seed: int = 0,
) -> Any:
    """The multi-source training pool: GSM8K train, Code Alpaca, Alpaca seeds and the BBH tasks
    other than ``target_task`` (one task or several: every target of a multi-target selection),
    with ``text``, ``messages`` and ``source`` columns.

    ``max_per_source`` subsamples each source (seeded) to keep CPU runs short; ``max_chars`` drops
    rows whose text is longer.
    """
    from datasets import Dataset, concatenate_datasets, load_dataset

    unknown = sorted(set(sources) - set(POOL_SOURCES))
    if unknown or not sources:
        raise ValueError(f"Unknown pool source(s) {unknown or sources}; choose from {list(POOL_SOURCES)}.")
    root = resolve_data_dir(data_dir)
    excluded = [target_task] if isinstance(target_task, str) else list(target_task or [])
    for task in excluded:
        _check_task(task, root)
    parts = []
    for source in sources:
        rows: list[dict[str, Any]] = []
        if source == "gsm8k":
            for row in load_dataset("json", data_files=str(root / "gsm8k" / "train.jsonl"), split="train"):
                rows.append({"prompt": row["question"], "response": row["answer"], "subtask": "gsm8k"})
        elif source == "code_alpaca":
            files = sorted(str(p) for p in (root / "code_alpaca").glob("*.json"))
            for path in files:
                for row in load_dataset("json", data_files=path, split="train"):
                    prompt = (
                        row["instruction"]
                        if not (row.get("input") or "").strip()
                        else f"{row['instruction']}\n\n{row['input']}"
                    )
                    rows.append({"prompt": prompt, "response": row["output"], "subtask": "code_alpaca"})
        elif source == "alpaca_seed":
            for row in load_dataset("json", data_files=str(root / "alpaca_seed" / "seed_tasks.jsonl"), split="train"):
                for instance in row["instances"]:
                    context = instance.get("input") or ""
                    prompt = row["instruction"] if not context.strip() else f"{row['instruction']}\n\n{context}"
                    rows.append({"prompt": prompt, "response": instance["output"], "subtask": row["name"]})
        elif source == "bbh":
            for task in bbh_tasks(root):
                if task in excluded:
                    continue
                for row in load_bbh_examples(task, root):
                    rows.append({"prompt": row["input"], "response": row["target"], "subtask": task})
        ds = Dataset.from_list(rows)
        if max_per_source is not None and len(ds) > max_per_source:
            ds = ds.shuffle(seed=seed).select(range(max_per_source))
        parts.append(ds.add_column("source", [source] * len(ds)))
    pool = concatenate_datasets(parts)
    pool = pool.map(
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
