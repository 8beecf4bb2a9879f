"""Turning a text or chat dataset into causal-LM training batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..data import get_texts


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


def tokenize_for_causal_lm(dataset: Any, tokenizer: Any, max_length: int, text_column: str | None = None, role: str = "train") -> Any:
    """Tokenise a text or chat dataset into ``input_ids`` (EOS appended, truncated to ``max_length``)."""
    if "input_ids" in dataset.column_names:
        return dataset
    if tokenizer is None:
        raise ValueError(f"The {role} dataset holds text; pass processing_class= (a tokenizer) so it can be tokenised.")
    texts = get_texts(dataset, text_column, tokenizer, role=role)
    encoded = tokenizer(texts, truncation=True, max_length=max_length - 1)["input_ids"]
    eos = tokenizer.eos_token_id
    ids = [list(e) + ([eos] if eos is not None else []) for e in encoded]
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": ids})
