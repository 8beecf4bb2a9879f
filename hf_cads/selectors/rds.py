"""RDS+: representation-based selection with a causal LM's own hidden states.

Implements RDS+ (Ivison, Zhang, Wang, Hajishirzi & Dasigi, "Large-Scale Data Selection for
Instruction Tuning", arXiv:2503.01807), which beat gradient- and loss-based selectors at lower
cost on pools of 0.2-5.8M rows:

1. **Representation.** Run the causal LM's decoder (no LM head) over a row and pool one hidden
   layer with position-weighted mean pooling (SGPT, arXiv:2202.08904): token ``i`` of ``L`` gets
   weight ``i / (1 + 2 + ... + L)``, so later tokens, which have seen more of the row, count more.
   The default is the last hidden layer (``layer=-1``: the decoder's final output, after its final
   norm), as in the paper's code. Padding gets no weight.
2. Optionally concatenate several layers and project them with a seeded Gaussian random
   projection to ``projection_dim`` dimensions (CRDS-R, arXiv:2602.13773, which finds the hidden
   states redundant).
3. **Score.** Unit-normalise, take the cosine with every target row, and choose by
   ``aggregate``: ``round_robin`` (the paper's choice and the default; each target row in turn
   takes its best remaining pool row, see :mod:`hf_cads.selectors.round_robin`), ``mean`` or
   ``max``.

Under BudgetedTrainer and ``hf-cads`` RDS scores with the model being finetuned, so no second model
is loaded, unless the selector options name ``model_name_or_path``; used on its own it loads
``model_name_or_path`` (SmolLM2-135M-Instruct by default) unless given ``model=`` / ``tokenizer=``.
Its cost is one forward pass per pool and target row without the LM head, plus the projection and
the similarity products: about perplexity's cost minus the head.

Example:
    >>> from datasets import Dataset
    >>> from hf_cads import get_selector
    >>> from hf_cads.testing import tiny_causal_lm, tiny_tokenizer
    >>> pool = Dataset.from_dict({"text": ["2 + 2 = 4", "the cat sat", "3 + 5 = 8", "a dog ran"]})
    >>> target = Dataset.from_dict({"text": ["1 + 6 = 7", "my cat ran"]})
    >>> tokenizer = tiny_tokenizer([*pool["text"], *target["text"]], vocab_size=64)
    >>> rds = get_selector("rds", model=tiny_causal_lm(tokenizer), tokenizer=tokenizer, show_progress=False)
    >>> result = rds.select(pool, target=target, k=2)
    >>> len(result), result.flops == rds.estimate_flops(pool, target)
    (2, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..data import get_texts
from ..flops import FlopProfile, matmul_flops
from .base import PreparedScoring, ScoreOutput, Selector, SelectorConfig
from .registry import register_selector
from .round_robin import PerTargetChoiceMixin, aggregate_target_scores
from .scoring import CausalLMSelectorMixin, TokenBatcher, forward_flops_of_plan

__all__ = ["RDSSelector", "RDSSelectorConfig", "decoder_of", "position_weighted_mean"]


@dataclass
class RDSSelectorConfig(SelectorConfig):
    """Options of :class:`RDSSelector`.

    Args:
        model_name_or_path: the causal LM whose hidden states represent rows (alias, folder or Hub
            id); ignored when a model object is passed. BudgetedTrainer and ``hf-cads`` pass the
            model being finetuned unless the selector options name ``model_name_or_path``.
        layer: which hidden state to pool, as an index into the decoder's hidden states (0: the
            embeddings, ``num_hidden_layers`` or -1: the last layer after the final norm, the
            paper's choice); several indices are pooled each and concatenated.
        projection_dim: project the pooled (concatenated) states to this many dimensions with a
            seeded Gaussian random projection (CRDS-R); ``None`` keeps them as they are.
        aggregate: how the cosines with the target rows make a subset: ``round_robin`` (each
            target row in turn takes its best remaining pool row), ``mean`` or ``max`` (top-k by
            the mean / best cosine).
    """

    model_name_or_path: str = "smollm2-135m-instruct"
    layer: int | Sequence[int] = -1
    projection_dim: int | None = None
    aggregate: Literal["round_robin", "mean", "max"] = "round_robin"

    def __post_init__(self) -> None:
        layers = (self.layer,) if isinstance(self.layer, (int, np.integer)) else tuple(self.layer)
        if not layers or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in layers):
            raise ValueError(f"layer must be a hidden-state index such as -1, or a list of them, got {self.layer!r}.")
        if len(set(layers)) != len(layers):
            raise ValueError(f"layer lists a hidden state twice ({list(layers)}); name each layer once.")
        self.layer = int(layers[0]) if isinstance(self.layer, (int, np.integer)) else tuple(int(v) for v in layers)
        dim = self.projection_dim
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0):
            raise ValueError(f"projection_dim must be a positive integer such as 1024, or None, got {dim!r}.")
        if self.aggregate not in ("round_robin", "mean", "max"):
            raise ValueError(f"aggregate must be 'round_robin', 'mean' or 'max', got {self.aggregate!r}.")

    @property
    def layers(self) -> tuple[int, ...]:
        return (self.layer,) if isinstance(self.layer, int) else tuple(self.layer)


def decoder_of(model: Any) -> Any:
    """The decoder stack of a causal LM (plain or peft-wrapped), without its LM head.

    Example:
        >>> from hf_cads.testing import tiny_causal_lm
        >>> type(decoder_of(tiny_causal_lm(vocab_size=32))).__name__
        'LlamaModel'
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = inner.get_decoder() if hasattr(inner, "get_decoder") else None
    if decoder is None or decoder is inner:
        decoder = getattr(inner, getattr(inner, "base_model_prefix", "model"), None)
    if decoder is None or getattr(decoder, "config", None) is None:
        raise TypeError(
            f"Cannot find the decoder of {type(model).__name__}; the rds selector needs a transformers causal LM "
            "(e.g. AutoModelForCausalLM)."
        )
    return decoder


