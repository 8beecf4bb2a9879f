"""Options of the LESS selector (:class:`LESSSelectorConfig`), checked when the config is built.

Example:
    >>> from hf_cads.selectors.less.config import LESSSelectorConfig
    >>> LESSSelectorConfig(projection_dim=64, lora_target_modules="q_proj").lora_target_modules
    ('q_proj',)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ...lora import DEFAULT_LORA_R, DEFAULT_LORA_TARGET_MODULES, lora_options
from ..options import SelectorConfig
from .gradients import GRADIENT_METHODS, GradientMethod
from .projection import DEFAULT_SPARSE_NONZEROS, PROJECTION_TYPES, ProjectionType


@dataclass
class LESSSelectorConfig(SelectorConfig):
    """Options of :class:`LESSSelector`. Defaults follow the paper where the model size allows.

    Args:
        model_name_or_path: the selection model (alias, folder or Hub id); ignored when a model
            object is passed (BudgetedTrainer passes the model it trains).
        warmup_fraction: share of the pool the warmup trains on (paper: 5%).
        warmup_epochs: warmup epochs = number of checkpoints whose features are summed (paper: 4).
        warmup_batch_size: sequences per warmup optimizer step (default: ``batch_size``).
        learning_rate: peak warmup learning rate (paper: 2e-5).
        lr_warmup_ratio: share of warmup steps with a linearly rising learning rate (paper: 0.03).
        lora_config: a peft ``LoraConfig`` to take the four LoRA options below from instead.
        lora_r / lora_alpha / lora_dropout / lora_target_modules: the LoRA adapters trained in the
            warmup; their parameters are the ones gradients are taken of (paper: rank 128 with
            alpha 512 on q/k/v/o for 7B models; rank 8 keeps the same alpha/r ratio for small ones).
        projection_dim: dimension of the gradient features (paper: 8192); at most the number of
            LoRA parameters (projecting up adds cost and no information).
        projection_type: ``sparse`` (default: each gradient coordinate hashed to
            ``projection_nonzeros`` signed outputs, one scatter-add per batch, no matrix),
            ``rademacher`` (dense +-1 matrix, as in the paper) or ``gaussian`` (dense normal).
            All are seeded Johnson-Lindenstrauss projections; see :mod:`hf_cads.selectors.less.projection`.
        projection_nonzeros: non-zeros per input coordinate of the sparse projection.
        subtask_column: target column naming each row's sub-task (e.g. ``task`` for several BBH
            tasks); a pool row scores its best sub-task. ``None`` treats the target as one task.
        aggregate: ``mean`` scores a pool row by its mean similarity to the rows of a sub-task
            (the paper's); ``round_robin`` treats each target row separately and lets each in
            turn take its most similar remaining pool row (see
            :mod:`hf_cads.selectors.round_robin`; not combined with ``subtask_column``).
        feature_dir: folder of the feature index (warmup checkpoints, pool and target feature
            shards). A rerun on the same pool and model resumes from what is there, and a
            selection for another target reuses the pool features; an index of another model,
            pool or projection is refused. ``None``: a folder per index under ``cache_dir`` (or
            ``$HF_CADS_CACHE``) when one is set, else a temporary folder.
        shard_size: pool rows per feature file.
        feature_dtype: ``float16`` (half the disk) or ``float32``.
        gradient_buffer_mb: dense projections only: memory for per-example gradients waiting to be
            projected; the matrix is regenerated once per buffer, so a larger buffer amortises it.
            (The sparse projection projects each batch as it comes.)
        gradient_method: how per-example gradients are computed (same values, different speed):
            ``auto`` (one batched backward when every trainable parameter is in a linear layer, as
            with LoRA; else ``vmap``), ``linear``, ``vmap`` or ``loop`` (one backward per row).

    Example:
        >>> LESSSelectorConfig(projection_dim=1024, warmup_epochs=2).warmup_epochs
        2
    """

    model_name_or_path: str = "smollm2-135m-instruct"
    warmup_fraction: float = 0.05
    warmup_epochs: int = 4
    warmup_batch_size: int | None = None
    learning_rate: float = 2e-5
    lr_warmup_ratio: float = 0.03
    lora_r: int = DEFAULT_LORA_R
    lora_alpha: float = 32.0
    lora_dropout: float = 0.1
    lora_target_modules: Sequence[str] = DEFAULT_LORA_TARGET_MODULES
    lora_config: Any = field(default=None, metadata={"affects_result": False})
    projection_dim: int = 8192
    projection_type: ProjectionType = "sparse"
    projection_nonzeros: int = DEFAULT_SPARSE_NONZEROS
    subtask_column: str | None = None
    aggregate: Literal["mean", "round_robin"] = "mean"
    feature_dir: str | None = field(default=None, metadata={"affects_result": False})
    shard_size: int = 1024
    feature_dtype: Literal["float16", "float32"] = "float16"
    gradient_buffer_mb: float = field(default=256.0, metadata={"affects_result": False})
    gradient_method: GradientMethod = field(default="auto", metadata={"affects_result": False})

    def __post_init__(self) -> None:
        if self.lora_config is not None:  # a peft LoraConfig sets the four LoRA options (and is not kept)
            vars(self).update(lora_options(self.lora_config), lora_config=None)

        def positive_int(name: str, value: Any, hint: str) -> None:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"{name} must be a positive integer ({hint}), got {value!r}.")

        positive_int("projection_dim", self.projection_dim, "the gradient feature size, e.g. 8192")
        positive_int(
            "projection_nonzeros",
            self.projection_nonzeros,
            "non-zeros per coordinate of the sparse projection, e.g. 4",
        )
        if self.projection_nonzeros > self.projection_dim:
            raise ValueError(
                f"projection_nonzeros={self.projection_nonzeros} exceeds projection_dim={self.projection_dim}."
            )
        positive_int("warmup_epochs", self.warmup_epochs, "one checkpoint per epoch, e.g. 4")
        positive_int("lora_r", self.lora_r, "the LoRA rank, e.g. 8")
        positive_int("shard_size", self.shard_size, "pool rows per feature file, e.g. 1024")
        if self.warmup_batch_size is not None:
            positive_int("warmup_batch_size", self.warmup_batch_size, "sequences per warmup step")
        if not (isinstance(self.warmup_fraction, (int, float)) and 0 < self.warmup_fraction <= 1):
            raise ValueError(f"warmup_fraction must be in (0, 1], e.g. 0.05, got {self.warmup_fraction!r}.")
        if not (
            isinstance(self.learning_rate, (int, float))
            and math.isfinite(self.learning_rate)
            and self.learning_rate > 0
        ):
            raise ValueError(f"learning_rate must be a finite number > 0, got {self.learning_rate!r}.")
        if not 0 <= self.lr_warmup_ratio < 1:
            raise ValueError(f"lr_warmup_ratio must be in [0, 1), got {self.lr_warmup_ratio!r}.")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}.")
        if self.projection_type not in PROJECTION_TYPES:
            raise ValueError(f"projection_type must be one of {list(PROJECTION_TYPES)}, got {self.projection_type!r}.")
        if self.aggregate not in ("mean", "round_robin"):
            raise ValueError(f"aggregate must be 'mean' or 'round_robin', got {self.aggregate!r}.")
        if self.aggregate == "round_robin" and self.subtask_column is not None:
            raise ValueError(
                "aggregate='round_robin' already treats every target row on its own; drop subtask_column "
                "(or use aggregate='mean' to score by sub-task)."
            )
        if self.feature_dtype not in ("float16", "float32"):
            raise ValueError(f"feature_dtype must be 'float16' or 'float32', got {self.feature_dtype!r}.")
        if self.gradient_method not in GRADIENT_METHODS:
            raise ValueError(f"gradient_method must be one of {list(GRADIENT_METHODS)}, got {self.gradient_method!r}.")
        if not self.gradient_buffer_mb > 0:
            raise ValueError(f"gradient_buffer_mb must be > 0, got {self.gradient_buffer_mb!r}.")
        if isinstance(self.lora_target_modules, str):
            self.lora_target_modules = (self.lora_target_modules,)
        self.lora_target_modules = tuple(self.lora_target_modules)
        if not self.lora_target_modules:
            raise ValueError(
                "lora_target_modules is empty; name the linear layers to adapt, e.g. ('q_proj', 'v_proj')."
            )
