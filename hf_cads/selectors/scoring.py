"""Shared machinery for model-based selectors: tokenising, length-sorted batching and FLOP charging.

Every model-based selector scores through :class:`TokenBatcher` so that the FLOPs it reports are
computed from exactly the padded batches it ran, and its up-front estimate plans the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..flops import FlopProfile


@dataclass
class TokenBatch:
    """A right-padded batch and the positions of its rows in the caller's list."""

    rows: np.ndarray
    input_ids: Any
    attention_mask: Any

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids.shape)  # type: ignore[return-value]


class TokenBatcher:
    """Tokenises texts once and yields length-sorted, right-padded batches.

    Sorting by length keeps padding (and so wasted FLOPs) low; rows come back with their
    original positions, so callers can scatter results back in pool order.

    Example:
        >>> from hf_cads.testing import tiny_tokenizer
        >>> batcher = TokenBatcher(tiny_tokenizer(["a b c d e", "a b"], vocab_size=300), batch_size=2)
        >>> ids = batcher.tokenize(["a b", "a b c d e"])
        >>> [(batch.rows.tolist(), batch.shape) for batch in batcher.batches(ids)]
        [([1, 0], (2, 5))]
    """

    def __init__(self, tokenizer: Any, batch_size: int = 8, max_length: int = 512, add_eos: bool = False) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if max_length <= 1:
            raise ValueError(f"max_length must be >= 2 tokens, got {max_length}.")
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.add_eos = add_eos

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, add_special_tokens=True)[
            "input_ids"
        ]
        if self.add_eos and self.tokenizer.eos_token_id is not None:
            encoded = [ids[: self.max_length - 1] + [self.tokenizer.eos_token_id] for ids in encoded]
        return [list(ids) for ids in encoded]

    def plan(self, token_ids: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Row groups of each batch, longest first (same plan for estimating and running)."""
        lengths = np.array([len(ids) for ids in token_ids])
        order = np.lexsort((np.arange(len(lengths)), -lengths))
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def padded_shapes(self, token_ids: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
        return [(len(rows), max(len(token_ids[r]) for r in rows)) for rows in self.plan(token_ids)]

    def batches(self, token_ids: Sequence[Sequence[int]]) -> Iterator[TokenBatch]:
        for rows in self.plan(token_ids):
            yield self.pad(token_ids, rows)

    def pad(self, token_ids: Sequence[Sequence[int]], rows: Sequence[int]) -> TokenBatch:
        """One right-padded batch of the given rows, in the given order (e.g. a shuffled training batch)."""
        import torch

        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        rows = np.asarray(rows)
        width = max(len(token_ids[r]) for r in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids = token_ids[r]
            input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[i, : len(ids)] = 1
        return TokenBatch(rows=rows, input_ids=input_ids, attention_mask=mask)


def forward_flops_of_plan(profile: FlopProfile, shapes: Sequence[tuple[int, int]]) -> float:
    """Forward FLOPs of ``profile``'s model over padded batches of the given ``(rows, tokens)`` shapes.

    Example:
        >>> from hf_cads.flops import FlopProfile
        >>> from hf_cads.testing import tiny_causal_lm
        >>> profile = FlopProfile.from_model(tiny_causal_lm(vocab_size=64))
        >>> forward_flops_of_plan(profile, [(2, 8)]) == profile.forward_flops(2, 8)
        True
    """
    return float(sum(profile.forward_flops(b, s) for b, s in shapes))


def check_next_token_targets(token_ids: Sequence[Sequence[int]], role: str = "pool") -> None:
    """Every row needs >= 2 tokens to have a next-token loss; name the rows that do not."""
    short = [i for i, ids in enumerate(token_ids) if len(ids) < 2]
    if short:
        raise ValueError(
            f"Rows {short[:5]} of the {role} tokenise to fewer than 2 tokens, so they have no next-token loss; "
            "drop empty texts first."
        )


def masked_token_losses(logits: Any, input_ids: Any, attention_mask: Any) -> Any:
    """Per-example mean next-token cross-entropy over the non-padding positions."""
    import torch

    shift_logits = logits[:, :-1, :].float()
    shift_labels = input_ids[:, 1:]
    shift_mask = attention_mask[:, 1:].to(shift_logits.dtype)
    token_loss = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), reduction="none"
    ).view_as(shift_labels)
    return (token_loss * shift_mask).sum(dim=1) / shift_mask.sum(dim=1).clamp(min=1.0)


class CausalLMScorer:
    """Batched per-example language-model loss with exact FLOP accounting.

    Example:
        >>> scorer = CausalLMScorer(model, tokenizer, batch_size=8)  # doctest: +SKIP
        >>> losses, flops = scorer.losses(["Q: 2+2?\\nA: 4"])  # doctest: +SKIP
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        batch_size: int = 8,
        max_length: int = 512,
        show_progress: bool = True,
        progress_delay: float = 0.0,
    ):
        self.model = model
        self.batcher = TokenBatcher(tokenizer, batch_size=batch_size, max_length=max_length)
        self.profile = FlopProfile.from_model(model)
        self.show_progress = show_progress
        # tqdm's ``delay``: a bar that appears only once the work has run this many seconds.
        self.progress_delay = progress_delay

    def estimate_flops(self, texts: Sequence[str]) -> float:
        return forward_flops_of_plan(self.profile, self.batcher.padded_shapes(self.batcher.tokenize(texts)))

    def losses(
        self,
        texts: Sequence[str] | None,
        desc: str = "scoring",
        progress: Any = None,
        token_ids: Sequence[Sequence[int]] | None = None,
        labels: Sequence[Sequence[int]] | None = None,
    ) -> tuple[np.ndarray, float]:
        """Per-text mean token loss and the forward FLOPs spent. ``progress``: a tqdm bar (e.g. the
        selection flow's, spanning several shards) to advance by rows instead of a bar of its own.
        Pass ``token_ids`` instead of ``texts`` for rows already tokenised, and ``labels`` (``-100``
        = not scored, e.g. prompt tokens) for a completion-only loss; the FLOPs are the same."""
        import torch
        from tqdm.auto import tqdm

        token_ids = self.batcher.tokenize(texts) if token_ids is None else [list(ids) for ids in token_ids]
        check_next_token_targets(token_ids)
        out = np.zeros(len(token_ids), dtype=np.float64)
        flops = 0.0
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        batches = list(self.batcher.batches(token_ids))
        own_bar = progress is None
        bar = (
            tqdm(
                total=len(token_ids),
                desc=desc,
                unit="row",
                disable=not self.show_progress,
                delay=self.progress_delay,
            )
            if own_bar
            else progress
        )
        try:
            with torch.no_grad():
                for batch in batches:
                    logits = self.model(
                        input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device)
                    ).logits
                    mask = batch.attention_mask.clone()
                    if labels is not None:
                        for i, row in enumerate(batch.rows):
                            mask[i, : len(labels[row])] *= torch.as_tensor(
                                [int(t != -100) for t in labels[row]], dtype=mask.dtype
                            )
                    out[batch.rows] = (
                        masked_token_losses(logits, batch.input_ids.to(device), mask.to(device)).cpu().numpy()
                    )
                    flops += self.profile.forward_flops(*batch.shape)
                    bar.update(len(batch.rows))
        finally:
            self.model.train(was_training)
            if own_bar:
                bar.close()
        return out, flops


