"""Compute-optimal planning: "I have K FLOPs — which selector, and how much data?".

From the run records of earlier runs (:mod:`hf_cads.records`) the planner fits, per selector, the
parametric performance model of the compute-constrained data-selection analysis

    P(C) = (P_max - P0) * (1 - exp(-lambda * C / C_full)) + P0,     C = c * k + C_select,

where ``c`` is the training cost of one selected example, ``k`` the subset size, ``C_select`` the
selector's cost and ``C_full = c * |pool|`` the cost of training on the whole pool. ``P0`` is the
metric with no training and ``P_max`` the asymptote: above ``P0`` for metrics where higher is better
(accuracy), below it for losses. It then

- finds the Pareto frontier of all runs (the best metric reached at each total FLOPs),
- recommends the selector and ``k`` that maximise the predicted metric under a budget, with an
  interval from the fit's parameter covariance (delta method),
- amortises selection cost over ``T`` targets (one selection, ``T`` finetunes), and
- reports the break-even training-to-selection model size ratio at which each expensive selector
  (perplexity, LESS, CADS) overtakes the cheap ones, and
- draws it all: FLOPs on a log x axis, one colour per selector, scatter = runs, curves = fits,
  dashed = frontier.

The fit uses :func:`scipy.optimize.curve_fit` with box bounds ``0 <= P0 <= P_max`` (mirrored for
losses: ``0 <= P_max <= P0``) and ``lambda >= 0``. The analysis fitted with Levenberg–Marquardt,
which takes no bounds; with bounds scipy uses its trust-region reflective method (``trf``), so
that is what runs here, from several starting values of ``lambda``.

Example:
    >>> import numpy as np
    >>> from hf_cads.planner import fit_performance_curve, recommend
    >>> flops = np.linspace(0.05, 1.0, 12) * 1e15
    >>> accuracy = 0.2 + 0.5 * (1 - np.exp(-3 * flops / 1e15))
    >>> fit = fit_performance_curve(flops, accuracy, c_full=1e15, label="bm25",
    ...                             cost_per_example=1e12, pool_size=1000)
    >>> round(fit.p0, 3), round(fit.p_max, 3), round(fit.lam, 3)
    (0.2, 0.7, 3.0)
    >>> selector, k, predicted, interval = recommend(4e14, {"bm25": fit})
    >>> selector, k
    ('bm25', 400)
"""

from __future__ import annotations

import argparse
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .records import NO_SELECTION, RunRecord, read_records

logger = logging.getLogger(__name__)

EXPENSIVE_SELECTORS = ("perplexity", "less", "cads", "cads-e", "cads-s")
"""Selectors that score every pool row with a language model (forward passes or gradients)."""

_LOWER_IS_BETTER_WORDS = ("loss", "perplexity", "ppl", "error", "wer", "cer", "nll")
_SCAN_SCALES = np.logspace(-6, 9, 301)


def lower_is_better(metric: str) -> bool:
    """Guess the direction of a metric from its name: losses, perplexities and error rates go down."""
    name = metric.lower()
    return any(word in name for word in _LOWER_IS_BETTER_WORDS)


