"""Per-example gradients, Adam update directions and seeded random projections.

The building blocks of gradient-based data selection (LESS, TracIn-style influence): the gradient
of every example's own loss with respect to the trainable (e.g. LoRA) parameters, computed for a
whole batch in one vectorised pass, and a Johnson-Lindenstrauss projection that maps those
gradients to a few thousand dimensions without ever holding the full projection matrix.

Example:
    >>> import torch
    >>> from hf_cads.selectors.gradients import PerExampleGradients, RandomProjection
    >>> grads = PerExampleGradients(lora_model)  # doctest: +SKIP
    >>> flat = grads(input_ids, attention_mask)  # doctest: +SKIP  (batch x num_trainable_params)
    >>> projection = RandomProjection(grads.num_params, 8192, seed=0)  # doctest: +SKIP
    >>> features = torch.nn.functional.normalize(projection(flat), dim=-1)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from ..flops import matmul_flops
from .scoring import masked_token_losses

GradientMethod = Literal["vmap", "loop"]
ProjectionType = Literal["rademacher", "gaussian"]

PROJECTION_CHUNK_ELEMENTS = 1 << 22
"""Entries of the projection matrix generated at once (16 MiB in float32): bounds its memory."""


def trainable_parameters(model: Any) -> dict[str, Any]:
    """The parameters that require a gradient, by name, in module order."""
    return {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}


class PerExampleGradients:
    """Gradient of each example's mean next-token loss w.r.t. the model's trainable parameters.

    ``method="vmap"`` runs ``torch.func.vmap(grad(loss))`` over the batch: one batched forward and
    backward instead of one per example. The model is given ``input_ids`` only (right padding):
    under a causal mask the padding never influences the real tokens, and the loss masks it out,
    so each row's gradient equals that of the unpadded example. ``method="loop"`` is the plain
    reference (one backward per unpadded example), kept for tests and benchmarks.

    Gradients are returned flattened, ``batch x num_params``, in the order of :attr:`names`.
    Dropout is off while they are computed (the model is put in eval mode and restored).

    Example:
        >>> grads = PerExampleGradients(lora_model)  # doctest: +SKIP
        >>> grads(batch.input_ids, batch.attention_mask).shape  # doctest: +SKIP
        torch.Size([8, 921600])
    """

    def __init__(self, model: Any, method: GradientMethod = "vmap") -> None:
        if method not in ("vmap", "loop"):
            raise ValueError(f"method must be 'vmap' or 'loop', got {method!r}.")
        params = trainable_parameters(model)
        if not params:
            raise ValueError(
                f"{type(model).__name__} has no trainable parameters to take gradients of; wrap it with "
                "LoRA (peft.get_peft_model) or set requires_grad on the parameters to differentiate."
            )
        self.model = model
        self.method = method
        self.names = list(params)
        self.shapes = [tuple(p.shape) for p in params.values()]

    @property
    def num_params(self) -> int:
        return int(sum(math.prod(shape) for shape in self.shapes))

    def __call__(self, input_ids: Any, attention_mask: Any) -> Any:
        was_training = self.model.training
        self.model.eval()
        try:
            if self.method == "vmap":
                return self._vmap(input_ids, attention_mask)
            return self._loop(input_ids, attention_mask)
        finally:
            self.model.train(was_training)

    def _current_params(self) -> dict[str, Any]:
        # Read at call time: the caller may have loaded other weights (e.g. a checkpoint) in place.
        params = dict(self.model.named_parameters())
        return {name: params[name].detach() for name in self.names}

    def _example_loss(self, params: dict[str, Any], input_ids: Any, attention_mask: Any) -> Any:
        from torch.func import functional_call

        logits = functional_call(
            self.model, params, args=(), kwargs={"input_ids": input_ids.unsqueeze(0), "use_cache": False}
        ).logits
        return masked_token_losses(logits, input_ids.unsqueeze(0), attention_mask.unsqueeze(0))[0]

    def _vmap(self, input_ids: Any, attention_mask: Any) -> Any:
        import torch
        from torch.func import grad, vmap

        per_example = vmap(grad(self._example_loss), in_dims=(None, 0, 0))
        grads = per_example(self._current_params(), input_ids, attention_mask)
        return torch.cat([grads[name].reshape(input_ids.shape[0], -1) for name in self.names], dim=1)

    def _loop(self, input_ids: Any, attention_mask: Any) -> Any:
        import torch

        params = dict(self.model.named_parameters())
        wrt = [params[name] for name in self.names]
        rows = []
        for row in range(input_ids.shape[0]):
            length = int(attention_mask[row].sum())
            ids = input_ids[row : row + 1, :length]
            logits = self.model(input_ids=ids, use_cache=False).logits
            loss = masked_token_losses(logits, ids, attention_mask[row : row + 1, :length])[0]
            grads = torch.autograd.grad(loss, wrt)
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
        return torch.stack(rows)


def adam_update_direction(
    grads: Any,
    exp_avg: Any,
    exp_avg_sq: Any,
    step: int,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> Any:
    """The direction Adam would move the parameters if its next step used ``grads`` alone.

    With the optimizer's moments ``m``, ``v`` after ``step`` updates (Xia et al., 2024, eq. 2)::

        m' = b1 m + (1 - b1) g,   v' = b2 v + (1 - b2) g^2
        direction = (m' / (1 - b1^(t+1))) / (sqrt(v' / (1 - b2^(t+1))) + eps)

    ``grads`` is ``batch x num_params``; the moments are flat ``num_params`` vectors in the same
    order. The result is a new tensor; ``grads`` is left untouched.
    """
    beta1, beta2 = betas
    t = int(step) + 1
    second = grads.square().mul_(1.0 - beta2).add_(exp_avg_sq, alpha=beta2).div_(1.0 - beta2**t).sqrt_().add_(eps)
    first = grads.mul(1.0 - beta1).add_(exp_avg, alpha=beta1).div_(1.0 - beta1**t)
    return first.div_(second)


def chunk_seed(seed: int, index: int) -> int:
    """A 63-bit seed for chunk ``index`` of a projection seeded with ``seed`` (same on every process)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


