"""Turning a text or chat dataset into causal-LM training batches.

Example:
    >>> from datasets import Dataset
    >>> from hf_cads.testing import tiny_tokenizer
    >>> tokenizer = tiny_tokenizer(["2+2=4"], vocab_size=300)
    >>> rows = tokenize_for_causal_lm(Dataset.from_dict({"text": ["2+2=4"]}), tokenizer, max_length=16)
    >>> batch = CausalLMCollator(pad_token_id=tokenizer.pad_token_id)([rows[0]])
    >>> sorted(batch), bool((batch["labels"] == batch["input_ids"]).all())
    (['attention_mask', 'input_ids', 'labels'], True)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..data import example_segments, get_texts

logger = logging.getLogger(__name__)


CAUSAL_LM_COLUMNS = frozenset({"input_ids", "labels"})


@dataclass
class CausalLMCollator:
    """Right-pads ``input_ids`` and builds ``labels`` with padding masked out (-100): the rows'
    own per-token ``labels`` where they have them, else the ``input_ids``.

    Example:
        >>> CausalLMCollator(pad_token_id=0)([{"input_ids": [5, 6, 7]}, {"input_ids": [8]}])["labels"].tolist()
        [[5, 6, 7], [8, -100, -100]]
    """

    pad_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        labels = torch.full((len(features), width), -100, dtype=torch.long)
        for row, feature in enumerate(features):
            ids = torch.as_tensor(feature["input_ids"], dtype=torch.long)
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
            labels[row, : len(ids)] = torch.as_tensor(feature.get("labels", ids), dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def is_causal_lm_rows(dataset: Any) -> bool:
    """Whether ``dataset`` is a ``datasets.Dataset`` of causal-LM rows :class:`CausalLMCollator` pads
    exactly: ``input_ids`` and optionally per-token ``labels``, nothing else (an ``attention_mask``
    or other columns are left to the trainer's default collator).

    Example:
        >>> from datasets import Dataset
        >>> is_causal_lm_rows(Dataset.from_dict({"input_ids": [[1, 2]], "labels": [[1, 2]]}))
        True
        >>> is_causal_lm_rows(Dataset.from_dict({"input_ids": [[1, 2]], "labels": [0]}))  # a class label
        False
    """
    columns = set(getattr(dataset, "column_names", None) or [])
    if "input_ids" not in columns or not columns <= CAUSAL_LM_COLUMNS:
        return False
    features = getattr(dataset, "features", None) or {}
    return "labels" not in columns or type(features.get("labels")).__name__ in ("Sequence", "List", "LargeList")


def has_text(dataset: Any, text_column: str | None = None) -> bool:
    """Whether ``dataset`` is a ``datasets.Dataset`` of text the trainer tokenises: no ``input_ids``,
    and ``text_column``, ``text``, chat ``messages`` or ``prompt`` + ``completion`` columns.

    Example:
        >>> from datasets import Dataset
        >>> has_text(Dataset.from_dict({"text": ["a"]})), has_text(Dataset.from_dict({"x": [1.0]}))
        (True, False)
    """
    columns = set(getattr(dataset, "column_names", None) or [])
    if not columns or "input_ids" in columns or not hasattr(dataset, "select_columns"):
        return False
    if text_column is not None:
        return True  # a missing column is then named by the tokenising step
    return bool(columns & {"text", "messages"}) or {"prompt", "completion"} <= columns


def has_completions(dataset: Any, text_column: str | None = None) -> bool:
    """Whether the dataset is prompt-completion or chat data (trained on its completions only).

    Example:
        >>> from datasets import Dataset
        >>> has_completions(Dataset.from_dict({"prompt": ["2+2="], "completion": ["4"]}))
        True
    """
    columns = set(dataset.column_names)
    return text_column is None and (
        {"prompt", "completion"} <= columns or ("messages" in columns and "text" not in columns)
    )


def tokenize_for_causal_lm(
    dataset: Any,
    tokenizer: Any,
    max_length: int,
    text_column: str | None = None,
    role: str = "train",
    train_on_prompt: bool = False,
) -> Any:
    """Tokenise a text or chat dataset into ``input_ids`` (EOS appended, truncated to ``max_length``);
    any other dataset (already tokenised, not text, not a ``datasets.Dataset``) is returned as it is.

    Prompt-completion and chat datasets (``prompt``/``completion`` columns, or ``messages`` without
    ``text``) also get ``labels``: ``-100`` on prompt, system and user tokens, as TRL's
    ``completion_only_loss`` / ``assistant_only_loss``, unless ``train_on_prompt``. The model still
    reads every token, so the FLOPs charged are the same.

    Example:
        >>> from datasets import Dataset
        >>> from hf_cads.testing import tiny_tokenizer
        >>> tokenizer = tiny_tokenizer(["2+2=4"], vocab_size=300)
        >>> rows = Dataset.from_dict({"prompt": ["2+2="], "completion": ["4"]})
        >>> labels = tokenize_for_causal_lm(rows, tokenizer, 64)[0]["labels"]
        >>> labels[0], labels[-1] == tokenizer.eos_token_id  # prompt masked, the completion and EOS trained
        (-100, True)
    """
    from datasets import Dataset

    if not has_text(dataset, text_column):
        return dataset
    if tokenizer is None:
        raise ValueError(
            f"The {role} dataset holds text; pass processing_class= (a tokenizer) so it can be tokenised."
        )
    eos = tokenizer.eos_token_id
    tail = [eos] if eos is not None else []
    if not has_completions(dataset, text_column):
        texts = get_texts(dataset, text_column, tokenizer, role=role)
        encoded = tokenizer(texts, truncation=True, max_length=max_length - 1)["input_ids"]
        return Dataset.from_dict({"input_ids": [list(e) + tail for e in encoded]})
    ids_rows, label_rows, empty = [], [], 0
    for row in dataset:
        ids: list[int] = []
        labels: list[int] = []
        for index, (text, completion) in enumerate(example_segments(row, tokenizer)):
            piece = tokenizer(text, add_special_tokens=index == 0)["input_ids"]
            ids += piece
            labels += piece if completion or train_on_prompt else [-100] * len(piece)
        ids, labels = ids[: max_length - 1] + tail, labels[: max_length - 1] + tail
        empty += all(label == -100 for label in labels)
        ids_rows.append(ids)
        label_rows.append(labels)
    if empty:
        logger.warning(
            "%d of %d %s rows have no completion token within max_length=%d (the prompt fills it); "
            "they add no loss. Raise max_length or shorten the prompts.",
            empty,
            len(dataset),
            role,
            max_length,
        )
    return Dataset.from_dict({"input_ids": ids_rows, "labels": label_rows})
