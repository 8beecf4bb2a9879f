"""Embedding selection: cosine similarity of sentence-encoder embeddings to the target set."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..data import get_texts
from ..flops import FlopProfile
from .base import PreparedScoring, ScoreOutput, Selector, SelectorConfig
from .registry import register_selector
from .round_robin import PerTargetChoiceMixin, aggregate_target_scores
from .scoring import TokenBatcher, forward_flops_of_plan


@dataclass
class EmbeddingSelectorConfig(SelectorConfig):
    """Options of :class:`EmbeddingSelector`.

    Args:
        model_name_or_path: a sentence-transformers model (alias, folder or Hub id).
        aggregate: ``centroid`` compares each row with the mean target embedding; ``max`` takes
            the best cosine over the target rows; ``round_robin`` lets each target row in turn
            take its most similar remaining pool row (see :mod:`hf_cads.selectors.round_robin`).
    """

    model_name_or_path: str = "all-minilm-l6-v2"
    aggregate: Literal["centroid", "max", "round_robin"] = "centroid"
    batch_size: int = 32
    max_length: int = 256

    def __post_init__(self) -> None:
        if self.aggregate not in ("centroid", "max", "round_robin"):
            raise ValueError(f"aggregate must be 'centroid', 'max' or 'round_robin', got {self.aggregate!r}.")


@register_selector("embedding")
class EmbeddingSelector(PerTargetChoiceMixin, Selector):
    """Scores rows by cosine similarity of their embedding to the target's (a T5/MiniLM-style encoder).

    Pass ``model=`` a loaded ``SentenceTransformer`` to reuse one.

    Example:
        >>> from hf_cads import get_selector
        >>> result = get_selector("embedding").select(pool, target=target, k=100)  # doctest: +SKIP
    """

    config_class = EmbeddingSelectorConfig
    uses_model = True
    shardable = True

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
        # From the loaded modules, so the charge follows what encode runs (a T5 encoder without its
        # decoder, a Dense head after pooling, a decoder-only model without its LM head).
        return FlopProfile.from_sentence_encoder(self._encoder())

    def _texts(self, pool: Any, target: Any) -> tuple[list[str], list[str]]:
        column = self.config.target_text_column or self.config.text_column
        return get_texts(pool, self.config.text_column, role="pool"), get_texts(target, column, role="target")

    def _embed(self, texts: list[str], desc: str, progress: Any = None) -> tuple[np.ndarray, float]:
        import torch
        from tqdm.auto import tqdm

        encoder, batcher, profile = self._encoder(), self._batcher(), self._profile()
        token_ids = batcher.tokenize(texts)
        out = np.zeros((len(texts), encoder.get_embedding_dimension()), dtype=np.float32)
        flops = 0.0
        batches = list(batcher.batches(token_ids))
        device = encoder.device
        bar = (
            progress
            if progress is not None
            else tqdm(total=len(texts), desc=desc, unit="row", disable=not self.config.show_progress)
        )
        # A caller's bar (spanning several shards) is advanced but left open.
        with torch.no_grad(), bar if progress is None else contextlib.nullcontext(bar):
            for batch in batches:
                features = {"input_ids": batch.input_ids.to(device), "attention_mask": batch.attention_mask.to(device)}
                if "token_type_ids" in getattr(encoder.tokenizer, "model_input_names", []):
                    features["token_type_ids"] = torch.zeros_like(features["input_ids"])
                embedded = encoder(features)["sentence_embedding"]
                embedded = torch.nn.functional.normalize(embedded.float(), dim=-1)
                out[batch.rows] = embedded.cpu().numpy()
                flops += profile.forward_flops(*batch.shape)
                bar.update(len(batch.rows))
        return out, flops

    def prepare(self, pool: Any, target: Any | None) -> PreparedScoring:
        """The target side, embedded once: the normalised centroid, or every target row otherwise."""
        column = self.config.target_text_column or self.config.text_column
        target_emb, flops = self._embed(get_texts(target, column, role="target"), "embedding target")
        if self.config.aggregate == "centroid":
            centroid = target_emb.mean(axis=0)
            target_emb = (centroid / max(np.linalg.norm(centroid), 1e-12))[None, :]
        return PreparedScoring(state=target_emb, flops=flops)

    def score_rows(
        self, pool: Any, target: Any | None, rows: range, prepared: PreparedScoring, progress: Any = None
    ) -> ScoreOutput:
        texts = get_texts(pool.select(rows), self.config.text_column, role="pool")
        pool_emb, flops = self._embed(texts, "embedding pool", progress)
        per_target = (pool_emb @ prepared.state.T).astype(np.float64)
        scores, extras = aggregate_target_scores(
            per_target, "max" if self.config.aggregate == "centroid" else self.config.aggregate
        )
        return ScoreOutput(scores, flops, extras)

    def estimate_flops(self, pool: Any, target: Any | None) -> float:
        batcher, profile = self._batcher(), self._profile()
        pool_texts, target_texts = self._texts(pool, target)
        shards = [pool_texts[rows.start : rows.stop] for rows in self.shard_ranges(len(pool))]
        return sum(
            forward_flops_of_plan(profile, batcher.padded_shapes(batcher.tokenize(texts)))
            for texts in [target_texts, *shards]
        )
