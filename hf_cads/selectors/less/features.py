"""LESS's per-row work: the selection model with fresh LoRA adapters, the warmup that trains them
(one :class:`WarmupCheckpoint` per epoch) and the projected gradient features of any rows at a
checkpoint, with what each costs in FLOPs. :class:`LESSFeatures` is the part of
:class:`~hf_cads.selectors.less.influence.LESSSelector` that computes them; scoring, the feature index and
``select_many`` are in :mod:`hf_cads.selectors.less.influence`.

Example:
    >>> from hf_cads import get_selector
    >>> less = get_selector("less", model=model, tokenizer=tokenizer, projection_dim=64)  # doctest: +SKIP
    >>> pool_ids = less.encode(pool, "pool")  # doctest: +SKIP
    >>> checkpoints, warmup_flops = less.warmup(pool_ids)  # doctest: +SKIP
    >>> features, flops = less.gradient_features(pool_ids[:8], checkpoints[-1], optimizer_aware=True)  # doctest: +SKIP
    >>> features.shape  # doctest: +SKIP
    (8, 64)
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...cache import weights_digest
from ...data import get_texts
from ...flops import FlopProfile
from ..scoring import CausalLMSelectorMixin, TokenBatcher, check_next_token_targets, masked_token_losses
from .config import LESSSelectorConfig
from .feature_index import FeatureIndex
from .gradients import PerExampleGradients, adam_update_direction, trainable_parameters
from .projection import Projection, chunk_seed, make_projection


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
    def from_dict(cls, data: dict[str, Any]) -> WarmupCheckpoint:
        return cls(**{**data, "betas": tuple(data["betas"])})


def linear_schedule(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate multiplier at ``step``: linear rise over ``warmup_steps``, then linear decay toward 0.

    Positive at every step ``< total_steps``: a short warmup (one step, on a small pool) still trains,
    and every epoch's mean learning rate, its checkpoint's weight in the scores, is above zero. (A rise
    from exactly 0, as ``transformers``' schedule does, would make a one-step warmup a no-op and every
    LESS score 0.)
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


class LESSFeatures(CausalLMSelectorMixin):
    """The selection model, warmup and gradient features of :class:`~hf_cads.selectors.less.influence.LESSSelector`.

    The selection model is never modified: a model passed in (plain or already LoRA-wrapped, as
    BudgetedTrainer passes it) is deep-copied, any adapters are merged, and fresh seeded LoRA
    adapters are trained on the copy. :meth:`gradient_features` works on any subset of rows, so
    the pool's features can be split across processes.
    """

    config: LESSSelectorConfig

    def _init_features(self, model_given: bool) -> None:
        """The state the model, warmup and projection are built into (lazily, on first use)."""
        self._caller_owns_model = model_given
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
        linear_names = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        )
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
            self._projection = (
                key,
                make_projection(
                    config.projection_type, num_params, config.projection_dim, config.seed, config.projection_nonzeros
                ),
            )
        return self._projection[1]

    # -- inputs ---------------------------------------------------------------------------------
    def encode(self, dataset: Any, role: str = "pool") -> list[list[int]]:
        """Token ids of every row (text from ``text_column`` / ``target_text_column``)."""
        _, tokenizer = self._load_model()
        column = (
            self.config.text_column if role == "pool" else (self.config.target_text_column or self.config.text_column)
        )
        token_ids = self._batcher().tokenize(get_texts(dataset, column, tokenizer, role=role))
        check_next_token_targets(token_ids, role)
        return token_ids

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

    def _warmup_epoch_flops(
        self, profile: FlopProfile, pool_ids: Sequence[Sequence[int]], batches: list[np.ndarray]
    ) -> float:
        return float(sum(profile.train_step_flops(len(rows), max(len(pool_ids[r]) for r in rows)) for rows in batches))

    def _warmup_flops(self, pool_ids: Sequence[Sequence[int]]) -> float:
        profile = self._profile()
        return float(
            sum(self._warmup_epoch_flops(profile, pool_ids, batches) for batches in self.warmup_plan(len(pool_ids)))
        )

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
        optimizer = torch.optim.AdamW(
            params.values(), lr=config.learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0
        )
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
                grads = adam_update_direction(
                    grads, *moments, step=checkpoint.step, betas=checkpoint.betas, eps=checkpoint.eps
                )
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


def _device_of(model: Any) -> Any:
    return next(model.parameters()).device


@contextlib.contextmanager
def _seeded(seed: int, device: Any) -> Iterator[None]:
    """Seed torch's RNG inside the block only; the caller's RNG state is restored afterwards."""
    import torch

    device = torch.device(device)
    # The accelerator the model is on (CUDA, XPU, MPS ...) keeps its own generator: fork it too.
    forks = device.type != "cpu" and hasattr(getattr(torch, device.type, None), "get_rng_state")
    fork = torch.random.fork_rng(devices=[device], device_type=device.type) if forks else torch.random.fork_rng([])
    with fork:
        torch.manual_seed(seed)
        yield


def _capture_checkpoint(
    optimizer: Any, params: dict[str, Any], epoch: int, step: int, learning_rate: float
) -> WarmupCheckpoint:
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
