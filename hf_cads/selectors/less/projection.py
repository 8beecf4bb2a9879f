"""Seeded Johnson-Lindenstrauss projections of gradients: a sparse one (default) and dense ones.

Gradient-based selection (LESS) compares per-example gradients of ~10^6 LoRA parameters through
a few thousand random dimensions. Both kinds here preserve inner products in expectation, are
seeded (the same seed gives the same projection on every process and for every batch size) and
never hold a ``input_dim x output_dim`` matrix:

- :class:`SparseProjection` (``"sparse"``): every input coordinate is hashed to ``nonzeros``
  output coordinates, one in each of ``nonzeros`` equal blocks of the output, with a random sign
  (the block construction of Kane & Nelson, "Sparser Johnson-Lindenstrauss Transforms", JACM
  2014). Projecting a batch is ``nonzeros`` scatter-adds (``index_add_``) over the batch:
  ``2 * nonzeros * input_dim`` FLOPs per vector instead of ``2 * input_dim * output_dim``.
- :class:`RandomProjection` (``"rademacher"`` / ``"gaussian"``): i.i.d. +-1 or normal entries,
  regenerated in seeded chunks on every call (LESS's original choice); a dense matmul.

A per-module Kronecker-factored projection (LoGra) projects a layer's output gradients and
inputs separately; it does not apply to LESS's pool features, which are the element-wise Adam
update ``m'/(sqrt(v')+eps)`` of the whole per-example gradient, not a linear function of it.

Example:
    >>> import torch
    >>> from hf_cads.selectors.less.projection import make_projection
    >>> projection = make_projection("sparse", input_dim=10_000, output_dim=256, seed=0)
    >>> vectors = torch.randn(3, 10_000)
    >>> projection(vectors).shape
    torch.Size([3, 256])
    >>> bool(torch.equal(projection(vectors), make_projection("sparse", 10_000, 256, seed=0)(vectors)))
    True
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

import numpy as np

from ...flops import matmul_flops

ProjectionType = Literal["sparse", "rademacher", "gaussian"]
PROJECTION_TYPES: tuple[str, ...] = get_args(ProjectionType)
DEFAULT_SPARSE_NONZEROS = 4

PROJECTION_CHUNK_ELEMENTS = 1 << 22
"""Entries of the dense projection matrix generated at once (16 MiB in float32): bounds its memory."""


def chunk_seed(seed: int, index: int) -> int:
    """A 63-bit seed for chunk ``index`` of a projection seeded with ``seed`` (same on every process)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def _check_dims(input_dim: Any, output_dim: Any) -> None:
    if isinstance(output_dim, bool) or not isinstance(output_dim, (int, np.integer)) or output_dim <= 0:
        raise ValueError(f"projection dimension must be a positive integer such as 8192, got {output_dim!r}.")
    if isinstance(input_dim, bool) or not isinstance(input_dim, (int, np.integer)) or input_dim <= 0:
        raise ValueError(f"input_dim must be a positive integer, got {input_dim!r}.")


def _check_vectors(vectors: Any, input_dim: int) -> None:
    if vectors.dim() != 2 or vectors.shape[1] != input_dim:
        raise ValueError(f"expected vectors of shape (batch, {input_dim}), got {tuple(vectors.shape)}.")


