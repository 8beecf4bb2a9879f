"""Row formats: detect which one a dataset is in and bring it to the canonical columns that the
trainer, the selectors and the evaluation read (see :mod:`hf_cads.data.rendering`).

Formats (detected from the columns, or set with ``format:`` and ``columns:``):

- ``text``: one ``text`` string per row, trained on whole.
- ``messages``: a chat (``[{role, content}, ...]``), rendered with the tokenizer's chat template;
  loss on the assistant turns only.
- ``prompt-completion``: ``prompt`` and ``completion`` strings or message lists (as TRL accepts);
  loss on the completion only.
- ``alpaca``: ``instruction`` / ``input`` / ``output``, turned into prompt-completion.
- ``sharegpt``: ``conversations`` of ``{from, value}`` turns (roles ``human``/``gpt``/``system``/
  ``tool``, the format of many Hub SFT sets), turned into ``messages`` with roles
  ``user``/``assistant``/``system``/``tool``.
- ``preference``: ``prompt``/``chosen``/``rejected`` (or ``chosen``/``rejected`` chats that share
  their prompt turns, as TRL's ``maybe_extract_prompt`` reads them). hf_cads selects and finetunes
  with supervised learning, so a preference pair becomes the prompt-completion row ``prompt`` +
  ``chosen`` (the preferred answer is what the model learns); ``rejected`` is dropped, and a log
  line says so. Map other columns with ``columns: {chosen: ..., rejected: ...}``.

A ``source`` column (``columns: {source: your_column}`` names another one) is kept beside the
canonical columns: selections report their composition over it.

Example:
    >>> from datasets import Dataset
    >>> chats = Dataset.from_dict({"conversations": [[{"from": "human", "value": "hi"},
    ...                                               {"from": "gpt", "value": "hello"}]]})
    >>> rows, fmt = standardise(chats, None, None, "pool")
    >>> fmt, rows[0]["messages"][1] == {"role": "assistant", "content": "hello"}
    ('messages', True)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)

FORMATS = ("text", "messages", "prompt-completion", "alpaca", "sharegpt", "preference")
"""Row formats hf_cads reads (see the module docstring); ``format:`` in a source picks one."""
FORMAT_COLUMNS = {
    "text": ("text",),
    "messages": ("messages",),
    "prompt-completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
    "sharegpt": ("conversations",),
    "preference": ("chosen", "rejected"),
}
"""The columns each format needs (``alpaca`` also reads an optional ``input``, ``preference`` an
optional ``prompt``)."""
DETECTION_ORDER = ("messages", "prompt-completion", "preference", "alpaca", "sharegpt", "text")
CHAT_ROLES = ("system", "user", "assistant", "tool")
"""Roles a chat turn may have (``messages`` rows)."""
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "tool": "tool"}
"""ShareGPT speaker -> chat role (the chat roles themselves are accepted too)."""
SOURCE_COLUMN = "source"
"""The pool column selections report their composition over (``columns: {source: ...}`` renames it)."""


def detect_format(columns: list[str], mapping: Mapping[str, str] | None = None) -> str:
    """The first format whose columns (after ``mapping``) the dataset has.

    Example:
        >>> detect_format(["question", "answer"], {"prompt": "question", "completion": "answer"})
        'prompt-completion'
    """
    present = set(columns)
    for fmt in DETECTION_ORDER:
        if all((mapping or {}).get(c, c) in present for c in FORMAT_COLUMNS[fmt]):
            return fmt
    raise ValueError(
        f"No recognisable format in columns {list(columns)}; accepted formats: "
        + "; ".join(f"{fmt} ({'/'.join(FORMAT_COLUMNS[fmt])})" for fmt in FORMATS)
        + ". Set format: and columns: (e.g. columns: {prompt: question, completion: answer})."
    )


def check_messages(messages: Any, role: str, row: int) -> None:
    """A chat must be a list of ``{role, content}`` with known roles and at least one assistant turn.

    Example:
        >>> check_messages([{"role": "user", "content": "hi"}], "pool", 0)
        Traceback (most recent call last):
        ...
        ValueError: Row 0 of the pool dataset has no assistant turn, so there is nothing to train on; ...
    """
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


def sharegpt_to_messages(conversation: Any, role: str = "pool", row: int = 0) -> list[dict[str, str]]:
    """One ShareGPT conversation (``[{from, value}, ...]``) as chat messages.

    Example:
        >>> sharegpt_to_messages([{"from": "system", "value": "Be brief."}, {"from": "human", "value": "hi"},
        ...                       {"from": "gpt", "value": "hello"}])  # doctest: +NORMALIZE_WHITESPACE
        [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'hi'},
         {'role': 'assistant', 'content': 'hello'}]
    """
    if not isinstance(conversation, list) or not all(
        isinstance(turn, Mapping) and "from" in turn and "value" in turn for turn in conversation
    ):
        raise ValueError(
            f"Row {row} of the {role} dataset's 'conversations' is not a list of {{from, value}} turns: "
            f"{conversation!r:.120}."
        )
    messages = []
    for turn in conversation:
        speaker = turn["from"]
        chat_role = SHAREGPT_ROLES.get(speaker, speaker if speaker in CHAT_ROLES else None)
        if chat_role is None:
            raise ValueError(
                f"Row {row} of the {role} dataset has a ShareGPT turn from {speaker!r}; use one of "
                f"{list(SHAREGPT_ROLES)} (rename it in the data, or convert to messages before loading)."
            )
        messages.append({"role": chat_role, "content": str(turn["value"])})
    return messages


def implicit_prompt(chosen: Any, rejected: Any) -> tuple[Any, Any]:
    """``(prompt, chosen answer)`` of a pair without a prompt column: the turns (or the leading text,
    cut at a word boundary) that ``chosen`` and ``rejected`` share are the prompt.

    Example:
        >>> user = {"role": "user", "content": "2+2?"}
        >>> implicit_prompt([user, {"role": "assistant", "content": "4"}],
        ...                 [user, {"role": "assistant", "content": "5"}])
        ([{'role': 'user', 'content': '2+2?'}], [{'role': 'assistant', 'content': '4'}])
        >>> implicit_prompt("Q: 2+2? A: 4", "Q: 2+2? A: 5")
        ('Q: 2+2? A:', ' 4')
    """
    shared, limit = 0, min(len(chosen), len(rejected))
    while shared < limit and chosen[shared] == rejected[shared]:
        shared += 1
    if isinstance(chosen, str):
        cut = chosen.rfind(" ", 0, shared + 1)
        shared = cut if cut > 0 else shared
    return chosen[:shared], chosen[shared:]


def standardise(dataset: Any, fmt: str | None, columns: Mapping[str, str] | None, role: str) -> tuple[Any, str]:
    """The dataset with its format's canonical columns only (``text``; ``messages``; ``prompt`` +
    ``completion``) plus ``source`` when it has one, and the format used.

    Example:
        >>> from datasets import Dataset
        >>> rows = Dataset.from_dict({"instruction": ["Add 1+1."], "output": ["2"], "source": ["math"]})
        >>> rows, fmt = standardise(rows, None, None, "pool")
        >>> fmt, sorted(rows.column_names), rows[0]["prompt"]
        ('prompt-completion', ['completion', 'prompt', 'source'], 'Add 1+1.\\n')
    """
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
    source = mapping.get(SOURCE_COLUMN, SOURCE_COLUMN)
    if source != SOURCE_COLUMN and source not in dataset.column_names:
        raise ValueError(
            f"The {role} dataset has no column {source!r} for columns: {{source: {source}}} "
            f"(columns: {dataset.column_names}); name one of them."
        )
    kept = [source] if source in dataset.column_names else []
    logger.info(
        "%s dataset: %d rows, format %r (%s)",
        role,
        len(dataset),
        fmt,
        "detected from the columns" if detected else "as set",
    )
    column = {c: mapping.get(c, c) for c in (*needed, "input", "prompt")}
    if fmt in _CONVERSIONS:
        convert, fmt = _CONVERSIONS[fmt](dataset, column, role)
        dataset = dataset.map(
            convert,
            with_indices=True,
            remove_columns=[c for c in dataset.column_names if c not in kept],
            desc=f"{role}: -> {fmt}",
        )
        dataset = dataset.select_columns([*FORMAT_COLUMNS[fmt], *kept])
        renames = {}
    else:
        dataset = dataset.select_columns([column[c] for c in needed] + kept)
        renames = {column[c]: c for c in needed if column[c] != c}
    if kept and source != SOURCE_COLUMN:
        renames[source] = SOURCE_COLUMN
    if renames:
        dataset = dataset.rename_columns(renames)
    check_rows(dataset, fmt, role)
    return dataset, fmt


def _alpaca(dataset: Any, column: dict[str, str], role: str) -> tuple[Any, str]:
    has_input = column["input"] in dataset.column_names

    def to_prompt_completion(row: dict[str, Any], _: int) -> dict[str, str]:
        extra = str(row[column["input"]] or "").strip() if has_input else ""
        prompt = str(row[column["instruction"]]).strip() + (f"\n\n{extra}" if extra else "")
        return {"prompt": prompt + "\n", "completion": str(row[column["output"]])}

    return to_prompt_completion, "prompt-completion"


def _sharegpt(dataset: Any, column: dict[str, str], role: str) -> tuple[Any, str]:
    logger.info(
        "%s dataset: ShareGPT conversations (from/value) converted to messages (human -> user, gpt -> assistant)",
        role,
    )

    def to_messages(row: dict[str, Any], index: int) -> dict[str, Any]:
        return {"messages": sharegpt_to_messages(row[column["conversations"]], role, index)}

    return to_messages, "messages"


def _preference(dataset: Any, column: dict[str, str], role: str) -> tuple[Any, str]:
    has_prompt = column["prompt"] in dataset.column_names
    logger.info(
        "%s dataset: preference pairs (%schosen/rejected): selecting and training on %s + chosen; rejected is dropped",
        role,
        "prompt/" if has_prompt else "",
        "prompt" if has_prompt else "the shared prompt turns",
    )

    def to_prompt_completion(row: dict[str, Any], _: int) -> dict[str, Any]:
        chosen, rejected = row[column["chosen"]], row[column["rejected"]]
        prompt, completion = (row[column["prompt"]], chosen) if has_prompt else implicit_prompt(chosen, rejected)
        return {"prompt": prompt, "completion": completion}

    return to_prompt_completion, "prompt-completion"


_CONVERSIONS = {"alpaca": _alpaca, "sharegpt": _sharegpt, "preference": _preference}


def check_rows(dataset: Any, fmt: str, role: str) -> None:
    """Check every row's value types (chats: roles and an assistant turn), reading one column at a time.

    Example:
        >>> from datasets import Dataset
        >>> check_rows(Dataset.from_dict({"text": ["one", "two"]}), "text", "pool")
    """
    for start in range(0, len(dataset), 10_000):
        batch = dataset[start : start + 10_000]
        for name in dataset.column_names:
            for offset, value in enumerate(batch[name]):
                row = start + offset
                if name == SOURCE_COLUMN:
                    if not isinstance(value, str):
                        raise ValueError(
                            f"Column 'source' of the {role} dataset must hold strings (the name of each row's "
                            f"source); row {row} is {type(value).__name__} ({value!r:.60})."
                        )
                elif fmt == "messages":
                    check_messages(value, role, row)
                elif name == "completion" and isinstance(value, list):
                    check_messages(value, role, row)
                elif isinstance(value, list):
                    check_messages(value + [{"role": "assistant", "content": ""}], role, row)
                elif not isinstance(value, str):
                    raise ValueError(
                        f"Column {name!r} of the {role} dataset must hold strings; row {row} is "
                        f"{type(value).__name__} ({value!r:.60})."
                    )


def source_composition(dataset: Any) -> dict[str, int]:
    """Rows per value of the ``source`` column, sorted by name (``{}`` without that column).

    Example:
        >>> from datasets import Dataset
        >>> source_composition(Dataset.from_dict({"text": ["a", "b", "c"], "source": ["web", "code", "web"]}))
        {'code': 1, 'web': 2}
    """
    if dataset is None or SOURCE_COLUMN not in dataset.column_names:
        return {}
    counts: dict[str, int] = {}
    for value in dataset.select_columns([SOURCE_COLUMN])[:][SOURCE_COLUMN]:
        counts[value] = counts.get(value, 0) + 1
    return dict(sorted(counts.items()))