# -- the performance model ---------------------------------------------------------------------
@dataclass(frozen=True)
class PerformanceFit:
    """A fitted ``P(C)`` curve of one selector, with what the planner needs to map ``k`` to FLOPs.

    Attributes:
        label: the selector configuration (run records' ``label``).
        p0 / p_max / lam: the fitted ``P0``, ``P_max`` (asymptote) and ``lambda``.
        covariance: 3x3 covariance of ``(p0, p_max, lam)``.
        c_full: FLOPs of training on the whole pool (normalises ``C``).
        higher_is_better: direction of the metric.
        cost_per_example: training FLOPs per selected example, ``c``.
        selection_flops: the selector's measured cost on this pool, ``C_select``.
        pool_size: candidate rows (the largest possible ``k``).
        model_params / selection_model_params: matmul parameters of the trained and the selection model.
        num_points / rmse: size and residual of the fit.
    """

    label: str
    p0: float
    p_max: float
    lam: float
    covariance: np.ndarray
    c_full: float
    higher_is_better: bool = True
    cost_per_example: float = float("nan")
    selection_flops: float = 0.0
    pool_size: int = 0
    model_params: int = 0
    selection_model_params: int = 0
    selector: str | None = None
    num_points: int = 0
    rmse: float = float("nan")

    def predict(self, flops: Any) -> np.ndarray:
        """``P(C)`` at total FLOPs ``flops`` (scalar or array)."""
        decay = np.exp(-self.lam * np.asarray(flops, dtype=np.float64) / self.c_full)
        return self.p_max - (self.p_max - self.p0) * decay

    def gradient(self, flops: Any) -> np.ndarray:
        """``dP/d(p0, p_max, lam)`` at ``flops``: shape ``(..., 3)``."""
        x = np.asarray(flops, dtype=np.float64) / self.c_full
        decay = np.exp(-self.lam * x)
        return np.stack([decay, 1.0 - decay, (self.p_max - self.p0) * x * decay], axis=-1)

    def stderr(self, flops: Any) -> np.ndarray:
        """Standard error of the fitted curve at ``flops`` (delta method on :attr:`covariance`)."""
        grad = self.gradient(flops)
        variance = np.einsum("...i,ij,...j->...", grad, self.covariance, grad)
        return np.sqrt(np.maximum(variance, 0.0))

    def interval(self, flops: Any, confidence: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
        """Two-sided ``confidence`` interval of the curve at ``flops`` (normal approximation)."""
        from scipy.stats import norm

        if not 0 < confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
        z = norm.ppf(0.5 + confidence / 2)
        centre, spread = self.predict(flops), z * self.stderr(flops)
        return centre - spread, centre + spread

    @property
    def parameter_errors(self) -> dict[str, float]:
        """One standard error of ``p0``, ``p_max`` and ``lam``."""
        errors = np.sqrt(np.maximum(np.diag(self.covariance), 0.0))
        return dict(zip(("p0", "p_max", "lam"), errors.tolist()))

    def flops_for_k(self, k: Any) -> np.ndarray:
        """``C = c * k + C_select``: the compute at which the fit predicts a subset of ``k`` rows."""
        return self.cost_per_example * np.asarray(k, dtype=np.float64) + self.selection_flops

    def predict_k(self, k: Any) -> np.ndarray:
        """Predicted metric after training on the selector's best ``k`` rows."""
        return self.predict(self.flops_for_k(k))

    def score(self, value: Any) -> np.ndarray:
        """``value`` oriented so that larger is better."""
        value = np.asarray(value, dtype=np.float64)
        return value if self.higher_is_better else -value


def fit_performance_curve(
    flops: Sequence[float],
    metric: Sequence[float],
    c_full: float,
    *,
    higher_is_better: bool = True,
    label: str = "",
    **attributes: Any,
) -> PerformanceFit:
    """Fit ``P(C)`` to ``(flops, metric)`` points by bounded non-linear least squares.

    Parameters are fitted as ``(a, delta, lambda) >= 0`` with ``P0 = a, P_max = a + delta`` (higher
    is better) or ``P_max = a, P0 = a + delta`` (lower is better), which are exactly the bounds
    ``0 <= P0 <= P_max`` (mirrored) and ``lambda >= 0``. If a metric value is negative the lower
    bound of ``a`` is dropped. ``attributes`` fill the other :class:`PerformanceFit` fields.

    Raises:
        ValueError: fewer than 4 points (3 parameters plus one degree of freedom for the
            uncertainty), non-finite values, or ``c_full <= 0``.
    """
    from scipy.optimize import OptimizeWarning, curve_fit

    x_flops = np.asarray(flops, dtype=np.float64)
    y = np.asarray(metric, dtype=np.float64)
    if x_flops.shape != y.shape or x_flops.ndim != 1:
        raise ValueError(f"flops and metric must be 1-d and of equal length, got {x_flops.shape} and {y.shape}.")
    if len(y) < 4:
        raise ValueError(
            f"Fitting {label or 'a selector'} needs at least 4 runs (3 parameters + 1 for the uncertainty), "
            f"got {len(y)}; run more fractions or seeds (hf-cads sweep)."
        )
    if not (np.isfinite(x_flops).all() and np.isfinite(y).all()):
        raise ValueError(f"FLOPs and metric values of {label or 'the runs'} must be finite.")
    if (x_flops < 0).any():
        raise ValueError("FLOPs must be >= 0.")
    if not (math.isfinite(c_full) and c_full > 0):
        raise ValueError(f"c_full (cost of training on the whole pool) must be > 0, got {c_full!r}.")
    x = x_flops / c_full

    def curve(x: np.ndarray, a: float, delta: float, lam: float) -> np.ndarray:
        rise = 1.0 - np.exp(-lam * x)
        return a + delta * rise if higher_is_better else a + delta * (1.0 - rise)

    lower_a = 0.0 if (y >= 0).all() else -np.inf
    bounds = ([lower_a, 0.0, 0.0], [np.inf, np.inf, np.inf])
    start_value = float(y[np.argmin(x)])
    best_value = float(y.max() if higher_is_better else y.min())
    # a is P0 (higher is better) or the asymptote P_max (lower is better).
    a0 = start_value if higher_is_better else best_value
    a0 = max(a0, 0.0) if lower_a == 0.0 else a0
    delta0 = max(abs(best_value - start_value), 1e-6 * max(1.0, abs(best_value)))
    positive_x = x[x > 0]
    span = (positive_x.min(), positive_x.max()) if len(positive_x) else (1.0, 1.0)
    lambda_starts = np.geomspace(0.1 / span[1], 10.0 / span[0], 9)

    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for lam0 in lambda_starts:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                params, pcov = curve_fit(
                    curve, x, y, p0=[a0, delta0, lam0], bounds=bounds, method="trf", maxfev=20000
                )
        except (RuntimeError, ValueError):
            continue
        sse = float(np.sum((curve(x, *params) - y) ** 2))
        if best is None or sse < best[0]:
            best = (sse, params, pcov)
    if best is None:
        raise ValueError(f"The fit of {label or 'the runs'} did not converge from any starting point.")
    sse, (a, delta, lam), pcov = best
    # (p0, p_max, lam) = J @ (a, delta, lam)
    jacobian = np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) if higher_is_better else np.array(
        [[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    )
    p0, p_max, _ = jacobian @ np.array([a, delta, lam])
    covariance = jacobian @ np.asarray(pcov, dtype=np.float64) @ jacobian.T
    if not np.isfinite(covariance).all():
        logger.warning("The fit of %s has undetermined parameters (a curve flat in the data?): intervals are infinite.", label)
        covariance = np.where(np.isfinite(covariance), covariance, np.inf)
    return PerformanceFit(
        label=label, p0=float(p0), p_max=float(p_max), lam=float(lam), covariance=covariance, c_full=float(c_full),
        higher_is_better=higher_is_better, num_points=len(y), rmse=math.sqrt(sse / len(y)), **attributes,
    )


# -- records -> fits ---------------------------------------------------------------------------
def select_records(
    records: Sequence[RunRecord], metric: str, *, model: str | None = None, target: str | None = None
) -> list[RunRecord]:
    """The records that measured ``metric`` for one (model, target); several pairs need a choice."""
    with_metric = [r for r in records if metric in r.metrics]
    if not with_metric:
        available = sorted({name for r in records for name in r.metrics})
        raise ValueError(f"No run record has the metric {metric!r}; recorded metrics: {available}. Pass --metric.")
    chosen = [r for r in with_metric if (model is None or r.model == model) and (target is None or r.target == target)]
    pairs = sorted({(r.model, str(r.target)) for r in chosen})
    if not chosen:
        raise ValueError(f"No record matches model={model!r}, target={target!r}; recorded (model, target) pairs: "
                         f"{sorted({(r.model, str(r.target)) for r in with_metric})}.")
    if len(pairs) > 1:
        raise ValueError(f"The records mix (model, target) pairs {pairs}; curves only compare runs of one pair. "
                         "Pass --model and --target (or model=/target=).")
    return chosen


def fit_selectors(
    records: Sequence[RunRecord],
    metric: str = "target_loss",
    *,
    higher_is_better: bool | None = None,
    include_baseline: bool = True,
) -> tuple[dict[str, PerformanceFit], dict[str, str]]:
    """Fit one curve per record label. Returns ``(fits, skipped)`` where ``skipped`` says why a
    label got no curve (too few runs, no convergence).

    With ``include_baseline`` the metric measured before training (``baseline_metrics``, zero
    FLOPs) is one more point of every curve, anchoring ``P0``. ``C_full`` is shared by all curves:
    the median training cost per example times the pool size.
    """
    higher = (not lower_is_better(metric)) if higher_is_better is None else higher_is_better
    usable = [r for r in records if metric in r.metrics and r.k > 0]
    if not usable:
        raise ValueError(f"No run record with k > 0 measured {metric!r}.")
    pool_size = int(np.median([r.pool_size for r in usable]))
    c_full = float(np.median([r.train_flops / r.k for r in usable])) * pool_size
    fits: dict[str, PerformanceFit] = {}
    skipped: dict[str, str] = {}
    for label in sorted({r.label for r in usable}):
        group = [r for r in usable if r.label == label]
        flops = [r.total_flops for r in group]
        values = [r.metrics[metric] for r in group]
        baselines = [r.baseline_metrics[metric] for r in group if metric in r.baseline_metrics]
        if include_baseline and baselines:
            flops.append(0.0)
            values.append(float(np.mean(baselines)))
        try:
            fits[label] = fit_performance_curve(
                flops, values, c_full, higher_is_better=higher, label=label,
                cost_per_example=float(np.median([r.train_flops / r.k for r in group])),
                selection_flops=float(np.median([r.selection_flops for r in group])),
                pool_size=int(np.median([r.pool_size for r in group])),
                model_params=int(np.median([r.model_params for r in group])),
                selection_model_params=int(np.median([r.selection_model_params for r in group])),
                selector=group[0].selector,
            )
        except ValueError as err:
            skipped[label] = str(err)
    return fits, skipped


# -- Pareto frontier ---------------------------------------------------------------------------
def pareto_frontier(flops: Sequence[float], metric: Sequence[float], higher_is_better: bool = True) -> np.ndarray:
    """Indices of the runs on the compute/performance frontier, by increasing FLOPs.

    A run is on the frontier when every cheaper-or-equal run is strictly worse: the frontier is the
    best metric reachable at each total FLOPs. Among runs with equal FLOPs only the best counts.
    """
    flops = np.asarray(flops, dtype=np.float64)
    score = np.asarray(metric, dtype=np.float64) * (1.0 if higher_is_better else -1.0)
    if flops.shape != score.shape:
        raise ValueError(f"flops and metric must have the same length, got {flops.shape} and {score.shape}.")
    order = np.lexsort((np.arange(len(flops)), -score, flops))  # by FLOPs, best first within ties
    frontier: list[int] = []
    best = -np.inf
    for index in order:
        if score[index] > best:
            frontier.append(int(index))
            best = score[index]
    return np.array(frontier, dtype=np.int64)


# -- recommendation ----------------------------------------------------------------------------
@dataclass(frozen=True)
class PlanOption:
    """The best use of a budget with one selector: the largest affordable ``k`` (``P`` is monotone in ``C``).

    ``total_flops`` is the cost per target (selection amortised over the targets).
    """

    label: str
    k: int
    fraction: float
    predicted: float
    interval: tuple[float, float]
    selection_flops: float
    train_flops: float
    total_flops: float


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


def affordable_k(fit: PerformanceFit, budget: float, selection_cost: float, targets: int = 1) -> int:
    """The largest ``k <= pool_size`` with ``c * k + selection_cost / targets <= budget`` (0 if none)."""
    spendable = budget - selection_cost / targets
    if spendable <= 0 or not fit.cost_per_example > 0:
        return 0
    k = min(fit.pool_size, int(math.floor(spendable / fit.cost_per_example)))
    while k > 0 and fit.cost_per_example * k + selection_cost / targets > budget:
        k -= 1  # floor() of a ratio can land one above in floating point
    while k < fit.pool_size and fit.cost_per_example * (k + 1) + selection_cost / targets <= budget:
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
        label=fit.label, k=k, fraction=k / fit.pool_size, predicted=float(fit.predict(at)),
        interval=(float(low), float(high)), selection_flops=cost / targets, train_flops=train,
        total_flops=train + cost / targets,
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
    from .flops import validate_budget

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
            need = costs.get(label, fit.selection_flops) / targets + fit.cost_per_example
            infeasible[label] = f"needs at least {need:.3g} FLOPs (selection + one example)"
        else:
            options.append(option)
    if not options:
        raise ValueError(
            f"A budget of {budget:.3g} FLOPs affords no selector: " + "; ".join(f"{k} {v}" for k, v in infeasible.items())
            + ". Raise the budget or amortise selection over more targets."
        )
    higher = next(iter(fits.values())).higher_is_better
    best = max(options, key=lambda o: ((o.predicted if higher else -o.predicted), -o.total_flops))
    return Recommendation(
        selector=best.label, k=best.k, predicted=best.predicted, interval=best.interval, budget=budget,
        targets=targets, confidence=confidence, options=tuple(options), infeasible=infeasible,
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
    spendable = budget - selection_cost / (targets * scale)
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

        def advantage(scale: float) -> float:
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
        results.append(BreakEven(
            selector=label, versus=versus, scale=scale, ratio=scale * reference if reference == reference else float("nan"),
            reference_ratio=reference, selection_share=costs[label] / targets / budget,
        ))
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


# -- the whole plan ----------------------------------------------------------------------------
@dataclass
class Plan:
    """Everything :func:`make_plan` derives from a set of run records."""

    records: list[RunRecord]
    metric: str
    higher_is_better: bool
    fits: dict[str, PerformanceFit]
    skipped: dict[str, str]
    frontier: list[RunRecord]
    recommendation: Recommendation | None = None
    recommendation_error: str | None = None
    break_even: list[BreakEven] = field(default_factory=list)
    budget: float | None = None
    targets: int = 1

    def format(self) -> str:
        """Human-readable tables: fits, the option of each selector, recommendation, break-even."""
        direction = "higher" if self.higher_is_better else "lower"
        first = self.records[0]
        lines = [
            f"{len(self.records)} runs of {first.model} on {first.target}; metric {self.metric} ({direction} is better)",
            "",
            "fits  P(C) = (P_max - P0) * (1 - exp(-lambda * C / C_full)) + P0,  C = c*k + C_select  "
            "(bounded least squares, scipy trust-region reflective; +- 1 s.e.)",
        ]
        rows = [("selector", "runs", "P0", "P_max", "lambda", "rmse", "c/example", "C_select", "C_full")]
        for label, fit in self.fits.items():
            err = fit.parameter_errors
            rows.append((
                label, str(fit.num_points), f"{fit.p0:.4g}±{err['p0']:.2g}", f"{fit.p_max:.4g}±{err['p_max']:.2g}",
                f"{fit.lam:.3g}±{err['lam']:.2g}", f"{fit.rmse:.3g}", f"{fit.cost_per_example:.3g}",
                f"{fit.selection_flops:.3g}", f"{fit.c_full:.3g}",
            ))
        lines.append(_table(rows))
        for label, reason in self.skipped.items():
            lines.append(f"  (no curve for {label}: {reason})")
        lines += ["", "Pareto frontier (best metric at each total FLOPs):"]
        lines.append(_table([("total FLOPs", self.metric, "selector", "k", "seed")] + [
            (f"{r.total_flops:.4g}", f"{r.metrics[self.metric]:.4g}", r.label, str(r.k), str(r.seed)) for r in self.frontier
        ]))
        if self.budget is not None:
            amortised = f", selection amortised over {self.targets} targets" if self.targets > 1 else ""
            lines += ["", f"at a budget of {self.budget:.3g} FLOPs per target{amortised}:"]
            if self.recommendation is None:
                lines.append(f"  {self.recommendation_error}")
            else:
                rec = self.recommendation
                level = f"{rec.confidence:.0%}"
                rows = [("selector", "k", "fraction", "C_select", "C_train", "predicted", f"{level} interval")]
                for o in sorted(rec.options, key=lambda o: -o.predicted if self.higher_is_better else o.predicted):
                    rows.append((o.label, str(o.k), f"{o.fraction:.3f}", f"{o.selection_flops:.3g}", f"{o.train_flops:.3g}",
                                 f"{o.predicted:.4g}", f"[{o.interval[0]:.4g}, {o.interval[1]:.4g}]"))
                for label, reason in rec.infeasible.items():
                    rows.append((label, "-", "-", "-", "-", "unaffordable", reason))
                lines.append(_table(rows))
                lines.append(
                    f"recommendation: {rec.selector} with k={rec.k} ({rec.chosen.fraction:.1%} of the pool), predicted "
                    f"{self.metric} {rec.predicted:.4g} ({level} interval {rec.interval[0]:.4g} .. {rec.interval[1]:.4g})"
                )
            affordable = [r for r in self.frontier if r.total_flops <= self.budget]
            if affordable:
                run = affordable[-1]  # the frontier improves with FLOPs: its last affordable run is the best
                lines.append(f"best recorded run within the budget: {run.label} k={run.k} seed={run.seed}, "
                             f"{self.metric} {run.metrics[self.metric]:.4g} at {run.total_flops:.3g} FLOPs")
            if self.break_even:
                lines += ["", "break-even: training / selection model size (matmul params) from which each expensive "
                          "selector beats the cheap ones at this budget (as a multiple of C_full):"]
                rows = [("selector", "vs", "C_select/budget", "measured N_t/N_s", "break-even N_t/N_s", "x measured N_t")]
                for b in self.break_even:
                    rows.append((b.selector, b.versus, f"{b.selection_share:.3g}", f"{b.reference_ratio:.3g}",
                                 _ratio_text(b.ratio, b.scale), _ratio_text(b.scale, b.scale)))
                lines.append(_table(rows))
        return "\n".join(lines)


def _ratio_text(value: float, scale: float) -> str:
    if scale == 0:
        return "always ahead"
    if math.isinf(scale):
        return "never"
    return f"{value:.3g}"


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def make_plan(
    records: Sequence[RunRecord],
    *,
    metric: str = "target_loss",
    budget: float | None = None,
    higher_is_better: bool | None = None,
    targets: int = 1,
    selection_costs: Mapping[str, float] | None = None,
    confidence: float = 0.9,
    include_baseline: bool = True,
    model: str | None = None,
    target: str | None = None,
) -> Plan:
    """Fits, frontier and (with a ``budget``) the recommendation and break-even report."""
    chosen = select_records(records, metric, model=model, target=target)
    higher = (not lower_is_better(metric)) if higher_is_better is None else higher_is_better
    fits, skipped = fit_selectors(chosen, metric, higher_is_better=higher, include_baseline=include_baseline)
    indices = pareto_frontier([r.total_flops for r in chosen], [r.metrics[metric] for r in chosen], higher)
    plan = Plan(chosen, metric, higher, fits, skipped, [chosen[i] for i in indices], budget=budget, targets=targets)
    if budget is not None and fits:
        try:
            plan.recommendation = recommend(budget, fits, selection_costs, targets=targets, confidence=confidence)
        except ValueError as err:
            plan.recommendation_error = str(err)
        plan.break_even = break_even_ratios(fits, budget, selection_costs, targets=targets)
    elif budget is not None:
        plan.recommendation_error = "no selector has enough runs for a curve"
    return plan


# -- the plot ----------------------------------------------------------------------------------
def plot_plan(plan: Plan, path: str | Path, *, title: str | None = None) -> Path:
    """Write the planner figure as PNG: log-FLOPs x axis, one colour per selector, scatter = runs,
    curves = fits (band = interval), dashed = Pareto frontier, dotted = before finetuning and budget."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=(8, 5.2), dpi=130)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    labels = sorted({r.label for r in plan.records})
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
    colours = {label: palette[i % len(palette)] for i, label in enumerate(labels)}
    flops = np.array([r.total_flops for r in plan.records])
    positive = flops[flops > 0]
    if len(positive) == 0:
        raise ValueError("No run spent any FLOPs; nothing to plot on a log axis.")
    right = max(positive.max(), plan.budget or 0.0) * 1.6
    left = positive.min() / 1.6
    grid = np.geomspace(left, right, 200)
    confidence = plan.recommendation.confidence if plan.recommendation else 0.9
    shown = [r.metrics[plan.metric] for r in plan.records] + [
        r.baseline_metrics[plan.metric] for r in plan.records if plan.metric in r.baseline_metrics
    ]
    for label in labels:
        group = [r for r in plan.records if r.label == label and r.total_flops > 0]
        axes.scatter([r.total_flops for r in group], [r.metrics[plan.metric] for r in group], s=26, alpha=0.8,
                     color=colours[label], edgecolors="none", zorder=3)
        fit = plan.fits.get(label)
        if fit is None:
            axes.plot([], [], color=colours[label], marker="o", linestyle="none", label=f"{label} (runs only)")
            continue
        # A curve exists from the selection cost (k = 0) to training on the whole pool (k = |pool|).
        xs = grid[(grid >= fit.selection_flops) & (grid <= float(fit.flops_for_k(fit.pool_size)))]
        xs = np.unique(np.concatenate([xs, [max(fit.selection_flops, left), float(fit.flops_for_k(fit.pool_size))]]))
        axes.plot(xs, fit.predict(xs), color=colours[label], linewidth=1.8, label=label, zorder=2)
        shown += fit.predict(xs).tolist()
        low, high = fit.interval(xs, confidence)
        if np.isfinite(low).all() and np.isfinite(high).all():
            axes.fill_between(xs, low, high, color=colours[label], alpha=0.12, linewidth=0)
    front = [r for r in plan.frontier if r.total_flops > 0]
    if front:
        xs = [r.total_flops for r in front] + [right]
        ys = [r.metrics[plan.metric] for r in front] + [front[-1].metrics[plan.metric]]
        axes.plot(xs, ys, linestyle="--", color="black", linewidth=1.2, drawstyle="steps-post", label="Pareto frontier", zorder=4)
    baselines = [r.baseline_metrics[plan.metric] for r in plan.records if plan.metric in r.baseline_metrics]
    if baselines:
        axes.axhline(float(np.mean(baselines)), color="grey", linestyle=":", linewidth=1.0, label="before finetuning")
    if plan.budget is not None:
        axes.axvline(plan.budget, color="grey", linestyle="-.", linewidth=1.0, label=f"budget {plan.budget:.2g}")
        if plan.recommendation is not None:
            rec = plan.recommendation
            fit = plan.fits[rec.selector]
            shared = f"; selection shared by {rec.targets} targets" if rec.targets > 1 else ""
            # The star sits where the curve is read: at c*k + the full (measured) selection cost.
            axes.scatter([float(fit.flops_for_k(rec.k))], [rec.predicted], marker="*", s=220, color=colours[rec.selector],
                         edgecolors="black", linewidths=0.8, zorder=5, label=f"recommended: {rec.selector}, k={rec.k}{shared}")
    # Limits follow the runs and curves; wide extrapolated bands would otherwise flatten everything.
    low_y, high_y = min(shown), max(shown)
    pad = 0.08 * (high_y - low_y) or 0.05 * max(abs(high_y), 1e-12)
    axes.set_ylim(low_y - pad, high_y + pad)
    axes.set_xscale("log")
    decades = math.log10(right / left)
    axes.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades <= 3 else (1.0,)))
    axes.xaxis.set_major_formatter(FuncFormatter(_flops_label))
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_xlim(left, right)
    axes.set_xlabel("total FLOPs (selection + training)")
    axes.set_ylabel(plan.metric + ("  (higher is better)" if plan.higher_is_better else "  (lower is better)"))
    first = plan.records[0]
    axes.set_title(title or f"{first.target} — {Path(first.model).name}: {len(plan.records)} runs", fontsize=11)
    axes.grid(True, which="both", alpha=0.25)
    axes.legend(fontsize=8, loc="best", framealpha=0.85)
    figure.tight_layout()
    figure.savefig(path)
    return path


def _flops_label(value: float, _position: Any = None) -> str:
    """``2e13``-style tick labels."""
    if value <= 0:
        return ""
    exponent = math.floor(math.log10(value) + 1e-9)
    return f"{value / 10 ** exponent:.2g}e{exponent}"


# -- command line ------------------------------------------------------------------------------
def _parse_selection_costs(values: Sequence[str]) -> dict[str, float]:
    costs = {}
    for value in values:
        label, sep, number = value.rpartition("=")
        try:
            costs[label] = float(number)
        except ValueError:
            label = ""
        if not sep or not label:
            raise ValueError(f"--selection-cost takes LABEL=FLOPS (e.g. perplexity=2e14), got {value!r}.")
    return costs


def plan_command(argv: Sequence[str]) -> int:
    """``hf-cads plan RUNS.jsonl --budget 3e15``: fit, recommend, report break-even, write the plot."""
    parser = argparse.ArgumentParser(prog="hf-cads plan", description=plan_command.__doc__)
    parser.add_argument("records", help="run-record file (JSON lines) written by hf-cads run / sweep")
    parser.add_argument("--budget", type=float, help="FLOPs per finetune (selection + training), e.g. 3e15")
    parser.add_argument("--metric", default="target_loss", help="record metric to optimise (default target_loss)")
    direction = parser.add_mutually_exclusive_group()
    direction.add_argument("--higher-is-better", dest="higher", action="store_true", default=None)
    direction.add_argument("--lower-is-better", dest="higher", action="store_false")
    parser.add_argument("--targets", type=int, default=1, help="finetunes sharing one selection (divides its cost)")
    parser.add_argument("--selection-cost", action="append", default=[], metavar="LABEL=FLOPS",
                        help="override a selector's selection cost (repeatable)")
    parser.add_argument("--confidence", type=float, default=0.9, help="interval level (default 0.9)")
    parser.add_argument("--no-baseline", action="store_true", help="do not anchor curves at the untrained metric")
    parser.add_argument("--model", help="use only records of this model")
    parser.add_argument("--target", help="use only records of this target")
    parser.add_argument("--plot", help="PNG path (default: <records>_planner.png beside the records)")
    options = parser.parse_args(list(argv))
    if options.targets < 1:
        raise ValueError(f"--targets must be >= 1, got {options.targets}.")
    records = read_records(options.records)
    plan = make_plan(
        records, metric=options.metric, budget=options.budget, higher_is_better=options.higher, targets=options.targets,
        selection_costs=_parse_selection_costs(options.selection_cost), confidence=options.confidence,
        include_baseline=not options.no_baseline, model=options.model, target=options.target,
    )
    print(plan.format())
    plot = Path(options.plot) if options.plot else Path(options.records).with_name(Path(options.records).stem + "_planner.png")
    print(f"\nplot: {plot_plan(plan, plot)}")
    return 0


__all__ = [
    "BreakEven",
    "EXPENSIVE_SELECTORS",
    "NO_SELECTION",
    "PerformanceFit",
    "Plan",
    "PlanOption",
    "Recommendation",
    "affordable_k",
    "break_even_ratios",
    "fit_performance_curve",
    "fit_selectors",
    "lower_is_better",
    "make_plan",
    "option_at_budget",
    "pareto_frontier",
    "plan_command",
    "plot_plan",
    "recommend",
    "select_records",
]
