"""CADS: Computational budget-Aware Data Selection, at example level (CADS-E) and source level (CADS-S).

The right training subset depends on the training budget ``C``: a small budget favours data that is
quick to learn (clean, low-frequency), a large one data with more to learn. CADS learns a selection
distribution for the given ``C`` by a penalised one-level relaxation of the bilevel problem, a loss
predictor fitted from short pilot runs, and a policy-gradient outer loop (see
:mod:`hf_cads.selectors.cads.algorithm` for the algorithm).

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
from typing import Any

import numpy as np

from ...data import column_values
from ..base import ScoreOutput, Selector, top_k_indices
from ..registry import register_selector
from ..scoring import CausalLMSelectorMixin
from ..within_budget import solve_budget_split
from .algorithm import CADSPlan, plan_cads
from .backends import CausalLMBackend
from .config import CADSSelectorConfig
from .outer_loop import CADSOutcome, run_cads


@register_selector("cads", aliases={"cads-e": {"granularity": "example"}, "cads-s": {"granularity": "source"}})
class CADSSelector(CausalLMSelectorMixin, Selector):
    """Budget-aware selection: CADS-E keeps the rows with the highest learned keep-probability, CADS-S
    draws rows from each source by its learned share.

    With neither ``k`` nor ``fraction`` the subset size is CADS's own: the expected size of the learned
    distribution (``sum_i s_i`` rows for CADS-E, ``sum_j mu_j |source_j|`` for CADS-S).

    ``backend=`` swaps the causal LM for another model (see
    :class:`~hf_cads.selectors.cads.backends.TensorBackend`); by default CADS trains LoRA adapters on a
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
