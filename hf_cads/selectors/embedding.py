"""Embedding selection: cosine similarity of sentence-encoder embeddings to the target set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..data import get_texts
from ..flops import FlopProfile
from .base import ScoreOutput, Selector, SelectorConfig
from .registry import register_selector
from .scoring import TokenBatcher, forward_flops_of_plan


@dataclass
class EmbeddingSelectorConfig(SelectorConfig):
    """Options of :class:`EmbeddingSelector`.

    Args:
        model_name_or_path: a sentence-transformers model (alias, folder or Hub id).
        aggregate: ``centroid`` compares each row with the mean target embedding; ``max`` takes
            the best cosine over the target rows.
    """

    model_name_or_path: str = "all-minilm-l6-v2"
    aggregate: Literal["centroid", "max"] = "centroid"
    batch_size: int = 32
    max_length: int = 256

    def __post_init__(self) -> None:
        if self.aggregate not in ("centroid", "max"):
            raise ValueError(f"aggregate must be 'centroid' or 'max', got {self.aggregate!r}.")


@register_selector("embedding")
class EmbeddingSelector(Selector):
    """Scores rows by cosine similarity of their embedding to the target's (a T5/MiniLM-style encoder).

    Pass ``model=`` a loaded ``SentenceTransformer`` to reuse one.

    Example:
        >>> from hf_cads import get_selector
        >>> result = get_selector("embedding").select(pool, target=target, k=100)  # doctest: +SKIP
    """

    config_class = EmbeddingSelectorConfig
    uses_model = True

    def _encoder(self) -> Any:
        if self.model is None:
            from ..models import load_sentence_encoder

            self.model = load_sentence_encoder(self.config.model_name_or_path)
        return self.model

    def _batcher(self) -> TokenBatcher:
        encoder = self._encoder()
        max_length = min(self.config.max_length, encoder.max_seq_length or self.config.max_length)
        return TokenBatcher(encoder.tokenizer, batch_size=self.config.batch_size, max_length=max_length)

    def _profile(self) -> FlopProfile:
        return FlopProfile.from_config(self._encoder()[0].auto_model.config)

    def _texts(self, pool: Any, target: Any) -> tuple[list[str], list[str]]:
        column = self.config.target_text_column or self.config.text_column
        return get_texts(pool, self.config.text_column, role="pool"), get_texts(target, column, role="target")

    def _embed(self, texts: list[str], desc: str) -> tuple[np.ndarray, float]:
        import torch
        from tqdm.auto import tqdm

        encoder, batcher, profile = self._encoder(), self._batcher(), self._profile()
        token_ids = batcher.tokenize(texts)
        out = np.zeros((len(texts), encoder.get_embedding_dimension()), dtype=np.float32)
        flops = 0.0
        batches = list(batcher.batches(token_ids))
        device = encoder.device
        with torch.no_grad():
            for batch in tqdm(batches, desc=desc, disable=not self.config.show_progress):
                features = {"input_ids": batch.input_ids.to(device), "attention_mask": batch.attention_mask.to(device)}
                if "token_type_ids" in getattr(encoder.tokenizer, "model_input_names", []):
                    features["token_type_ids"] = torch.zeros_like(features["input_ids"])
                embedded = encoder(features)["sentence_embedding"]
                embedded = torch.nn.functional.normalize(embedded.float(), dim=-1)
                out[batch.rows] = embedded.cpu().numpy()
                flops += profile.forward_flops(*batch.shape)
        return out, flops

    def score(self, pool: Any, target: Any | None) -> ScoreOutput:
        pool_texts, target_texts = self._texts(pool, target)
        pool_emb, pool_flops = self._embed(pool_texts, "embedding pool")
        target_emb, target_flops = self._embed(target_texts, "embedding target")
        if self.config.aggregate == "centroid":
            centroid = target_emb.mean(axis=0)
            centroid /= max(np.linalg.norm(centroid), 1e-12)
            scores = pool_emb @ centroid
        else:
            scores = (pool_emb @ target_emb.T).max(axis=1)
        return ScoreOutput(scores.astype(np.float64), pool_flops + target_flops)

    def estimate_flops(self, pool: Any, target: Any | None) -> float:
        batcher, profile = self._batcher(), self._profile()
        return sum(
            forward_flops_of_plan(profile, batcher.padded_shapes(batcher.tokenize(texts)))
            for texts in self._texts(pool, target)
        )