class CausalLMSelectorMixin:
    """Lazy loading of the selection model, shared by the LM-based selectors: a selector with
    ``config.model_name_or_path`` / ``batch_size`` / ``max_length`` / ``show_progress`` and
    ``model`` / ``tokenizer`` attributes gets ``_load_model()`` and a :class:`CausalLMScorer`.

    Example:
        >>> from hf_cads import get_selector
        >>> from hf_cads.testing import tiny_causal_lm, tiny_tokenizer
        >>> tokenizer = tiny_tokenizer(["the cat sat on the mat"], vocab_size=300)
        >>> selector = get_selector("perplexity", model=tiny_causal_lm(tokenizer), tokenizer=tokenizer)
        >>> isinstance(selector, CausalLMSelectorMixin), type(selector._scorer()).__name__
        (True, 'CausalLMScorer')
    """

    config: Any
    model: Any
    tokenizer: Any

    def _load_model(self) -> tuple[Any, Any]:
        if self.model is None:
            from ..models import load_causal_lm, load_tokenizer

            self.model, loaded_tokenizer = load_causal_lm(self.config.model_name_or_path)
            self.tokenizer = self.tokenizer or loaded_tokenizer
        if self.tokenizer is None:
            from ..models import load_tokenizer

            self.tokenizer = load_tokenizer(self.config.model_name_or_path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        return self.model, self.tokenizer

    def _scorer(self) -> CausalLMScorer:
        model, tokenizer = self._load_model()
        return CausalLMScorer(
            model, tokenizer, self.config.batch_size, self.config.max_length, self.config.show_progress
        )