class RandomProjection:
    """A seeded Johnson-Lindenstrauss projection from ``input_dim`` to ``output_dim`` dimensions.

    The matrix has i.i.d. Rademacher (+-1) or standard normal entries scaled by
    ``1 / sqrt(output_dim)``, so squared norms and inner products are preserved in expectation.
    It is never held whole: rows ``[i * chunk_rows, (i + 1) * chunk_rows)`` form chunk ``i``, drawn
    from its own generator seeded by ``(seed, i)`` whenever needed. Memory is therefore
    ``batch x output_dim`` plus one chunk, and the same seed gives the same matrix on every process
    and for every batch size (chunks are regenerated per call, so project many vectors per call).

    Example:
        >>> import torch
        >>> from hf_cads.selectors.gradients import RandomProjection
        >>> projection = RandomProjection(input_dim=10_000, output_dim=64, seed=0)
        >>> vectors = torch.randn(3, 10_000)
        >>> bool(torch.equal(projection(vectors), RandomProjection(10_000, 64, seed=0)(vectors)))
        True
    """

    def __init__(self, input_dim: int, output_dim: int, seed: int = 0, kind: ProjectionType = "rademacher") -> None:
        if isinstance(output_dim, bool) or not isinstance(output_dim, (int, np.integer)) or output_dim <= 0:
            raise ValueError(f"projection dimension must be a positive integer such as 8192, got {output_dim!r}.")
        if isinstance(input_dim, bool) or not isinstance(input_dim, (int, np.integer)) or input_dim <= 0:
            raise ValueError(f"input_dim must be a positive integer, got {input_dim!r}.")
        if kind not in ("rademacher", "gaussian"):
            raise ValueError(f"projection type must be 'rademacher' or 'gaussian', got {kind!r}.")
        self.input_dim = int(input_dim)
        self.output_dim = int(output_dim)
        self.seed = int(seed)
        self.kind = kind
        self.chunk_rows = max(1, PROJECTION_CHUNK_ELEMENTS // self.output_dim)

    @property
    def num_chunks(self) -> int:
        return -(-self.input_dim // self.chunk_rows)

    def chunk(self, index: int, device: Any = "cpu") -> Any:
        """Rows ``[index * chunk_rows, ...)`` of the unscaled matrix, as float32 on ``device``."""
        import torch

        start = index * self.chunk_rows
        rows = min(self.chunk_rows, self.input_dim - start)
        if not 0 <= index < self.num_chunks:
            raise IndexError(f"chunk {index} out of range (the projection has {self.num_chunks} chunks).")
        generator = torch.Generator(device=device).manual_seed(chunk_seed(self.seed, index))
        shape = (rows, self.output_dim)
        if self.kind == "gaussian":
            return torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
        return torch.randint(0, 2, shape, generator=generator, device=device, dtype=torch.float32).mul_(2.0).sub_(1.0)

    def __call__(self, vectors: Any) -> Any:
        """Project ``batch x input_dim`` vectors to ``batch x output_dim`` (float32)."""
        import torch

        if vectors.dim() != 2 or vectors.shape[1] != self.input_dim:
            raise ValueError(f"expected vectors of shape (batch, {self.input_dim}), got {tuple(vectors.shape)}.")
        vectors = vectors.float()
        out = torch.zeros(vectors.shape[0], self.output_dim, dtype=torch.float32, device=vectors.device)
        for index in range(self.num_chunks):
            start = index * self.chunk_rows
            block = self.chunk(index, vectors.device)
            # Out-of-place addmm: FlopCounterMode does not count the in-place variant.
            out = torch.addmm(out, vectors[:, start : start + block.shape[0]], block)
        return out.mul_(1.0 / math.sqrt(self.output_dim))

    def flops(self, num_vectors: int) -> float:
        """FLOPs of projecting ``num_vectors`` vectors (a dense matmul)."""
        return matmul_flops(num_vectors, self.input_dim, self.output_dim)
