"""Rows to text: the text a model reads for a row, split into prompt and completion pieces.

The bottom of the data package: it reads canonical rows (``text``; ``messages``; ``prompt`` +
``completion``) and imports nothing else from :mod:`hf_cads.data`.

Example:
    >>> from datasets import Dataset
    >>> rows = Dataset.from_list([{"messages": [{"role": "user", "content": "2+2?"},
    ...                                          {"role": "assistant", "content": "4"}]}])
    >>> get_texts(rows)
    ['user: 2+2?\\nassistant: 4']
    >>> example_segments(rows[0])
    [('user: 2+2?\\nassistant: ', False), ('4\\n', True)]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def column_values(dataset: Any, column: str) -> list[Any]:
    """All values of ``column`` as a list, read in one Arrow query (iterating ``dataset[column]``
    fetches row by row, which dominates scoring time for cheap selectors).

    Example:
        >>> from datasets import Dataset
        >>> column_values(Dataset.from_dict({"text": ["a", "b"]}), "text")
        ['a', 'b']
    """
    return dataset.select_columns([column])[:][column] if len(dataset) else []


def get_texts(dataset: Any, column: str | None = None, tokenizer: Any = None, role: str = "pool") -> list[str]:
    """The text of every row: from ``column``, else ``text``, else chat ``messages``, else
    ``prompt`` + ``completion`` (see :mod:`hf_cads.data.formats`).

    Chat messages are rendered with ``tokenizer.apply_chat_template`` when the tokenizer has a
    template, and as ``role: content`` lines otherwise.

    Example:
        >>> from datasets import Dataset
        >>> get_texts(Dataset.from_dict({"prompt": ["Q: 1+1?\\n"], "completion": ["2"]}))
        ['Q: 1+1?\\n2']
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
                f"The {role} dataset has no 'text' or 'messages' column, nor 'prompt'/'completion' "
                f"(columns: {columns}); pass text_column= naming the column that holds the text."
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
    """One chat as text: the tokenizer's chat template, else ``role: content`` lines.

    Example:
        >>> render_messages([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
        'user: hi\\nassistant: hello'
    """
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "content" in m for m in messages):
        raise TypeError(
            f"A 'messages' value in the {role} dataset must be a list of {{'role', 'content'}} dicts, "
            f"got {messages!r:.80}."
        )
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return "\n".join(f"{m.get('role', 'user')}: {m['content']}" for m in messages)


def format_qa(question: str, answer: str) -> str:
    """The ``Q: ... / A: ...`` text of the built-in targets and the shared pool.

    Example:
        >>> format_qa("What is 2+2? ", " 4")
        'Q: What is 2+2?\\nA: 4'
    """
    return f"Q: {question.strip()}\nA: {answer.strip()}"


def example_segments(row: Mapping[str, Any], tokenizer: Any = None) -> list[tuple[str, bool]]:
    """The row's text as ``(piece, is_completion)`` pieces: assistant turns / the completion are
    ``True``. Joined, they are the text the model reads (and that selectors and evaluation see).

    Example:
        >>> example_segments({"prompt": "Q: 1+1?\\n", "completion": "2"})
        [('Q: 1+1?\\n', False), ('2', True)]
    """
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


def prompt_answer_pairs(dataset: Any, tokenizer: Any = None) -> tuple[list[str], list[str]] | None:
    """``(prompts, answers)`` of a prompt-completion or chat dataset for exact match: the text before
    the last completion piece and that piece (``None`` for other datasets).

    Example:
        >>> from datasets import Dataset
        >>> prompt_answer_pairs(Dataset.from_dict({"prompt": ["Q: 1+1?\\nA: "], "completion": ["2"]}))
        (['Q: 1+1?\\nA: '], ['2'])
    """
    chat = set(dataset.column_names) - {"source"} == {"messages"}  # a user's chat set, not a preset's text + chat
    if not ({"prompt", "completion"} <= set(dataset.column_names) or chat):
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
