"""Recommending a selector and subset size for a budget, and the break-even model-size ratios."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..flops import validate_budget
from .fit import EXPENSIVE_SELECTORS, PerformanceFit

_SCAN_SCALES = np.logspace(-6, 9, 301)


# -- recommendation ----------------------------------------------------------------------------
@dataclass(frozen=True)
class PlanOption:
    """The best use of a budget with one selector: the largest affordable ``k`` (``P`` is monotone in ``C``).

    ``total_flops`` is the cost per target (selection amortised over the targets); ``measured_k`` the
    largest subset size the selector's curve was fitted on (0: unknown).
    """

    label: str
    k: int
    fraction: float
    predicted: float
    interval: tuple[float, float]
    selection_flops: float
    train_flops: float
    total_flops: float
    measured_k: int = 0

    @property
    def extrapolation(self) -> float:
        """``k`` over the largest measured ``k``: above ~2 the prediction rests on the curve's shape
        beyond the data rather than on runs (``nan`` when the measured range is unknown)."""
        return self.k / self.measured_k if self.measured_k > 0 else float("nan")


@dataclass(frozen=True)
class Recommendation:
    """The selector and subset size with the best predicted metric under the budget.

    Unpacks as ``selector, k, predicted, interval``; :attr:`options` holds every selector's best option.
    """

    selector: str
    k: int
    predicted: float
    interval: tuple[float, float]
    budget: float
    targets: int
    confidence: float
    options: tuple[PlanOption, ...] = ()
    infeasible: dict[str, str] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.selector, self.k, self.predicted, self.interval))

    @property
    def chosen(self) -> PlanOption:
        return next(option for option in self.options if option.label == self.selector)


def amortised_selection_flops(fit: PerformanceFit, selection_cost: float, targets: int = 1) -> float:
    """What one of ``targets`` finetunes that select from the same pool pays for selection.

    With a measured split (:attr:`PerformanceFit.selection_pool_share`, e.g. LESS: warmup and pool
    features paid once, target gradients per target) it is ``pool / targets + target``, the split
    taken in the measured proportion of ``selection_cost``; without one, ``selection_cost / targets``
    (the whole selection shared).

    Example:
        >>> fit = PerformanceFit("less", 0.0, 1.0, 1.0, np.zeros((3, 3)), 1.0, selection_flops=10.0,
        ...                      selection_pool_flops=8.0)
        >>> amortised_selection_flops(fit, 10.0, targets=4)  # 8 / 4 + 2
        4.0
    """
    share = fit.selection_pool_share
    if share is None:
        return selection_cost / targets
    pool = share * selection_cost
    return pool / targets + (selection_cost - pool)


def affordable_k(fit: PerformanceFit, budget: float, selection_cost: float, targets: int = 1) -> int:
    """The largest ``k <= pool_size`` with ``c * k + S <= budget`` (0 if none), ``S`` the selection
    cost per target (:func:`amortised_selection_flops`)."""
    selection = amortised_selection_flops(fit, selection_cost, targets)
    spendable = budget - selection
    if spendable <= 0 or not fit.cost_per_example > 0:
        return 0
    k = min(fit.pool_size, int(math.floor(spendable / fit.cost_per_example)))
    while k > 0 and fit.cost_per_example * k + selection > budget:
        k -= 1  # floor() of a ratio can land one above in floating point
    while k < fit.pool_size and fit.cost_per_example * (k + 1) + selection <= budget:
        k += 1
    return max(k, 0)


def option_at_budget(
    fit: PerformanceFit, budget: float, selection_cost: float | None = None, targets: int = 1, confidence: float = 0.9
) -> PlanOption | None:
    """What ``fit``'s selector achieves with ``budget`` FLOPs per target (``None``: cannot afford one row).

    The predicted metric for ``k`` rows is ``P(c * k + C_select)`` at the *measured* selection cost
    (what the curve was fitted on); the budget is charged ``selection_cost / targets``.
    """
    cost = fit.selection_flops if selection_cost is None else float(selection_cost)
    k = affordable_k(fit, budget, cost, targets)
    if k < 1:
        return None
    at = fit.flops_for_k(k)
    low, high = fit.interval(at, confidence)
    train = fit.cost_per_example * k
    return PlanOption(
        label=fit.label,
        k=k,
        fraction=k / fit.pool_size,
        predicted=float(fit.predict(at)),
        interval=(float(low), float(high)),
        selection_flops=amortised_selection_flops(fit, cost, targets),
        train_flops=train,
        total_flops=train + amortised_selection_flops(fit, cost, targets),
        measured_k=fit.max_k,
    )


def recommend(
    budget: float,
    fits: Mapping[str, PerformanceFit],
    selection_costs: Mapping[str, float] | None = None,
    *,
    targets: int = 1,
    confidence: float = 0.9,
) -> Recommendation:
    """The selector and ``k`` with the best predicted metric for ``budget`` FLOPs per target.

    Args:
        budget: FLOPs for selection + training of one finetune.
        fits: per-selector curves (:func:`fit_selectors`).
        selection_costs: FLOPs of each selector's selection (default: the measured ones); e.g.
            scaled up for a bigger selection model.
        targets: the number of finetunes that share one selection (its cost is divided among them).
        confidence: level of the returned interval (fit covariance, delta method).

    Example:
        >>> selector, k, predicted, (low, high) = recommend(3e15, fits)  # doctest: +SKIP
    """

    budget = validate_budget(budget)
    if not fits:
        raise ValueError("No fitted selector to choose from; fit_selectors found none (see its skipped reasons).")
    if isinstance(targets, bool) or not isinstance(targets, int) or targets < 1:
        raise ValueError(f"targets must be an integer >= 1, got {targets!r}.")
    costs = dict(selection_costs or {})
    unknown = sorted(set(costs) - set(fits))
    if unknown:
        raise ValueError(f"selection_costs names selector(s) {unknown} without a fit; fitted: {sorted(fits)}.")
    options: list[PlanOption] = []
    infeasible: dict[str, str] = {}
    for label, fit in fits.items():
        option = option_at_budget(fit, budget, costs.get(label), targets, confidence)
        if option is None:
            need = (
                amortised_selection_flops(fit, costs.get(label, fit.selection_flops), targets) + fit.cost_per_example
            )
            infeasible[label] = f"needs at least {need:.3g} FLOPs (selection + one example)"
        else:
            options.append(option)
    if not options:
        raise ValueError(
            f"A budget of {budget:.3g} FLOPs affords no selector: "
            + "; ".join(f"{k} {v}" for k, v in infeasible.items())
            + ". Raise the budget or amortise selection over more targets."
        )
    higher = next(iter(fits.values())).higher_is_better
    best = max(options, key=lambda o: ((o.predicted if higher else -o.predicted), -o.total_flops))
    return Recommendation(
        selector=best.label,
        k=best.k,
        predicted=best.predicted,
        interval=best.interval,
        budget=budget,
        targets=targets,
        confidence=confidence,
        options=tuple(options),
        infeasible=infeasible,
    )


# -- break-even model sizes --------------------------------------------------------------------
@dataclass(frozen=True)
class BreakEven:
    """When an expensive selector's saving in data outweighs its selection cost.

    With the selection model fixed and the trained model ``scale`` times larger than in the runs,
    training costs (``c``, ``C_full``, and the budget, kept at the same multiple of ``C_full``)
    grow ``scale``-fold while selection costs do not. ``scale`` is the smallest such factor from
    which the expensive selector's predicted metric beats every cheap selector's at equal budget;
    ``ratio = scale * reference_ratio`` expresses it as training / selection model matmul parameters.

    ``scale == 0``: ahead already at any size; ``inf``: never ahead (even free selection loses).
    """

    selector: str
    versus: str
    scale: float
    ratio: float
    reference_ratio: float
    selection_share: float
    """Selection cost / budget at the measured sizes."""


def _value_at_scale(fit: PerformanceFit, budget: float, selection_cost: float, targets: int, scale: float) -> float:
    """Oriented (larger = better) predicted metric with the training model ``scale`` x larger."""
    spendable = budget - amortised_selection_flops(fit, selection_cost, targets) / scale
    if spendable < fit.cost_per_example:  # not even one example: no finetune possible
        return -np.inf
    k = min(float(fit.pool_size), spendable / fit.cost_per_example)
    return float(fit.score(fit.predict_k(k)))


def break_even_ratios(
    fits: Mapping[str, PerformanceFit],
    budget: float,
    selection_costs: Mapping[str, float] | None = None,
    *,
    targets: int = 1,
    expensive: Sequence[str] | None = None,
) -> list[BreakEven]:
    """For each expensive selector, the training-to-selection model size ratio at which it overtakes
    the best cheap selector at ``budget`` (read at the measured sizes and scaled with ``C_full``).

    ``expensive`` lists labels (default: those whose selector is perplexity, LESS or CADS); every
    other fit is a cheap one. Subsets are continuous here (``k`` real) so the ratio is smooth.
    """
    costs = {label: (selection_costs or {}).get(label, fit.selection_flops) for label, fit in fits.items()}
    if expensive is None:
        expensive = [label for label, fit in fits.items() if (fit.selector or "").lower() in EXPENSIVE_SELECTORS]
    expensive = [label for label in expensive if label in fits]
    cheap = [label for label in fits if label not in expensive]
    if not expensive or not cheap:
        return []
    results = []
    for label in expensive:
        fit = fits[label]

        def advantage(scale: float, fit: PerformanceFit = fit, label: str = label) -> float:
            mine = _value_at_scale(fit, budget, costs[label], targets, scale)
            theirs = max(_value_at_scale(fits[c], budget, costs[c], targets, scale) for c in cheap)
            if mine == -np.inf:
                return -np.inf
            return mine - theirs

        values = np.array([advantage(s) for s in _SCAN_SCALES])
        behind = np.flatnonzero(~(values > 0))
        if len(behind) == 0:
            scale = 0.0
        elif behind[-1] == len(_SCAN_SCALES) - 1:
            scale = math.inf
        else:
            scale = _crossing(advantage, _SCAN_SCALES[behind[-1]], _SCAN_SCALES[behind[-1] + 1])
        at = _SCAN_SCALES[-1] if not math.isfinite(scale) or scale == 0 else scale
        versus = max(cheap, key=lambda c: _value_at_scale(fits[c], budget, costs[c], targets, at))
        reference = fit.model_params / fit.selection_model_params if fit.selection_model_params else float("nan")
        results.append(
            BreakEven(
                selector=label,
                versus=versus,
                scale=scale,
                ratio=scale * reference if reference == reference else float("nan"),
                reference_ratio=reference,
                selection_share=amortised_selection_flops(fit, costs[label], targets) / budget,
            )
        )
    return results


def _crossing(advantage: Any, low: float, high: float) -> float:
    """The scale in ``[low, high]`` where ``advantage`` turns positive (bisection in log space)."""
    log_low, log_high = math.log(low), math.log(high)
    for _ in range(80):
        middle = 0.5 * (log_low + log_high)
        if advantage(math.exp(middle)) > 0:
            log_high = middle
        else:
            log_low = middle
    return math.exp(log_high)
