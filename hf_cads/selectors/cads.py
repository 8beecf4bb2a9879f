"""CADS: Computational budget-Aware Data Selection, at example level (CADS-E) and source level (CADS-S).

The right training subset depends on the training budget ``C``: a small budget favours data that is
quick to learn (clean, low-frequency), a large one data with more to learn. CADS learns a selection
distribution for the given ``C`` by a penalised one-level relaxation of the bilevel problem, a loss
predictor fitted from short pilot runs, and a policy-gradient outer loop (see
:mod:`hf_cads.selectors.cads_core` for the algorithm).

Example:
    >>> from hf_cads import get_selector
    >>> selector = get_selector("cads-s", train_budget=2e13, model=model, tokenizer=tokenizer)  # doctest: +SKIP
    >>> result = selector.select(pool, target=validation)  # doctest: +SKIP
    >>> result.extras["mixture"]  # doctest: +SKIP
    {'alpaca_seed': 0.21, 'bbh': 0.44, 'code_alpaca': 0.12, 'gsm8k': 0.23}
    >>> result.extras["overhead_multiple_of_budget"], result.extras["loss_predictor_loo_mse"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ..data import column_values
from ..flops import validate_budget
from ..lora import DEFAULT_LORA_R, DEFAULT_LORA_TARGET_MODULES, lora_options
from .base import ScoreOutput, Selector, SelectorConfig, top_k_indices
from .within_budget import solve_budget_split
from .cads_backends import CausalLMBackend
from .cads_core import CADSPlan, plan_cads
from .cads_loop import CADSOutcome, run_cads
from .perplexity import CausalLMSelectorMixin
from .registry import register_selector


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
            outer loop (an LM's, sized by ``gamma``) can still move the mixture: at 0.05 its ~10 steps moved the source means by ~0.02.
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


@register_selector("cads")
class CADSSelector(CausalLMSelectorMixin, Selector):
    """Budget-aware selection: CADS-E keeps the rows with the highest learned keep-probability, CADS-S
    draws rows from each source by its learned share.

    With neither ``k`` nor ``fraction`` the subset size is CADS's own: the expected size of the learned
    distribution (``sum_i s_i`` rows for CADS-E, ``sum_j mu_j |source_j|`` for CADS-S).

    ``backend=`` swaps the causal LM for another model (see
    :class:`~hf_cads.selectors.cads_backends.TensorBackend`); by default CADS trains LoRA adapters on a
    copy of ``model`` (or of ``model_name_or_path``).

    Example:
        >>> from hf_cads import get_selector
        >>> selector = get_selector("cads-e", train_budget=5e12, model=model, tokenizer=tokenizer)  # doctest: +SKIP
        >>> result = selector.select(pool, target=validation)  # doctest: +SKIP
        >>> result.extras["favoured_size"], result.extras["loss_predictor"]["loo_mse"]  # doctest: +SKIP
    """

    config_class = CADSSelectorConfig
    requires_target = True
    chooses_own_size = True
    uses_model = True
    reuses_training_model = True

    def __init__(
        self,
        config: CADSSelectorConfig | None = None,
        *,
        model: Any = None,
        tokenizer: Any = None,
        backend: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(config, model=model, tokenizer=tokenizer, **kwargs)
        if backend is not None and not hasattr(backend, "prepare"):
            raise TypeError(f"backend must have a prepare(pool, target, config) method, got {type(backend).__name__}.")
        self.backend = backend
        self._prepared: tuple[tuple[str, str], Any] | None = None
        self.last_outcome: CADSOutcome | None = None

    # -- inputs ----------------------------------------------------------------------------------
    def validate_inputs(self, pool: Any, target: Any | None) -> None:
        super().validate_inputs(pool, target)
        if self.config.granularity == "source":
            self._source_codes(pool)

    def _source_codes(self, pool: Any) -> tuple[np.ndarray, list[str]]:
        column = self.config.source_column
        if column not in pool.column_names:
            raise ValueError(
                f"CADS-S selects by source, but the pool has no {column!r} column (columns: {pool.column_names}). "
                "Add a column naming each row's source, set source_column=, or use CADS-E (granularity='example')."
            )
        names, codes = np.unique(np.asarray([str(v) for v in column_values(pool, column)]), return_inverse=True)
        if len(names) < 2:
            raise ValueError(
                f"CADS-S learns a mixture over sources, but column {column!r} holds one source only ({names[0]!r}). "
                "Pool several sources, or use CADS-E (granularity='example') to select rows within it."
            )
        return codes.astype(np.int64), names.tolist()

    def _num_sources(self, pool: Any) -> int | None:
        return len(self._source_codes(pool)[1]) if self.config.granularity == "source" else None

    def _task(self, pool: Any, target: Any) -> Any:
        key = (getattr(pool, "_fingerprint", str(id(pool))), getattr(target, "_fingerprint", str(id(target))))
        if self._prepared is None or self._prepared[0] != key:
            backend = self.backend
            if backend is None:
                model, tokenizer = self._load_model()
                backend = CausalLMBackend(
                    model,
                    tokenizer,
                    lora_r=self.config.lora_r,
                    lora_target_modules=tuple(self.config.lora_target_modules),
                    text_column=self.config.text_column,
                    target_text_column=self.config.target_text_column,
                )
            self._prepared = (key, backend.prepare(pool, target, self.config))
        return self._prepared[1]

    def run_config(self) -> CADSSelectorConfig:
        """The config CADS runs with: ``"auto"`` options resolved for this selector's backend (a language
        model: the first-order lookahead with 32 masks a step, the transfer reward and the step baseline; a
        custom tensor backend: the exact lookahead with 4 masks, the whole-objective reward and the
        moving-average baseline)."""
        config = self.config
        language_model = self.backend is None
        lookahead = config.lookahead if config.lookahead != "auto" else ("first_order" if language_model else "exact")
        return dataclasses.replace(
            config,
            lookahead=lookahead,
            policy_reward=config.policy_reward
            if config.policy_reward != "auto"
            else ("transfer" if language_model else "objective"),
            samples_per_step=config.samples_per_step or (32 if lookahead == "first_order" else 4),
            baseline=config.baseline
            if config.baseline != "auto"
            else ("step" if language_model else "moving_average"),
            # A tensor task's outer loop runs hundreds of steps; an LM's (None) is sized by its steps.
            lr_s=config.lr_s if config.lr_s is not None or language_model else 0.05,
        )

    def model_identity(self) -> dict[str, Any]:
        # A custom backend is not described by the config; its repr keeps score caches apart.
        return super().model_identity() if self.backend is None else {"backend": repr(self.backend)}

    def plan(self, pool: Any, target: Any) -> CADSPlan:
        """The pilot runs and outer-loop length CADS will use, and their estimated FLOPs."""
        self._require_train_budget()
        return plan_cads(self._task(pool, target), self.run_config(), self._num_sources(pool))

    def _require_train_budget(self) -> None:
        if self.config.train_budget is None:
            raise ValueError(
                "CADS needs train_budget= (the FLOPs C the downstream training will get): the best subset depends "
                "on it. Pass train_budget=, or run CADS inside BudgetedTrainer with a flop_budget (C is then "
                "what the budget leaves after CADS's own cost)."
            )

    def fit_to_budget(self, available_flops: float, pool: Any, target: Any | None) -> None:
        """Unless ``train_budget`` is set: set it to the ``C`` with ``C + overhead(C) = available_flops``,
        where ``overhead(C)`` is CADS's estimated cost when it plans for a training budget ``C`` (the
        pilots and the outer loop grow with ``C``), so selection plus training spend the whole budget."""
        if self.config.train_budget is not None:
            return
        task = self._task(pool, target)
        sources = self._num_sources(pool)
        config = self.run_config()
        overhead = lambda c: plan_cads(task, dataclasses.replace(config, train_budget=c), sources).estimated_flops  # noqa: E731
        self.config.train_budget = solve_budget_split(overhead, available_flops)

    # -- Selector contract -----------------------------------------------------------------------
    def estimate_flops(self, pool: Any, target: Any | None) -> float:
        self.validate_inputs(pool, target)
        return self.plan(pool, target).estimated_flops

    def score(self, pool: Any, target: Any | None) -> ScoreOutput:
        self._require_train_budget()
        task = self._task(pool, target)
        config = self.run_config()
        plan = plan_cads(task, config, self._num_sources(pool))
        codes, names = self._source_codes(pool) if config.granularity == "source" else (None, None)
        outcome = run_cads(task, plan, config, source_codes=codes, source_names=names)
        self.last_outcome = outcome
        extras = outcome.extras()
        extras["run_options"] = {
            "policy_reward": config.policy_reward,
            "lookahead": config.lookahead,
            "samples_per_step": config.samples_per_step,
            "baseline": config.baseline,
            "lr_s": outcome.policy_lr,
        }
        if outcome.probabilities is not None:
            scores = outcome.probabilities
        else:
            scores = np.asarray(outcome.source_ratios)[codes]
        return ScoreOutput(np.asarray(scores, dtype=np.float64), outcome.flops, extras)

    def choose(self, scores: np.ndarray, k: int | None, pool: Any, extras: dict[str, Any]) -> np.ndarray:
        if extras["granularity"] == "example":
            return top_k_indices(scores, extras["favoured_size"] if k is None else k)
        codes, _ = self._source_codes(pool)
        ratios = np.array(list(extras["source_ratios"].values()))
        sizes = np.bincount(codes, minlength=len(ratios))
        counts = np.rint(ratios * sizes).astype(int) if k is None else allocate_by_mixture(k, ratios * sizes, sizes)
        if counts.sum() == 0:
            counts[int(np.argmax(ratios))] = 1
        rng = np.random.default_rng(self.config.seed)
        chosen = [
            rng.choice(np.flatnonzero(codes == j), count, replace=False) for j, count in enumerate(counts) if count > 0
        ]
        return np.sort(np.concatenate(chosen))


def allocate_by_mixture(k: int, weights: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """Split ``k`` rows over sources in proportion to ``weights``, never above a source's ``capacity``.

    Largest remainders get the leftover rows; what a full source cannot take goes to the others.

    Example:
        >>> allocate_by_mixture(10, np.array([3.0, 1.0]), np.array([5, 100])).tolist()
        [5, 5]
    """
    counts = np.zeros(len(weights), dtype=int)
    open_sources = capacity > 0
    remaining = int(k)
    while remaining > 0 and open_sources.any():
        share = np.where(open_sources, weights, 0.0)
        share = share / share.sum() if share.sum() > 0 else open_sources / open_sources.sum()
        ideal = share * remaining
        add = np.minimum(np.floor(ideal).astype(int), capacity - counts)
        leftover = remaining - add.sum()
        for j in np.argsort(-(ideal - np.floor(ideal))):
            if leftover == 0:
                break
            if open_sources[j] and counts[j] + add[j] < capacity[j]:
                add[j] += 1
                leftover -= 1
        if add.sum() == 0:
            break
        counts += add
        remaining -= int(add.sum())
        open_sources = counts < capacity
    return counts
