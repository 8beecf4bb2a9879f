"""Options of the CADS selector (:class:`CADSSelectorConfig`), checked when the config is built.

Example:
    >>> from hf_cads.selectors.cads.config import CADSSelectorConfig
    >>> CADSSelectorConfig(granularity="source", train_budget=1e12).granularity
    'source'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from ...flops import validate_budget
from ...lora import DEFAULT_LORA_R, DEFAULT_LORA_TARGET_MODULES, lora_options
from ..options import SelectorConfig


@dataclass
class CADSSelectorConfig(SelectorConfig):
    """Options of :class:`CADSSelector`.

    Args:
        granularity: ``example`` (CADS-E: a keep-probability per row) or ``source`` (CADS-S: a kept
            fraction per value of ``source_column``).
        train_budget: ``C``, the training FLOPs the selected subset will get downstream. Required when CADS
            is used alone; inside :class:`~hf_cads.BudgetedTrainer` (or ``hf-cads select`` with a
            ``flop_budget``) it defaults to what the budget leaves after CADS's own cost: the ``C`` with
            ``C + overhead(C) = flop_budget`` (see :meth:`CADSSelector.fit_to_budget`).
        alpha: weight of the penalty ``(L_tr(theta, m) - l(|m|))^2`` tying ``theta`` to what a budget-``C``
            run on ``m`` would reach.
        penalty: ``one_sided`` (default) penalises a training loss above the budget-``C`` level,
            ``max(0, L_tr - l(|m|))^2`` (the value-function constraint form: ``theta`` may not fit ``m``
            worse than a budget-``C`` run would). ``squared`` is the formula as usually written,
            ``(L_tr - l(|m|))^2``; it also penalises fitting ``m`` better than the budget allows, and so at
            small budgets (high ``l``) it rewards data the model fits badly, e.g. mislabelled rows
            (see benchmarks/cads_digits.py).
        policy_reward: what the policy-gradient step on ``s`` scores a sampled mask ``m`` by, measured after
            the look-ahead step ``theta`` takes on ``m``. ``auto`` (default): ``transfer`` for a language
            model, ``objective`` for a custom (tensor) backend, the ones measured to find the signal there
            (README: "CADS"). ``objective``: the whole CADS objective,
            ``L_val + alpha * gap^2``. ``validation``: ``L_val`` alone; the penalty then acts only through
            ``theta``'s step (a mask trains ``theta`` as far as its loss is above the budget-``C`` level,
            which is where the budget enters) and no longer rewards a mask for its own training-loss level,
            which the size-only predictor ``l(|m|)`` cannot compare across sources of different difficulty
            (see benchmarks/cads_spectral_bias.py). ``transfer``: ``L_val`` after a plain gradient step on the
            mask's training loss alone (``-lr * g_val . g_m`` to first order): how well the mask's data
            transfers to the target; on a GSM8K target it is the reward that prefers the pool's GSM8K rows.
        lookahead: how a mask's objective after ``theta``'s step on it is measured. ``exact``: take the
            step, run the target rows (and, for the objective reward, the mask's rows) forward, undo it;
            every mask costs a training step and one or two forward passes. ``first_order``: one batched
            pass computes per-example gradients of a shared set of candidate rows (CADS-E: the block;
            CADS-S: ``block_size // num_sources`` rows per source) and the target gradient ``g_val``, and a
            mask's losses after the step ``u`` are ``L + g . u`` (``g_val . u`` for the validation loss):
            an outer step then costs two training steps however many masks it scores, so
            ``samples_per_step`` can be raised for free. ``auto`` (default): ``first_order`` for a language
            model, ``exact`` for a custom backend.
        num_sampling_points: pilot runs (subset sizes) the loss predictor is fitted from.
        min_sampling_fraction: smallest pilot subset, as a share of the pool (sizes are log-spaced up to the pool).
        A: pilot down-scaling: a pilot emulating ``|m|`` rows trains on ``|m| / A`` rows for ``C / A``
            FLOPs (same number of passes). The pilots cost about ``num_sampling_points / A * C``.
        gamma: the outer loop is sized to spend about ``2 * gamma * C`` FLOPs (ignored if ``outer_steps`` is set).
        outer_steps: number of outer (policy-gradient) steps; ``None`` derives it from ``gamma``.
        warmup_fraction: share of the outer steps that update only ``theta`` (``s`` frozen) so ``theta``
            first reaches the budget-``C`` loss level the penalty asks for.
        samples_per_step: masks sampled per outer step (``None``: 32 with the first-order lookahead, where
            masks cost almost nothing, else 4).
        block_size: rows a sampled mask trains ``theta`` on. CADS-E draws its mask over a random block of
            this many rows; CADS-S draws this many rows from the sampled mixture. ``None``: the whole
            mask (fine for small tensor tasks, too slow for LMs).
        target_batch_size: target rows per outer step (shared by that step's masks).
        lr_s: step size of the selection parameters ``s`` (``s_i`` or the source means ``mu_j``). ``None``:
            0.05 for a custom backend; for a language model ``max(0.05, 10 / policy steps)``, so a short
            outer loop (an LM's, sized by ``gamma``) can still move the mixture: at 0.05 its ~10 steps
            moved the source means by ~0.02.
        baseline: what a mask's reward is compared with. ``moving_average``: ``b``, a moving average of past
            steps' mean rewards. ``step``: the mean reward of the step's other masks (leave-one-out); the
            masks of a step share the target rows, so the step-to-step variation of the target loss (a
            larger noise than the differences between masks when ``target_batch_size`` is a small share of
            the target set) cancels. ``auto`` (default): ``step`` for a language model, ``moving_average``
            for a custom backend.
        baseline_momentum: momentum of the moving-average baseline ``b`` (and of the advantage scale).
        normalize_advantage: divide advantages by their running RMS, so ``lr_s`` does not depend on the
            loss scale.
        init_probability: initial ``s_i`` (CADS-E) or ``mu_j`` (CADS-S).
        sigma_start / sigma_end: CADS-S's truncated-Gaussian standard deviation, annealed geometrically.
        learning_rate: Adam step size of the pilot runs and of ``theta`` (use the downstream one).
        source_column: pool column naming each row's source (CADS-S).
        model_name_or_path: LM to select with when no model object is passed.
        lora_config: a peft ``LoraConfig`` to take ``lora_r`` and ``lora_target_modules`` from instead.
        lora_r / lora_target_modules: the LoRA adapters CADS trains on its private copy of the LM
            (``lora_r=0``: full finetuning of the copy).

    Example:
        >>> CADSSelectorConfig(train_budget=1e12, outer_steps=4).outer_steps
        4
    """

    granularity: Literal["example", "source"] = "example"
    train_budget: float | None = field(default=None, metadata={"per_run": True})
    alpha: float = 1.0
    penalty: Literal["squared", "one_sided"] = "one_sided"
    policy_reward: Literal["auto", "objective", "validation", "transfer"] = "auto"
    lookahead: Literal["auto", "exact", "first_order"] = "auto"
    num_sampling_points: int = 5
    min_sampling_fraction: float = 0.05
    A: float = 10.0
    gamma: float = 0.1
    outer_steps: int | None = None
    warmup_fraction: float = 0.2
    samples_per_step: int | None = None
    block_size: int | None = 32
    target_batch_size: int = 32
    lr_s: float | None = None
    baseline: Literal["auto", "moving_average", "step"] = "auto"
    baseline_momentum: float = 0.9
    normalize_advantage: bool = True
    init_probability: float = 0.5
    sigma_start: float = 0.3
    sigma_end: float = 0.05
    learning_rate: float = 1e-3
    source_column: str = "source"
    model_name_or_path: str = "smollm2-135m-instruct"
    lora_r: int = DEFAULT_LORA_R
    lora_target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGET_MODULES))
    lora_config: Any = field(default=None, metadata={"affects_result": False})

    def __post_init__(self) -> None:
        if self.lora_config is not None:  # a peft LoraConfig sets the rank and layers (and is not kept)
            options = lora_options(self.lora_config)
            self.lora_r, self.lora_target_modules, self.lora_config = (
                options["lora_r"],
                list(options["lora_target_modules"]),
                None,
            )
        if self.granularity not in ("example", "source"):
            raise ValueError(f"granularity must be 'example' (CADS-E) or 'source' (CADS-S), got {self.granularity!r}.")
        if self.penalty not in ("squared", "one_sided"):
            raise ValueError(f"penalty must be 'squared' or 'one_sided', got {self.penalty!r}.")
        if self.lookahead not in ("auto", "exact", "first_order"):
            raise ValueError(f"lookahead must be 'auto', 'exact' or 'first_order', got {self.lookahead!r}.")
        if self.baseline not in ("auto", "moving_average", "step"):
            raise ValueError(f"baseline must be 'auto', 'moving_average' or 'step', got {self.baseline!r}.")
        if self.policy_reward not in ("auto", "objective", "validation", "transfer"):
            raise ValueError(
                f"policy_reward must be 'auto', 'objective', 'validation' or 'transfer', got {self.policy_reward!r}."
            )
        if self.train_budget is not None:
            self.train_budget = validate_budget(self.train_budget)
        positive = {
            "alpha": self.alpha,
            "A": self.A,
            "learning_rate": self.learning_rate,
            "sigma_start": self.sigma_start,
            "sigma_end": self.sigma_end,
        }
        if self.lr_s is not None:
            positive["lr_s"] = self.lr_s
        for name, value in positive.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")
        if self.gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {self.gamma}.")
        if self.num_sampling_points < 2:
            raise ValueError(
                f"num_sampling_points must be >= 2 (the loss predictor interpolates), got {self.num_sampling_points}."
            )
        if not 0 < self.min_sampling_fraction < 1:
            raise ValueError(f"min_sampling_fraction must be in (0, 1), got {self.min_sampling_fraction}.")
        if self.outer_steps is not None and self.outer_steps < 1:
            raise ValueError(f"outer_steps must be >= 1 or None (derived from gamma), got {self.outer_steps}.")
        if self.target_batch_size < 1:
            raise ValueError(f"target_batch_size must be >= 1, got {self.target_batch_size}.")
        if self.samples_per_step is not None and self.samples_per_step < 2:
            raise ValueError(f"samples_per_step must be >= 2 so masks can be compared, got {self.samples_per_step}.")
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"block_size must be >= 1 or None (whole mask), got {self.block_size}.")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}.")
        if not 0 <= self.baseline_momentum < 1:
            raise ValueError(f"baseline_momentum must be in [0, 1), got {self.baseline_momentum}.")
        if not 0 < self.init_probability < 1:
            raise ValueError(f"init_probability must be in (0, 1), got {self.init_probability}.")
        if self.lora_r < 0:
            raise ValueError(f"lora_r must be >= 0 (0 = full finetuning), got {self.lora_r}.")