class RandomProjection:
    """A seeded dense Johnson-Lindenstrauss projection from ``input_dim`` to ``output_dim`` dimensions.

    The matrix has i.i.d. Rademacher (+-1) or standard normal entries scaled by
    ``1 / sqrt(output_dim)``, so squared norms and inner products are preserved in expectation.
    It is never held whole: rows ``[i * chunk_rows, (i + 1) * chunk_rows)`` form chunk ``i``, drawn
    from its own generator seeded by ``(seed, i)`` whenever needed. Memory is therefore
    ``batch x output_dim`` plus one chunk, and the same seed gives the same matrix on every process
    and for every batch size (chunks are regenerated per call, so project many vectors per call).

    Example:
        >>> import torch
        >>> from hf_cads.selectors.less.projection import RandomProjection
        >>> projection = RandomProjection(input_dim=10_000, output_dim=64, seed=0)
        >>> vectors = torch.randn(3, 10_000)
        >>> bool(torch.equal(projection(vectors), RandomProjection(10_000, 64, seed=0)(vectors)))
        True
    """

    regenerated_per_call = True
    """Each call regenerates the whole matrix, so callers should project many vectors at once."""

    def __init__(
        self, input_dim: int, output_dim: int, seed: int = 0, kind: Literal["rademacher", "gaussian"] = "rademacher"
    ) -> None:
        _check_dims(input_dim, output_dim)
        if kind not in ("rademacher", "gaussian"):
            raise ValueError(f"dense projection type must be 'rademacher' or 'gaussian', got {kind!r}.")
        self.input_dim = int(input_dim)
        self.output_dim = int(output_dim)
        self.seed = int(seed)
        self.kind = kind
        self.chunk_rows = max(1, PROJECTION_CHUNK_ELEMENTS // self.output_dim)

    @property
    def num_chunks(self) -> int:
        return -(-self.input_dim // self.chunk_rows)

    def describe(self) -> dict[str, Any]:
        """What identifies this projection (for feature-index keys)."""
        return {"type": self.kind, "input_dim": self.input_dim, "output_dim": self.output_dim, "seed": self.seed}

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

        _check_vectors(vectors, self.input_dim)
        vectors = vectors.float()
        out = torch.zeros(vectors.shape[0], self.output_dim, dtype=torch.float32, device=vectors.device)
        for index in range(self.num_chunks):
            start = index * self.chunk_rows
            block = self.chunk(index, vectors.device)
            # Out-of-place addmm: FlopCounterMode does not count the in-place variant.
            out = torch.addmm(out, vectors[:, start : start + block.shape[0]], block)
        return out.mul_(1.0 / math.sqrt(self.output_dim))

    def flops(self, num_vectors: int) -> float:
        """FLOPs of projecting ``num_vectors`` vectors (a dense matmul, which FlopCounterMode counts)."""
        return matmul_flops(num_vectors, self.input_dim, self.output_dim)


class SparseProjection:
    """A seeded sparse Johnson-Lindenstrauss projection: ``nonzeros`` signed entries per input coordinate.

    The output is cut into ``nonzeros`` contiguous blocks (sizes differing by at most one); input
    coordinate ``j`` adds ``sign * x[j] / sqrt(nonzeros)`` to one hashed position in each block, so
    its ``nonzeros`` targets are distinct and ``E[<Px, Py>] = <x, y>``. The hashes (one int64
    position and one sign per input coordinate and block) are drawn once on the CPU from a
    generator seeded by ``seed`` — identical on every process and device — and kept:
    ``nonzeros * input_dim * 12`` bytes (44 MiB for 921,600 LoRA parameters and 4 non-zeros),
    independent of the number of vectors projected.

    Projecting costs ``2 * nonzeros * input_dim`` FLOPs per vector (a multiply and an add per
    entry), done as ``nonzeros`` ``index_add_`` calls on the batch. These are scatter-adds, which
    ``torch.utils.flop_counter.FlopCounterMode`` does not count; :meth:`flops` is the charge.

    Example:
        >>> import torch
        >>> from hf_cads.selectors.less.projection import SparseProjection
        >>> projection = SparseProjection(input_dim=50_000, output_dim=512, seed=0)
        >>> x = torch.randn(4, 50_000)
        >>> ratio = projection(x).norm(dim=1) / x.norm(dim=1)
        >>> bool(((ratio > 0.85) & (ratio < 1.15)).all())
        True
    """

    regenerated_per_call = False

    def __init__(
        self, input_dim: int, output_dim: int, seed: int = 0, nonzeros: int = DEFAULT_SPARSE_NONZEROS
    ) -> None:
        _check_dims(input_dim, output_dim)
        if (
            isinstance(nonzeros, bool)
            or not isinstance(nonzeros, (int, np.integer))
            or not 1 <= nonzeros <= output_dim
        ):
            raise ValueError(f"nonzeros must be an integer in [1, output_dim={output_dim}], e.g. 4, got {nonzeros!r}.")
        self.input_dim = int(input_dim)
        self.output_dim = int(output_dim)
        self.seed = int(seed)
        self.kind = "sparse"
        self.nonzeros = int(nonzeros)
        self._hashes: dict[str, tuple[Any, Any]] = {}

    def describe(self) -> dict[str, Any]:
        """What identifies this projection (for feature-index keys)."""
        return {
            "type": "sparse",
            "input_dim": self.input_dim,
            "output_dim": self.output_dim,
            "seed": self.seed,
            "nonzeros": self.nonzeros,
        }

    def hashes(self, device: Any = "cpu") -> tuple[Any, Any]:
        """``(positions, signs)``, each ``nonzeros x input_dim``: where each coordinate goes and with
        which scaled sign (``+-1/sqrt(nonzeros)``), on ``device``."""
        import torch

        key = str(device)
        if key not in self._hashes:
            generator = torch.Generator().manual_seed(chunk_seed(self.seed, 0))
            bounds = [self.output_dim * block // self.nonzeros for block in range(self.nonzeros + 1)]
            positions = torch.empty(self.nonzeros, self.input_dim, dtype=torch.int64)
            for block in range(self.nonzeros):
                start, stop = bounds[block], bounds[block + 1]
                positions[block] = torch.randint(start, stop, (self.input_dim,), generator=generator)
            signs = torch.randint(0, 2, (self.nonzeros, self.input_dim), generator=generator, dtype=torch.float32)
            signs.mul_(2.0).sub_(1.0).mul_(1.0 / math.sqrt(self.nonzeros))
            self._hashes[key] = (positions.to(device), signs.to(device))
        return self._hashes[key]

    def __call__(self, vectors: Any) -> Any:
        """Project ``batch x input_dim`` vectors to ``batch x output_dim`` (float32)."""
        import torch

        _check_vectors(vectors, self.input_dim)
        vectors = vectors.float()
        positions, signs = self.hashes(vectors.device)
        out = torch.zeros(vectors.shape[0], self.output_dim, dtype=torch.float32, device=vectors.device)
        for block in range(self.nonzeros):
            out.index_add_(1, positions[block], vectors * signs[block])
        return out

    def flops(self, num_vectors: int) -> float:
        """FLOPs of projecting ``num_vectors`` vectors: a multiply and an add per non-zero entry."""
        return float(2 * num_vectors * self.nonzeros * self.input_dim)


Projection = SparseProjection | RandomProjection


def make_projection(
    kind: ProjectionType, input_dim: int, output_dim: int, seed: int = 0, nonzeros: int = DEFAULT_SPARSE_NONZEROS
) -> Projection:
    """The projection named ``kind`` (``sparse``, ``rademacher`` or ``gaussian``).

    Example:
        >>> make_projection("gaussian", 1000, 16, seed=1).describe()["type"]
        'gaussian'
    """
    if kind == "sparse":
        return SparseProjection(input_dim, output_dim, seed, nonzeros)
    if kind in ("rademacher", "gaussian"):
        return RandomProjection(input_dim, output_dim, seed, kind)
    raise ValueError(f"projection type must be one of {list(PROJECTION_TYPES)}, got {kind!r}.")
