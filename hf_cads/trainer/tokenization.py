"""Turning a text or chat dataset into causal-LM training batches."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..data import example_segments, get_texts

logger = logging.getLogger(__name__)


@dataclass
class CausalLMCollator:
    """Right-pads ``input_ids`` and builds ``labels`` with padding masked out (-100)."""

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


def has_completions(dataset: Any, text_column: str | None = None) -> bool:
    """Whether the dataset is prompt-completion or chat data (trained on its completions only)."""
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
    """Tokenise a text or chat dataset into ``input_ids`` (EOS appended, truncated to ``max_length``).

    Prompt-completion and chat datasets (``prompt``/``completion`` columns, or ``messages`` without
    ``text``) also get ``labels``: ``-100`` on prompt, system and user tokens, as TRL's
    ``completion_only_loss`` / ``assistant_only_loss``, unless ``train_on_prompt``. The model still
    reads every token, so the FLOPs charged are the same.

    Example:
        >>> ds = Dataset.from_dict({"prompt": ["2+2="], "completion": ["4"]})  # doctest: +SKIP
        >>> tokenize_for_causal_lm(ds, tokenizer, 64)[0]["labels"]  # doctest: +SKIP
        [-100, -100, -100, 19, 2]
    """
    from datasets import Dataset

    if "input_ids" in dataset.column_names:
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
            "%d of %d %s rows have no completion token within max_seq_length=%d (the prompt fills it); they add no loss. "
            "Raise max_seq_length or shorten the prompts.",
            empty,
            len(dataset),
            role,
            max_length,
        )
    return Dataset.from_dict({"input_ids": ids_rows, "labels": label_rows})