def position_weighted_mean(hidden: Any, attention_mask: Any) -> Any:
    """Position-weighted mean of ``batch x tokens x dim`` states over each row's real tokens: the
    ``i``-th real token has weight ``i / (1 + ... + L)`` (SGPT's pooling, used by RDS+).

    Example:
        >>> import torch
        >>> hidden = torch.tensor([[[1.0], [4.0], [9.0]]])
        >>> position_weighted_mean(hidden, torch.tensor([[1, 1, 0]])).tolist()  # (1*1 + 2*4) / 3
        [[3.0]]
    """
    mask = attention_mask.to(hidden.dtype)
    weights = mask.cumsum(dim=1) * mask
    weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1.0)
    return (hidden * weights.unsqueeze(-1)).sum(dim=1)


@register_selector("rds")
class RDSSelector(PerTargetChoiceMixin, CausalLMSelectorMixin, Selector):
    """RDS+ (Ivison et al., 2025): keep the pool rows whose pooled hidden states are closest to the
    target rows'. A row is the position-weighted mean (token ``i`` of ``L`` weighs ``i``) of one
    hidden layer (``layer``, default the last), or of several concatenated and randomly projected to
    ``projection_dim`` (CRDS-R), unit-normalised and compared by cosine with every target row;
    ``aggregate`` (round-robin by default) turns the similarities into a subset. It costs one forward
    pass per pool and target row without the LM head, about perplexity's cost minus the head.

    Example:
        >>> from hf_cads import get_selector
        >>> rds = get_selector("rds", model=model, tokenizer=tokenizer)  # doctest: +SKIP
        >>> result = rds.select(pool, target=validation, fraction=0.05)  # doctest: +SKIP
        >>> crds = get_selector("rds", model=model, tokenizer=tokenizer,
        ...                     layer=[-1, -4, -8], projection_dim=1024)  # doctest: +SKIP
    """

    config_class = RDSSelectorConfig
    uses_model = True
    reuses_training_model = True
    shardable = True

    # -- the model --------------------------------------------------------------------------------
    def _decoder(self) -> Any:
        model, _ = self._load_model()
        return decoder_of(model)

    def _profile(self) -> FlopProfile:
        # Read from the decoder alone: the LM head does not run, so it is not charged.
        return FlopProfile.from_model(self._decoder())

    def _batcher(self) -> TokenBatcher:
        _, tokenizer = self._load_model()
        return TokenBatcher(tokenizer, batch_size=self.config.batch_size, max_length=self.config.max_length)

    def _layers(self, decoder: Any) -> list[int]:
        count = int(decoder.config.num_hidden_layers)
        layers = [layer + count + 1 if layer < 0 else layer for layer in self.config.layers]
        bad = [given for given, layer in zip(self.config.layers, layers) if not 0 <= layer <= count]
        if bad:
            raise ValueError(
                f"layer {bad} is out of range: the model has hidden states 0 (embeddings) to {count} "
                f"(last layer), or -1 to -{count + 1}."
            )
        if len(set(layers)) != len(layers):
            raise ValueError(f"layer {list(self.config.layers)} names one hidden state twice; name each once.")
        return layers

    def _pooled_dim(self) -> int:
        decoder = self._decoder()
        return int(decoder.config.hidden_size) * len(self._layers(decoder))

    def feature_dim(self) -> int:
        """Dimension of the row representations cosines are taken of."""
        return int(self.config.projection_dim or self._pooled_dim())

    def _projection(self) -> Any:
        if self.config.projection_dim is None:
            return None
        from .less.projection import RandomProjection

        pooled = self._pooled_dim()
        if self.config.projection_dim > pooled:
            raise ValueError(
                f"projection_dim={self.config.projection_dim} exceeds the pooled states' {pooled} dimensions; "
                f"pass projection_dim <= {pooled} (or None to keep them)."
            )
        return RandomProjection(pooled, self.config.projection_dim, seed=self.config.seed, kind="gaussian")

    # -- representations ----------------------------------------------------------------------
    def _token_ids(self, dataset: Any, role: str) -> list[list[int]]:
        _, tokenizer = self._load_model()
        column = (
            self.config.text_column if role == "pool" else (self.config.target_text_column or self.config.text_column)
        )
        token_ids = self._batcher().tokenize(get_texts(dataset, column, tokenizer, role=role))
        empty = [row for row, ids in enumerate(token_ids) if not ids]
        if empty:
            raise ValueError(f"Rows {empty[:5]} of the {role} tokenise to no tokens; drop empty texts first.")
        return token_ids

    def represent(self, token_ids: Sequence[Sequence[int]], progress: Any = None) -> tuple[Any, float]:
        """Unit-norm representations (a float32 tensor, one row per input) and the FLOPs spent."""
        import torch

        model, _ = self._load_model()
        decoder, batcher, profile = self._decoder(), self._batcher(), self._profile()
        layers, projection = self._layers(decoder), self._projection()
        device = next(decoder.parameters()).device
        pooled = torch.zeros(len(token_ids), int(decoder.config.hidden_size) * len(layers))
        flops = 0.0
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for batch in batcher.batches(token_ids):
                    mask = batch.attention_mask.to(device)
                    hidden = decoder(
                        input_ids=batch.input_ids.to(device), attention_mask=mask, output_hidden_states=True
                    ).hidden_states
                    parts = [position_weighted_mean(hidden[layer].float(), mask) for layer in layers]
                    pooled[torch.as_tensor(batch.rows)] = torch.cat(parts, dim=-1).cpu()
                    flops += profile.forward_flops(*batch.shape)
                    if progress is not None:
                        progress.update(len(batch.rows))
        finally:
            model.train(was_training)
        if projection is not None:
            # One call per shard: the dense projection regenerates its matrix on every call.
            pooled = projection(pooled)
            flops += projection.flops(len(token_ids))
        return torch.nn.functional.normalize(pooled, dim=-1), flops

    # -- scores -----------------------------------------------------------------------------------
    def prepare(self, pool: Any, target: Any | None) -> PreparedScoring:
        """The target rows' representations, computed once."""
        from tqdm.auto import tqdm

        token_ids = self._token_ids(target, "target")
        with tqdm(
            total=len(token_ids), desc="rds target", unit="row", disable=not self.config.show_progress
        ) as progress:
            features, flops = self.represent(token_ids, progress)
        return PreparedScoring(state=features.numpy(), flops=flops)

    def score_rows(
        self, pool: Any, target: Any | None, rows: range, prepared: PreparedScoring, progress: Any = None
    ) -> ScoreOutput:
        import torch

        features, flops = self.represent(self._token_ids(pool.select(rows), "pool"), progress)
        target_features = torch.from_numpy(prepared.state)
        cosines = (features @ target_features.T).double().numpy()
        scores, extras = aggregate_target_scores(cosines, self.config.aggregate)
        return ScoreOutput(scores, flops + matmul_flops(len(rows), features.shape[1], len(target_features)), extras)

    def estimate_flops(self, pool: Any, target: Any | None) -> float:
        batcher, profile, projection = self._batcher(), self._profile(), self._projection()
        target_ids = self._token_ids(target, "target")
        pool_ids = self._token_ids(pool, "pool")
        total = forward_flops_of_plan(profile, batcher.padded_shapes(target_ids))
        for rows in self.shard_ranges(len(pool_ids)):
            total += forward_flops_of_plan(profile, batcher.padded_shapes(pool_ids[rows.start : rows.stop]))
        if projection is not None:
            total += projection.flops(len(target_ids)) + projection.flops(len(pool_ids))
        return float(total + matmul_flops(len(pool_ids), self.feature_dim(), len(target_ids)))
