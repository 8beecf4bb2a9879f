"""LESS: targeted data selection by the similarity of optimizer-aware gradient features.

Implements LESS (Xia, Malladi, Gururangan, Arora & Chen, "LESS: Selecting Influential Data for
Targeted Instruction Tuning", ICML 2024, arXiv:2402.04333):

1. **Warmup.** LoRA-train the selection model on a random ``warmup_fraction`` of the pool for
   ``warmup_epochs`` epochs (AdamW, linear schedule with warmup), keeping a checkpoint at the end of
   every epoch: LoRA weights, Adam moments and the epoch's mean learning rate.
2. **Gradient features** at every checkpoint, LoRA parameters only. A pool example is represented by
   the direction Adam would move the weights if its next step saw that example alone,
   ``m' / (sqrt(v') + eps)`` with the checkpoint's moments; a target example by its plain gradient.
   Both are projected to ``projection_dim`` dimensions with a seeded Johnson-Lindenstrauss
   projection (sparse by default: each coordinate hashed to a few signed outputs; the paper's
   dense Rademacher or a Gaussian matrix as options) and L2-normalised.
3. **Score.** Per checkpoint, the cosine similarity of a pool feature with each target feature of a
   sub-task, averaged over that sub-task's examples; checkpoints are weighted by their learning
   rate and summed; with several sub-tasks (``subtask_column``) a row's score is its best sub-task.
   The top-k rows are kept.

LESS is by far the most expensive selector here (a forward and backward pass per pool row and
checkpoint, plus the warmup): under a compute budget it only pays off when the trained model is
much (~10x) larger than the selection model (Yin & Rush, "Compute-Constrained Data Selection",
2024). Per-example gradients come from one batched backward per batch (see
:class:`~hf_cads.selectors.gradients.PerExampleGradients`). Every FLOP is charged: warmup training, one forward + backward per example and checkpoint,
the random projection and the similarity products, and :meth:`LESSSelector.estimate_flops`
predicts that total before any work.

Warmup checkpoints and pool features form a reusable index (:mod:`hf_cads.selectors.less_index`),
keyed by the model, pool, warmup options and projection: features are written in shards (float16
by default), so a large pool never has to fit in memory, an interrupted run resumes from its last
finished shard, and a selection for another target on the same pool computes only the target's
gradients (:meth:`LESSSelector.select_many` selects for several targets in one pass). Under
``accelerate launch`` the warmup runs once, on the main process, and the pool's shards are split
over the processes.

Example:
    >>> from hf_cads import get_selector
    >>> selector = get_selector("less", model=model, tokenizer=tokenizer, subtask_column="task")  # doctest: +SKIP
    >>> result = selector.select(pool, target=validation, fraction=0.05)  # doctest: +SKIP
    >>> result.extras["flops_breakdown"]  # doctest: +SKIP
    {'warmup': ..., 'pool_gradients': ..., 'target_gradients': ..., 'projection': ..., 'similarity': ...}
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Sequence

import numpy as np

from ..cache import cache_key, resolve_cache_dir, weights_digest
from ..lora import DEFAULT_LORA_R, DEFAULT_LORA_TARGET_MODULES, lora_options
from ..data import column_values, get_texts
from ..distributed import Processes, current_processes
from ..flops import FlopProfile, matmul_flops
from .base import ScoreOutput, SelectionResult, Selector, SelectorConfig
from .gradients import GRADIENT_METHODS, GradientMethod, PerExampleGradients, adam_update_direction, trainable_parameters
from .less_index import INDEX_FORMAT, FeatureIndex, read_manifest, target_features_path
from .projection import DEFAULT_SPARSE_NONZEROS, PROJECTION_TYPES, Projection, ProjectionType, chunk_seed, make_projection
from .perplexity import CausalLMSelectorMixin
from .registry import register_selector
from .scoring import TokenBatcher, check_next_token_targets, masked_token_losses

logger = logging.getLogger(__name__)

# Options that change a LESS result but not the warmup checkpoints or the pool's features: target-side
# options, and the duplicate handling, which reaches the features only through the pool rows the
# index key hashes anyway. An index built with other values of these is reused.
_NOT_IN_INDEX_KEY = ("subtask_column", "target_text_column", "allow_duplicates", "deduplicate")


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
            All are seeded Johnson-Lindenstrauss projections; see :mod:`hf_cads.selectors.projection`.
        projection_nonzeros: non-zeros per input coordinate of the sparse projection.
        subtask_column: target column naming each row's sub-task (e.g. ``task`` for several BBH
            tasks); a pool row scores its best sub-task. ``None`` treats the target as one task.
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
        positive_int("projection_nonzeros", self.projection_nonzeros, "non-zeros per coordinate of the sparse projection, e.g. 4")
        if self.projection_nonzeros > self.projection_dim:
            raise ValueError(f"projection_nonzeros={self.projection_nonzeros} exceeds projection_dim={self.projection_dim}.")
        positive_int("warmup_epochs", self.warmup_epochs, "one checkpoint per epoch, e.g. 4")
        positive_int("lora_r", self.lora_r, "the LoRA rank, e.g. 8")
        positive_int("shard_size", self.shard_size, "pool rows per feature file, e.g. 1024")
        if self.warmup_batch_size is not None:
            positive_int("warmup_batch_size", self.warmup_batch_size, "sequences per warmup step")
        if not (isinstance(self.warmup_fraction, (int, float)) and 0 < self.warmup_fraction <= 1):
            raise ValueError(f"warmup_fraction must be in (0, 1], e.g. 0.05, got {self.warmup_fraction!r}.")
        if not (isinstance(self.learning_rate, (int, float)) and math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be a finite number > 0, got {self.learning_rate!r}.")
        if not 0 <= self.lr_warmup_ratio < 1:
            raise ValueError(f"lr_warmup_ratio must be in [0, 1), got {self.lr_warmup_ratio!r}.")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}.")
        if self.projection_type not in PROJECTION_TYPES:
            raise ValueError(f"projection_type must be one of {list(PROJECTION_TYPES)}, got {self.projection_type!r}.")
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
            raise ValueError("lora_target_modules is empty; name the linear layers to adapt, e.g. ('q_proj', 'v_proj').")


@dataclass
class WarmupCheckpoint:
    """The state LESS keeps after a warmup epoch: LoRA weights, Adam moments and learning rate.

    ``learning_rate`` is the epoch's mean learning rate, the checkpoint's weight in the score;
    ``step`` counts the optimizer steps taken so far (for Adam's bias correction).
    """

    epoch: int
    step: int
    learning_rate: float
    lora_weights: dict[str, Any]
    exp_avg: dict[str, Any]
    exp_avg_sq: dict[str, Any]
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def flat_moments(self, names: Sequence[str], device: Any) -> tuple[Any, Any]:
        """Adam's first and second moments as flat float32 vectors in the order of ``names``."""
        import torch

        def flat(state: dict[str, Any]) -> Any:
            return torch.cat([state[name].reshape(-1).float() for name in names]).to(device)

        return flat(self.exp_avg), flat(self.exp_avg_sq)

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "learning_rate": self.learning_rate,
            "lora_weights": self.lora_weights,
            "exp_avg": self.exp_avg,
            "exp_avg_sq": self.exp_avg_sq,
            "betas": list(self.betas),
            "eps": self.eps,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "WarmupCheckpoint":
        return cls(**{**data, "betas": tuple(data["betas"])})


def linear_schedule(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate multiplier at ``step``: linear rise over ``warmup_steps``, then linear decay to 0."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def influence_scores(
    pool_features: Any, target_means: Any, learning_rate: float
) -> Any:
    """One checkpoint's LESS term: ``learning_rate * cos(pool row, target row)`` averaged per sub-task.

    Features are unit-norm, so the mean cosine over a sub-task's examples equals the dot product
    with their mean feature: ``pool_features`` (rows x d) times ``target_means`` (sub-tasks x d)
    transposed.
    """
    return (pool_features @ target_means.T) * learning_rate


@dataclass
class LESSInputs:
    """Tokenised pool and target plus each target row's sub-task."""

    pool_ids: list[list[int]]
    target_ids: list[list[int]]
    subtask_index: np.ndarray
    subtasks: list[str]
    extras: dict[str, Any] = field(default_factory=dict)


@register_selector("less")
class LESSSelector(CausalLMSelectorMixin, Selector):
    """LESS (Xia et al., 2024): keep the pool rows whose Adam update direction best aligns with the
    target's gradients. See the module docstring for the method and its cost.

    The selection model is never modified: a model passed in (plain or already LoRA-wrapped, as
    BudgetedTrainer passes it) is deep-copied, any adapters are merged, and fresh seeded LoRA
    adapters are trained on the copy.

    The per-example step, :meth:`gradient_features`, works on any subset of rows, so feature
    extraction is split across the processes of ``accelerate launch`` / ``torchrun``: the main
    process runs :meth:`warmup` and the target features and sends them to the others, each process
    computes its own block of pool shards, and every process gets the same scores as one process
    would. :meth:`select_many` selects for several targets from one pass over the pool, and with
    ``feature_dir`` (or ``cache_dir``) a later selection for another target reuses the pool features.

    Example:
        >>> from hf_cads import get_selector
        >>> less = get_selector("less", model=model, tokenizer=tokenizer, projection_dim=8192,
        ...                     subtask_column="task", feature_dir="less_features")  # doctest: +SKIP
        >>> less.estimate_flops(pool, validation)  # doctest: +SKIP
        >>> result = less.select(pool, target=validation, fraction=0.05)  # doctest: +SKIP
        >>> results = less.select_many(pool, {"dyck": dyck_val, "boolean": boolean_val}, k=500)  # doctest: +SKIP
    """

    config_class = LESSSelectorConfig
    uses_model = True
    reuses_training_model = True
    distributes_own_work = True

    def __init__(self, config: LESSSelectorConfig | None = None, *, model: Any = None, tokenizer: Any = None, **kwargs: Any) -> None:
        super().__init__(config, model=model, tokenizer=tokenizer, **kwargs)
        self._caller_owns_model = model is not None
        self._lora_model: Any = None
        self._initial_lora: dict[str, Any] = {}
        self._model_fingerprint = ""
        self._projection: tuple[tuple[Any, ...], Projection] | None = None

    # -- model ----------------------------------------------------------------------------------
    def selection_model(self) -> Any:
        """The LoRA-wrapped selection model (built once, from a copy of a model passed in)."""
        if self._lora_model is None:
            base, _ = self._load_model()
            self._lora_model = self._with_fresh_lora(base)
            self._initial_lora = {n: p.detach().clone() for n, p in trainable_parameters(self._lora_model).items()}
            self._model_fingerprint = weights_digest(self._lora_model)
        return self._lora_model

    def _with_fresh_lora(self, model: Any) -> Any:
        import torch
        from peft import LoraConfig, PeftModel, get_peft_model

        if not isinstance(model, torch.nn.Module) or getattr(model, "config", None) is None:
            raise TypeError(
                f"LESS needs a transformers causal LM (a torch module with .config), got {type(model).__name__}."
            )
        if self._caller_owns_model:
            model = copy.deepcopy(model)
        if isinstance(model, PeftModel):
            if not hasattr(model.base_model, "merge_and_unload"):
                raise TypeError(
                    f"The model carries {type(model.base_model).__name__} adapters, which cannot be merged; pass the "
                    "base model (LESS adds its own LoRA adapters)."
                )
            model = model.merge_and_unload()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        config = self.config
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.lora_target_modules),
            bias="none",
        )
        linear_names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        try:
            with _seeded(config.seed, _device_of(model)):
                wrapped = get_peft_model(model, lora)
        except ValueError as err:
            raise ValueError(
                f"LESS trains LoRA adapters on lora_target_modules={list(config.lora_target_modules)}, but "
                f"{type(model).__name__} has no LoRA-compatible (linear) layers of those names; its linear layers "
                f"are {linear_names or 'none'}. Set lora_target_modules to some of them. ({err})"
            ) from err
        if not trainable_parameters(wrapped):
            raise ValueError(f"No LoRA parameters were created for {type(model).__name__}; check lora_target_modules.")
        wrapped.eval()
        return wrapped

    def _profile(self) -> FlopProfile:
        return FlopProfile.from_model(self.selection_model())

    def _batcher(self, batch_size: int | None = None) -> TokenBatcher:
        _, tokenizer = self._load_model()
        # EOS appended as BudgetedTrainer does, so warmup and gradients see the training format.
        return TokenBatcher(tokenizer, batch_size or self.config.batch_size, self.config.max_length, add_eos=True)

    def num_lora_params(self) -> int:
        return int(sum(p.numel() for p in trainable_parameters(self.selection_model()).values()))

    def projection(self) -> Projection:
        """The seeded projection of LoRA gradients to ``projection_dim`` (same on every process)."""
        config = self.config
        num_params = self.num_lora_params()
        if config.projection_dim > num_params:
            raise ValueError(
                f"projection_dim={config.projection_dim} is larger than the {num_params:,} LoRA gradient entries it "
                f"projects: projecting up adds cost and no information. Set projection_dim <= {num_params} "
                "(or raise lora_r / add lora_target_modules)."
            )
        key = (num_params, config.projection_dim, config.seed, config.projection_type, config.projection_nonzeros)
        if self._projection is None or self._projection[0] != key:
            # Kept: the sparse projection's hashes are drawn once and reused for every batch.
            self._projection = (key, make_projection(config.projection_type, num_params, config.projection_dim,
                                                     config.seed, config.projection_nonzeros))
        return self._projection[1]

    # -- inputs ---------------------------------------------------------------------------------
    def encode(self, dataset: Any, role: str = "pool") -> list[list[int]]:
        """Token ids of every row (text from ``text_column`` / ``target_text_column``)."""
        _, tokenizer = self._load_model()
        column = self.config.text_column if role == "pool" else (self.config.target_text_column or self.config.text_column)
        token_ids = self._batcher().tokenize(get_texts(dataset, column, tokenizer, role=role))
        check_next_token_targets(token_ids, role)
        return token_ids

    def subtasks(self, target: Any) -> tuple[np.ndarray, list[str]]:
        """Each target row's sub-task index and the sub-task names (one sub-task without a column)."""
        column = self.config.subtask_column
        if column is None:
            return np.zeros(len(target), dtype=np.int64), ["target"]
        if column not in target.column_names:
            raise ValueError(
                f"subtask_column={column!r} is not a column of the target dataset (columns: {target.column_names}). "
                "Name the column holding each row's sub-task (e.g. 'task'), or set subtask_column=None to treat "
                "the target as one task."
            )
        labels = [str(value) for value in column_values(target, column)]
        names = sorted(set(labels))
        return np.array([names.index(label) for label in labels], dtype=np.int64), names

    def _inputs(self, pool: Any, target: Any) -> LESSInputs:
        index, names = self.subtasks(target)
        return LESSInputs(self.encode(pool, "pool"), self.encode(target, "target"), index, names)

    # -- 1. warmup ------------------------------------------------------------------------------
    def warmup_plan(self, pool_size: int) -> list[list[np.ndarray]]:
        """Row groups of every warmup step, by epoch: a seeded sample of the pool, reshuffled each epoch."""
        config = self.config
        size = max(1, int(round(config.warmup_fraction * pool_size)))
        sample = np.sort(np.random.default_rng([config.seed, 0]).choice(pool_size, size=size, replace=False))
        batch = config.warmup_batch_size or config.batch_size
        plan = []
        for epoch in range(config.warmup_epochs):
            order = np.random.default_rng([config.seed, 1, epoch]).permutation(sample)
            plan.append([order[i : i + batch] for i in range(0, len(order), batch)])
        return plan

    def _warmup_epoch_flops(self, profile: FlopProfile, pool_ids: Sequence[Sequence[int]], batches: list[np.ndarray]) -> float:
        return float(sum(profile.train_step_flops(len(rows), max(len(pool_ids[r]) for r in rows)) for rows in batches))

    def warmup(
        self, pool_ids: Sequence[Sequence[int]], store: FeatureIndex | None = None, *, charge_loaded: bool = True
    ) -> tuple[list[WarmupCheckpoint], float]:
        """LoRA-train on the warmup sample; return one checkpoint per epoch and the FLOPs it costs.

        With a ``store``, finished epochs are loaded instead of retrained. Their FLOPs are still
        reported (they were spent, if by an earlier, interrupted run) unless ``charge_loaded`` is
        ``False`` (a complete index: the run that built it was charged).
        """
        import torch
        from tqdm.auto import tqdm

        model = self.selection_model()
        params = trainable_parameters(model)
        with torch.no_grad():
            for name, value in self._initial_lora.items():
                params[name].copy_(value)
        config = self.config
        optimizer = torch.optim.AdamW(params.values(), lr=config.learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        plan = self.warmup_plan(len(pool_ids))
        total_steps = sum(len(batches) for batches in plan)
        ramp_steps = math.ceil(config.lr_warmup_ratio * total_steps)
        profile = self._profile()
        batcher = self._batcher()
        device = _device_of(model)
        checkpoints: list[WarmupCheckpoint] = []
        flops, step = 0.0, 0
        progress = tqdm(total=total_steps, desc="LESS warmup", disable=not config.show_progress)
        try:
            for epoch, batches in enumerate(plan):
                epoch_flops = self._warmup_epoch_flops(profile, pool_ids, batches)
                data = store.load_checkpoint(epoch) if store is not None else None
                stored = WarmupCheckpoint.from_dict(data) if data is not None else None
                flops += epoch_flops if (stored is None or charge_loaded) else 0.0
                if stored is not None:
                    self._load_weights(stored)
                    _set_adam_state(optimizer, params, stored)
                    step = stored.step
                    checkpoints.append(stored)
                    progress.update(len(batches))
                    continue
                learning_rates = []
                model.train()
                # Dropout draws from an RNG seeded per epoch, so a resumed run retrains identically.
                with _seeded(chunk_seed(config.seed, 1000 + epoch), device):
                    for rows in batches:
                        learning_rate = config.learning_rate * linear_schedule(step, total_steps, ramp_steps)
                        for group in optimizer.param_groups:
                            group["lr"] = learning_rate
                        batch = batcher.pad(pool_ids, rows)
                        input_ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
                        logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
                        masked_token_losses(logits, input_ids, mask).mean().backward()
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                        learning_rates.append(learning_rate)
                        step += 1
                        progress.update(1)
                model.eval()
                checkpoint = _capture_checkpoint(optimizer, params, epoch, step, float(np.mean(learning_rates)))
                if store is not None:
                    store.save_checkpoint(epoch, checkpoint.to_dict())
                checkpoints.append(checkpoint)
        finally:
            progress.close()
            model.eval()
        return checkpoints, flops

    def _load_weights(self, checkpoint: WarmupCheckpoint) -> None:
        import torch

        params = trainable_parameters(self.selection_model())
        with torch.no_grad():
            for name, value in checkpoint.lora_weights.items():
                params[name].copy_(value)

    # -- 2. gradient features (per row, separable) ----------------------------------------------
    def gradient_features(
        self,
        token_ids: Sequence[Sequence[int]],
        checkpoint: WarmupCheckpoint,
        *,
        optimizer_aware: bool,
        progress: Any = None,
    ) -> tuple[np.ndarray, float]:
        """Unit-norm projected gradient features of the given rows at ``checkpoint``.

        ``optimizer_aware=True`` (pool rows) turns each gradient into Adam's update direction with
        the checkpoint's moments; ``False`` (target rows) keeps the plain gradient. Each row's
        feature depends on that row alone, so any subset of rows can be computed anywhere.
        Returns ``rows x projection_dim`` float32 features and the FLOPs spent.
        """
        import torch

        model = self.selection_model()
        self._load_weights(checkpoint)
        device = _device_of(model)
        gradients = PerExampleGradients(model, self.config.gradient_method)
        projection = self.projection()
        profile = self._profile()
        moments = checkpoint.flat_moments(gradients.names, device) if optimizer_aware else None
        capacity = self.config.batch_size
        if projection.regenerated_per_call:  # a dense matrix: project many rows per regeneration
            capacity = max(capacity, int(self.config.gradient_buffer_mb * 2**20 // (4 * gradients.num_params)))
        features = np.zeros((len(token_ids), self.config.projection_dim), dtype=np.float32)
        pending: list[Any] = []
        pending_rows: list[np.ndarray] = []
        flops = 0.0

        def project_pending() -> None:
            if pending:
                with torch.no_grad():
                    projected = torch.nn.functional.normalize(projection(torch.cat(pending)), dim=-1)
                features[np.concatenate(pending_rows)] = projected.cpu().numpy()
                pending.clear()
                pending_rows.clear()

        for batch in self._batcher().batches(token_ids):
            grads = gradients(batch.input_ids.to(device), batch.attention_mask.to(device)).float()
            if moments is not None:
                grads = adam_update_direction(grads, *moments, step=checkpoint.step, betas=checkpoint.betas, eps=checkpoint.eps)
            pending.append(grads)
            pending_rows.append(batch.rows)
            flops += profile.train_step_flops(*batch.shape)
            if sum(len(rows) for rows in pending_rows) >= capacity:
                project_pending()
            if progress is not None:
                progress.update(len(batch.rows))
        project_pending()
        return features, flops + projection.flops(len(token_ids))

    def feature_flops(self, token_ids: Sequence[Sequence[int]]) -> float:
        """FLOPs :meth:`gradient_features` spends on these rows (per checkpoint), without running it."""
        profile = self._profile()
        shapes = self._batcher().padded_shapes(token_ids)
        return float(sum(profile.train_step_flops(b, s) for b, s in shapes)) + self.projection().flops(len(token_ids))

    # -- 3. scores ------------------------------------------------------------------------------
    def _shards(self, pool_size: int) -> list[range]:
        size = self.config.shard_size
        return [range(start, min(pool_size, start + size)) for start in range(0, pool_size, size)]

    def flops_breakdown(self, inputs: LESSInputs) -> dict[str, float]:
        """Every FLOP of :meth:`score`, by stage, computed without doing the work.

        When the feature index for this pool is complete (an earlier run built it), its warmup
        and pool features are reused and cost nothing here; so do stored features of this target.
        """
        profile = self._profile()
        epochs = self.config.warmup_epochs
        projection = self.projection()
        key = self.index_key(inputs.pool_ids)
        root = self._index_root(key)
        manifest = read_manifest(root) if root is not None else None
        reused = bool(manifest and manifest.get("key") == key and manifest.get("complete"))
        target_reused = reused and all(
            target_features_path(root, _ids_digest(inputs.target_ids), c).exists() for c in range(epochs)  # type: ignore[arg-type]
        )
        pool_rows = 0 if reused else len(inputs.pool_ids)
        target_rows = 0 if target_reused else len(inputs.target_ids)
        shapes = [s for shard in self._shards(len(inputs.pool_ids)) for s in self._batcher().padded_shapes([inputs.pool_ids[i] for i in shard])]
        pool_gradients = 0.0 if reused else epochs * sum(profile.train_step_flops(b, s) for b, s in shapes)
        target_shapes = [] if target_reused else self._batcher().padded_shapes(inputs.target_ids)
        return {
            "warmup": 0.0 if reused else self._warmup_flops(inputs.pool_ids),
            "pool_gradients": float(pool_gradients),
            "target_gradients": float(epochs * sum(profile.train_step_flops(b, s) for b, s in target_shapes)),
            "projection": epochs * (projection.flops(pool_rows) + projection.flops(target_rows)),
            "similarity": epochs * matmul_flops(len(inputs.pool_ids), self.config.projection_dim, len(inputs.subtasks)),
        }

    def _warmup_flops(self, pool_ids: Sequence[Sequence[int]]) -> float:
        profile = self._profile()
        return float(sum(self._warmup_epoch_flops(profile, pool_ids, batches) for batches in self.warmup_plan(len(pool_ids))))

    def estimate_flops(self, pool: Any, target: Any | None) -> float:
        return float(sum(self.flops_breakdown(self._inputs(pool, target)).values()))

    def estimate_flops_split(self, pool: Any, target: Any | None) -> dict[str, float]:
        """:meth:`estimate_flops` as ``{"pool": ..., "target": ...}``: the warmup and pool features (paid
        once for any number of targets; 0 when a complete index holds them) and this target's share."""
        inputs = self._inputs(pool, target)
        shared = sum(self.flops_breakdown(LESSInputs(inputs.pool_ids, [], np.zeros(0, dtype=np.int64), [])).values())
        return {"pool": float(shared), "target": float(sum(self.flops_breakdown(inputs).values()) - shared)}

    def score(self, pool: Any, target: Any | None) -> ScoreOutput:
        return self.score_many(pool, [target])[0]

    def select_many(
        self, pool: Any, targets: Mapping[str, Any] | Sequence[Any], k: int | None = None, fraction: float | None = None
    ) -> dict[str, SelectionResult]:
        """Select ``k`` rows (or ``fraction`` of the pool) for each of several targets in one pass.

        The warmup and the pool's gradient features are computed once (or read from a complete
        feature index) and every pool shard is scored against all targets together. The first
        target's result is charged the shared work; each other result only its own target
        gradients and similarity, with ``extras["feature_index"]["shared_with"]`` naming the first.
        Scores are not read from or written to the score cache (``cache_dir``) here.

        Example:
            >>> results = less.select_many(pool, {"dyck": dyck_val, "boolean": boolean_val}, fraction=0.05)  # doctest: +SKIP
            >>> {name: result.flops for name, result in results.items()}  # doctest: +SKIP
        """
        named = dict(targets) if isinstance(targets, Mapping) else {f"target-{i}": t for i, t in enumerate(targets)}
        if not named:
            raise ValueError("select_many needs at least one target dataset, e.g. {'task': validation}.")
        for target in named.values():
            self.validate_inputs(pool, target)
        unique, dedup = self.unique_pool(pool)
        size = self._resolve_size(unique, dedup, k, fraction)
        outputs = self.score_many(unique, list(named.values()))
        first = next(iter(named))
        results = {}
        for name, output in zip(named, outputs):
            if name != first:
                output.extras["feature_index"]["shared_with"] = first
            results[name] = self.result_from_scores(pool, size, output, dedup)
        return results

    def score_many(self, pool: Any, targets: Sequence[Any]) -> list[ScoreOutput]:
        """Each target's scores of every pool row, from one warmup and one pass over the pool.

        Runs on every process of a distributed launch: the main process runs (or loads) the
        warmup and the target features and sends them to the others, each process computes the
        features and scores of its own block of pool shards, and the scores are gathered (equal to
        a one-process run: the shards, and so the batches, do not depend on the process count).
        The first output charges the warmup and pool features (nothing for what a complete
        feature index provides; its cost is noted in ``extras["feature_index"]``).
        """
        if not targets:
            raise ValueError("score_many needs at least one target dataset.")
        config = self.config
        processes = current_processes()
        pool_ids = self.encode(pool, "pool")
        parts = [(self.encode(target, "target"), *self.subtasks(target)) for target in targets]
        self.projection()  # fails early on a projection_dim larger than the gradients
        shards = self._shards(len(pool_ids))
        with self._index(pool_ids, processes) as index:
            reuse = bool(processes.on_main(lambda: index.complete))
            checkpoints, warmup_flops = processes.on_main(lambda: self.warmup(pool_ids, index, charge_loaded=not reuse))
            target_states = processes.on_main(
                lambda: [self._target_features(index, ids, subtask_index, len(names), checkpoints, reuse)
                         for ids, subtask_index, names in parts]
            )
            means = [np.concatenate([state["means"][c] for state in target_states]) for c in range(len(checkpoints))]
            owned = processes.share(len(shards))
            gathered = processes.gather(lambda: self._score_pool_shards(index, pool_ids, shards, owned, checkpoints, means, reuse, processes))
            by_shard = {number: item for part in gathered for number, item in part.items()}
            pool_charged = {name: float(sum(by_shard[n]["charged"][name] for n in range(len(shards)))) for name in ("pool_gradients", "projection")}
            if not reuse:
                processes.on_main(lambda: index.mark_complete({"warmup": warmup_flops, **pool_charged}))
            index_dir = None if index.temporary else str(index.root)
            original = index.original_flops if reuse else {}
        reused_flops = (self._warmup_flops(pool_ids) - warmup_flops) + sum(by_shard[n]["reused_flops"] for n in range(len(shards)))
        resumed = sum(by_shard[n]["resumed"] for n in range(len(shards)))
        # What the warmup and pool features cost, charged here or reused: paid once for any number of targets.
        pool_flops = warmup_flops + sum(pool_charged.values()) + reused_flops
        sharding = {
            "shards": len(shards),
            "shard_size": int(config.shard_size),
            "processes": processes.world_size,
            "rows_scored_per_process": [sum(len(shards[n]) for n, item in part.items() if item["computed"]) for part in gathered],
        }
        columns = np.cumsum([0] + [len(names) for _, _, names in parts])
        outputs = []
        for number, ((_, _, names), state) in enumerate(zip(parts, target_states)):
            first = number == 0
            subtask_scores = np.concatenate([by_shard[n]["scores"][:, columns[number] : columns[number + 1]] for n in range(len(shards))])
            breakdown = {
                "warmup": warmup_flops if first else 0.0,
                "pool_gradients": pool_charged["pool_gradients"] if first else 0.0,
                "target_gradients": state["charged"]["target_gradients"],
                "projection": (pool_charged["projection"] if first else 0.0) + state["charged"]["projection"],
                "similarity": len(checkpoints) * matmul_flops(len(pool_ids), config.projection_dim, len(names)),
            }
            extras = {
                "flops_breakdown": breakdown,
                "subtasks": names,
                "subtask_scores": subtask_scores,
                "checkpoint_learning_rates": [c.learning_rate for c in checkpoints],
                "num_lora_params": self.num_lora_params(),
                "projection": self.projection().describe(),
                "resumed_feature_files": (resumed if first else 0) + state["resumed"],
                "feature_dir": index_dir,
                "feature_index": {
                    "dir": index_dir,
                    "reused": reuse,
                    "reused_flops": (reused_flops if first else 0.0) + state["reused_flops"],
                    "original_flops": original,
                },
                "sharding": sharding,
                "flops_split": {"pool": pool_flops, "target": float(sum(breakdown.values())) + state["reused_flops"]
                                - (pool_flops - reused_flops if first else 0.0)},
            }
            outputs.append(ScoreOutput(subtask_scores.max(axis=1), float(sum(breakdown.values())), extras))
        return outputs

    def _load_or_compute(
        self, index: FeatureIndex, path: Any, token_ids: Sequence[Sequence[int]], checkpoint: WarmupCheckpoint,
        optimizer_aware: bool, progress: Any,
    ) -> tuple[np.ndarray, float, bool]:
        """Features stored at ``path`` (validated) or computed and stored; their FLOPs; whether loaded.

        Computed features are rounded to ``feature_dtype`` as stored, so a run that reads them back
        scores exactly what the run that wrote them did.
        """
        features = index.load_features(path, len(token_ids), self.config.projection_dim)
        if features is not None:
            if progress is not None:
                progress.update(len(token_ids))
            return features, self.feature_flops(token_ids), True
        computed, flops = self.gradient_features(token_ids, checkpoint, optimizer_aware=optimizer_aware, progress=progress)
        stored = computed.astype(self.config.feature_dtype)
        index.save_features(path, stored)
        return stored.astype(np.float32), flops, False

    def _target_features(
        self, index: FeatureIndex, token_ids: list[list[int]], subtask_index: np.ndarray, num_subtasks: int,
        checkpoints: list[WarmupCheckpoint], reuse: bool,
    ) -> dict[str, Any]:
        """One target's mean feature per sub-task at every checkpoint, and what they cost."""
        import torch
        from tqdm.auto import tqdm

        key = _ids_digest(token_ids)
        charged = {"target_gradients": 0.0, "projection": 0.0}
        resumed, reused_flops, means = 0, 0.0, []
        projection_flops = self.projection().flops(len(token_ids))
        total = len(checkpoints) * len(token_ids)
        with tqdm(total=total, desc="LESS target features", disable=not self.config.show_progress) as progress:
            for number, checkpoint in enumerate(checkpoints):
                features, flops, loaded = self._load_or_compute(
                    index, index.target_path(key, number), token_ids, checkpoint, False, progress
                )
                if loaded and reuse:
                    reused_flops += flops
                else:
                    resumed += int(loaded)
                    charged["target_gradients"] += flops - projection_flops
                    charged["projection"] += projection_flops
                tensor = torch.from_numpy(features)
                means.append(torch.stack(
                    [tensor[torch.from_numpy(subtask_index == s)].mean(dim=0) for s in range(num_subtasks)]
                ).numpy())
        return {"means": means, "charged": charged, "resumed": resumed, "reused_flops": reused_flops}

    def _score_pool_shards(
        self, index: FeatureIndex, pool_ids: list[list[int]], shards: list[range], owned: range,
        checkpoints: list[WarmupCheckpoint], means: list[np.ndarray], reuse: bool, processes: Processes,
    ) -> dict[int, dict[str, Any]]:
        """Scores (rows x all targets' sub-tasks) of this process's pool shards, and their cost."""
        import torch
        from tqdm.auto import tqdm

        done: dict[int, dict[str, Any]] = {}
        total = len(checkpoints) * sum(len(shards[n]) for n in owned)
        show = self.config.show_progress and processes.is_main
        with tqdm(total=total, desc="LESS pool features", disable=not show) as progress:
            for number in owned:
                rows = shards[number]
                token_ids = [pool_ids[i] for i in rows]
                projection_flops = self.projection().flops(len(rows))
                item = {"scores": np.zeros((len(rows), means[0].shape[0])), "charged": {"pool_gradients": 0.0, "projection": 0.0},
                        "reused_flops": 0.0, "resumed": 0, "computed": False}
                for position, checkpoint in enumerate(checkpoints):
                    features, flops, loaded = self._load_or_compute(
                        index, index.pool_path(position, number), token_ids, checkpoint, True, progress
                    )
                    item["computed"] |= not loaded
                    if loaded and reuse:
                        item["reused_flops"] += flops
                    else:
                        item["resumed"] += int(loaded)
                        item["charged"]["pool_gradients"] += flops - projection_flops
                        item["charged"]["projection"] += projection_flops
                    with torch.no_grad():
                        item["scores"] += influence_scores(
                            torch.from_numpy(features), torch.from_numpy(means[position]), checkpoint.learning_rate
                        ).double().numpy()
                done[number] = item
        return done

    # -- storage --------------------------------------------------------------------------------
    def index_description(self, pool_ids: Sequence[Sequence[int]]) -> dict[str, Any]:
        """What the warmup checkpoints and pool features depend on: model, options, projection, pool."""
        self.selection_model()
        options = {k: v for k, v in self.config.result_options().items() if k not in _NOT_IN_INDEX_KEY}
        return {
            "model": self._model_fingerprint,
            "options": json.loads(json.dumps(options, default=str)),
            "projection": self.projection().describe(),
            "pool": {"rows": len(pool_ids), "token_ids_sha256": _ids_digest(pool_ids)},
        }

    def index_key(self, pool_ids: Sequence[Sequence[int]]) -> str:
        return cache_key({"format": INDEX_FORMAT, **self.index_description(pool_ids)})

    def _index_root(self, key: str) -> Path | None:
        """``feature_dir``; else a folder per index under the cache root; else ``None`` (temporary)."""
        if self.config.feature_dir is not None:
            return Path(self.config.feature_dir).expanduser()
        root = resolve_cache_dir(self.config.cache_dir)
        return root / f"less-features-{key[:24]}" if root is not None else None

    @contextlib.contextmanager
    def _index(self, pool_ids: Sequence[Sequence[int]], processes: Processes) -> Iterator[FeatureIndex]:
        description = self.index_description(pool_ids)
        key = cache_key({"format": INDEX_FORMAT, **description})
        root = self._index_root(key)
        if root is None:
            with tempfile.TemporaryDirectory(prefix="hf_cads_less_") as folder:
                index = FeatureIndex(folder, key, description)
                index.temporary = True
                yield index
            return
        # The main process creates (or checks) the folder; a mismatch is an error on every process.
        processes.on_main(lambda: FeatureIndex(root, key, description) and None)
        yield FeatureIndex(root, key, description, create=False)

# -- helpers -----------------------------------------------------------------------------------
def _device_of(model: Any) -> Any:
    return next(model.parameters()).device


@contextlib.contextmanager
def _seeded(seed: int, device: Any) -> Iterator[None]:
    """Seed torch's RNG inside the block only; the caller's RNG state is restored afterwards."""
    import torch

    devices = [device] if getattr(device, "type", "cpu") == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _capture_checkpoint(optimizer: Any, params: dict[str, Any], epoch: int, step: int, learning_rate: float) -> WarmupCheckpoint:
    group = optimizer.param_groups[0]
    state = {name: optimizer.state[p] for name, p in params.items()}
    return WarmupCheckpoint(
        epoch=epoch,
        step=step,
        learning_rate=learning_rate,
        lora_weights={name: p.detach().cpu().clone() for name, p in params.items()},
        exp_avg={name: s["exp_avg"].detach().cpu().clone() for name, s in state.items()},
        exp_avg_sq={name: s["exp_avg_sq"].detach().cpu().clone() for name, s in state.items()},
        betas=tuple(group["betas"]),
        eps=float(group["eps"]),
    )


def _set_adam_state(optimizer: Any, params: dict[str, Any], checkpoint: WarmupCheckpoint) -> None:
    """Give a fresh AdamW the moments and step count of a stored checkpoint (to resume the warmup)."""
    import torch

    for name, parameter in params.items():
        optimizer.state[parameter] = {
            "step": torch.tensor(float(checkpoint.step)),
            "exp_avg": checkpoint.exp_avg[name].to(parameter.device, parameter.dtype).clone(),
            "exp_avg_sq": checkpoint.exp_avg_sq[name].to(parameter.device, parameter.dtype).clone(),
        }


def _ids_digest(token_ids: Sequence[Sequence[int]]) -> str:
    """A hash of tokenised rows (their order and every id)."""
    digest = hashlib.sha256()
    for ids in token_ids:
        digest.update(np.asarray(ids, dtype=np.int64).tobytes() + b"|")
    return digest.hexdigest()
