"""Fitting the performance model ``P(C)`` to run records (one curve per selector label).

See :mod:`hf_cads.planner` for the model and the fitting method.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..records import RunRecord

logger = logging.getLogger(__name__)

EXPENSIVE_SELECTORS = ("perplexity", "less", "cads", "cads-e", "cads-s", "rds")
"""Selectors that score every pool row with a language model (forward passes or gradients)."""

_LOWER_IS_BETTER_WORDS = ("loss", "perplexity", "ppl", "error", "wer", "cer", "nll")


def lower_is_better(metric: str) -> bool:
    """Guess the direction of a metric from its name: losses, perplexities and error rates go down."""
    name = metric.lower()
    return any(word in name for word in _LOWER_IS_BETTER_WORDS)


_FRACTION_WORDS = ("accuracy", "exact_match", "pass@")
BENT_SHARE = 0.5
"""A fitted curve counts as measured when the selector's largest run reached at least this share of
its predicted change ``P0 -> P_max`` (:func:`unbent_fit_reason`)."""


def metric_ceiling(metric: str) -> float:
    """The largest value a metric can take, guessed from its name: 1 for accuracies and exact match
    (fractions), else unbounded."""
    name = metric.lower()
    return 1.0 if any(word in name for word in _FRACTION_WORDS) else math.inf


def unbent_fit_reason(fit: PerformanceFit) -> str | None:
    """Why ``fit`` is a line rather than a measured curve, or ``None`` when its runs bent it.

    With few runs that have not saturated yet, the least-squares curve is a straight line stopped
    only by a bound of the fit: its asymptote sits at 0 for a loss (the curve keeps falling) or at
    the metric's ceiling for an accuracy (it keeps rising to a perfect score), or its largest run
    reached under :data:`BENT_SHARE` of its predicted change. Beyond the largest measured ``k`` such a
    curve keeps improving at its measured pace, so it overtakes every saturating curve: recommendations
    and break-even ratios that rely on it extrapolate the fit, not the data.

    Example:
        >>> import numpy as np
        >>> line = PerformanceFit("less", 4.4, 0.0, 0.03, np.zeros((3, 3)), 1e14, higher_is_better=False,
        ...                       cost_per_example=1e11, max_k=250)
        >>> unbent_fit_reason(line)
        'its asymptote P_max = 0 is the bound of the fit (the curve keeps falling)'
    """
    if (
        fit.higher_is_better
        and math.isfinite(fit.ceiling)
        and fit.p_max >= fit.ceiling - 1e-9 * max(1.0, abs(fit.ceiling))
    ):
        return (
            f"its asymptote P_max = {fit.p_max:.3g} is the bound of the fit, the metric's ceiling "
            "(the curve keeps rising)"
        )
    if not fit.higher_is_better and fit.p0 > 0 and abs(fit.p_max) <= 1e-9 * max(1.0, abs(fit.p0)):
        return "its asymptote P_max = 0 is the bound of the fit (the curve keeps falling)"
    share = fit.measured_share
    if not math.isnan(share) and share < BENT_SHARE:
        return f"its largest run (k={fit.max_k}) reached only {share:.0%} of the fitted change P0 -> P_max"
    return None


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
        selection_pool_flops: the part of ``C_select`` that depends on the pool alone (LESS's
            warmup and pool features), measured by every run of the family (records'
            ``selection_split``); ``None`` when some run has no split. With ``--targets T`` the
            planner charges a target ``pool / T + (C_select - pool)`` (else ``C_select / T``).
        split_runs: how many of the family's runs carry a measured split.
        pool_size: candidate rows (the largest possible ``k``).
        model_params / selection_model_params: matmul parameters of the trained and the selection model.
        num_points / rmse: size and residual of the fit.
        max_k: the largest subset size among the fitted runs; predictions far beyond it extrapolate.
        ceiling: the largest value the metric can take, applied as a bound of the fit (``inf``: none).
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
    selection_pool_flops: float | None = None
    split_runs: int = 0
    pool_size: int = 0
    model_params: int = 0
    selection_model_params: int = 0
    selector: str | None = None
    num_points: int = 0
    rmse: float = float("nan")
    max_k: int = 0
    ceiling: float = math.inf

    @property
    def selection_pool_share(self) -> float | None:
        """Share of the selection cost that depends on the pool alone (``None``: not measured)."""
        if self.selection_pool_flops is None:
            return None
        return min(1.0, self.selection_pool_flops / self.selection_flops) if self.selection_flops > 0 else 1.0

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
        # The metric cannot pass its ceiling (an accuracy of 1), whatever the normal approximation says.
        return np.minimum(centre - spread, self.ceiling), np.minimum(centre + spread, self.ceiling)

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

    @property
    def measured_share(self) -> float:
        """Share of the fitted change ``P0 -> P_max`` reached at the largest measured ``k``:
        ``1 - exp(-lambda C(max_k) / C_full)`` (``nan`` without a measured ``k``)."""
        if self.max_k <= 0 or not self.c_full > 0:
            return float("nan")
        return float(1.0 - math.exp(-self.lam * float(self.flops_for_k(self.max_k)) / self.c_full))

    def score(self, value: Any) -> np.ndarray:
        """``value`` oriented so that larger is better."""
        value = np.asarray(value, dtype=np.float64)
        return value if self.higher_is_better else -value


def _linear_part(g: np.ndarray, y: np.ndarray, lower_a: float, upper: float = math.inf) -> tuple[float, float, float]:
    """``(a, delta, sse)`` of the least-squares ``y ~ a + delta * g`` with ``delta >= 0``,
    ``a >= lower_a`` and ``a + delta <= upper`` (the metric's ceiling). The problem is a convex
    quadratic in two variables over a polygon, so its minimum is the best feasible one among the
    unconstrained minimum, the minima on each edge and the vertices."""
    candidates: list[tuple[float, float]] = [(float(y.mean()), 0.0)]
    g_centred = g - g.mean()
    spread = float(g_centred @ g_centred)
    if spread > 0:
        delta = float(g_centred @ (y - y.mean())) / spread
        candidates.append((float(y.mean() - delta * g.mean()), delta))
    if math.isfinite(lower_a):
        norm = float(g @ g)
        candidates += [(lower_a, 0.0), (lower_a, float(g @ (y - lower_a)) / norm if norm > 0 else 0.0)]
    if math.isfinite(upper):
        # On a + delta = upper the curve is upper + delta * (g - 1).
        h = g - 1.0
        norm = float(h @ h)
        on_edge = float(h @ (y - upper)) / norm if norm > 0 else 0.0
        candidates += [(upper, 0.0), (upper - on_edge, on_edge)]
        if math.isfinite(lower_a):
            candidates.append((lower_a, upper - lower_a))
    tolerance = 1e-12 * max(1.0, abs(upper)) if math.isfinite(upper) else 0.0
    best = (float("nan"), float("nan"), float("inf"))
    for a, delta in candidates:
        if delta < 0 or a < lower_a or a + delta > upper + tolerance:
            continue
        residual = y - a - delta * g
        sse = float(residual @ residual)
        if sse < best[2]:
            best = (a, delta, sse)
    return best  # never empty: (upper, 0) or (lower_a, 0) or (mean, 0) is feasible


def fit_performance_curve(
    flops: Sequence[float],
    metric: Sequence[float],
    c_full: float,
    *,
    higher_is_better: bool = True,
    label: str = "",
    warn_undetermined: bool = True,
    ceiling: float = math.inf,
    **attributes: Any,
) -> PerformanceFit:
    """Fit ``P(C)`` to ``(flops, metric)`` points by bounded least squares.

    Parameters are fitted as ``(a, delta, lambda)`` with ``P0 = a, P_max = a + delta`` (higher is
    better) or ``P_max = a, P0 = a + delta`` (lower is better), ``delta >= 0`` and ``a >= 0``, which
    are exactly the bounds ``0 <= P0 <= P_max`` (mirrored). If a metric value is negative the lower
    bound of ``a`` is dropped. ``ceiling`` is the largest value the metric can take (1 for an
    accuracy, :func:`metric_ceiling`); when every value is within it, ``P0`` and ``P_max`` are kept
    below it too, so that runs still rising linearly fit a curve that saturates at the ceiling rather
    than one heading for an accuracy of 14 (the fit records the bound it applied as
    :attr:`PerformanceFit.ceiling`). For a fixed ``lambda`` the curve is linear in ``(a, delta)``, solved in
    closed form; the sum of squares profiled over ``lambda`` is searched on a log grid spanning
    ``1e-4 / max(x)`` to ``1e4 / min(x)`` (``x = C / C_full``) and refined around its minimum
    (variable projection). The covariance is ``s^2 (J^T J)^-1`` at the optimum, ``s^2`` the residual
    variance, as in :func:`scipy.optimize.curve_fit`. ``attributes`` fill the other
    :class:`PerformanceFit` fields. A fit whose parameters the data cannot determine (a step, a
    line) gets infinite intervals and a logged warning; ``warn_undetermined=False`` drops the warning,
    for callers that use only the predictions (bootstrap resamples).

    Raises:
        ValueError: fewer than 4 points (3 parameters plus one degree of freedom for the
            uncertainty), non-finite values, or ``c_full <= 0``.
    """
    from scipy.optimize import minimize_scalar

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
    lower_a = 0.0 if (y >= 0).all() else -np.inf
    upper = float(ceiling) if (y <= ceiling).all() else math.inf

    def shape(lam: float) -> np.ndarray:
        """The curve's non-linear part: ``P = a + delta * shape``."""
        decay = np.exp(-lam * x)
        return 1.0 - decay if higher_is_better else decay

    def profile(log_lam: float) -> float:
        return _linear_part(shape(math.exp(log_lam)), y, lower_a, upper)[2]

    positive_x = x[x > 0]
    span = (float(positive_x.min()), float(positive_x.max())) if len(positive_x) else (1.0, 1.0)
    grid = np.linspace(math.log(1e-4 / span[1]), math.log(1e4 / span[0]), 97)
    sse_grid = np.array([profile(v) for v in grid])
    # The first grid minimum, so that ties (a flat profile) resolve the same way on every machine.
    i = int(np.flatnonzero(sse_grid <= sse_grid.min() * (1 + 1e-12) + 1e-300)[0])
    low, high = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    refined = minimize_scalar(profile, bounds=(low, high), method="bounded", options={"xatol": 1e-8})
    log_lam = float(refined.x) if refined.fun <= sse_grid[i] else float(grid[i])
    lam = math.exp(log_lam)
    g = shape(lam)
    a, delta, sse = _linear_part(g, y, lower_a, upper)

    # Jacobian of the curve in (a, delta, lam), then the covariance mapped to (p0, p_max, lam).
    decay = np.exp(-lam * x)
    d_lam = delta * x * decay if higher_is_better else -delta * x * decay
    jac = np.column_stack([np.ones_like(x), g, d_lam])
    _, singular, vt = np.linalg.svd(jac, full_matrices=False)
    threshold = np.finfo(np.float64).eps * max(jac.shape) * singular[0]
    if (singular > threshold).all():
        pcov = (vt.T / singular**2) @ vt * (sse / (len(y) - 3))
    else:
        pcov = np.full((3, 3), np.inf)
    jacobian = (
        np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        if higher_is_better
        else np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    )
    p0, p_max, _ = jacobian @ np.array([a, delta, lam])
    with np.errstate(invalid="ignore"):  # inf * 0 in an undetermined covariance
        covariance = jacobian @ pcov @ jacobian.T
    if not np.isfinite(covariance).all():
        if warn_undetermined:
            logger.warning(
                "The fit of %s has undetermined parameters (a curve flat in the data?): intervals are infinite.", label
            )
        covariance = np.where(np.isfinite(covariance), covariance, np.inf)
    return PerformanceFit(
        label=label,
        p0=float(p0),
        p_max=float(p_max),
        lam=float(lam),
        covariance=covariance,
        c_full=float(c_full),
        higher_is_better=higher_is_better,
        num_points=len(y),
        rmse=math.sqrt(sse / len(y)),
        ceiling=upper,
        **attributes,
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
        raise ValueError(
            f"No record matches model={model!r}, target={target!r}; recorded (model, target) pairs: "
            f"{sorted({(r.model, str(r.target)) for r in with_metric})}."
        )
    if len(pairs) > 1:
        raise ValueError(
            f"The records mix (model, target) pairs {pairs}; curves only compare runs of one pair. "
            "Pass --model and --target (or model=/target=)."
        )
    return chosen


def fit_selectors(
    records: Sequence[RunRecord],
    metric: str = "target_loss",
    *,
    higher_is_better: bool | None = None,
    include_baseline: bool = True,
    warn_undetermined: bool = True,
) -> tuple[dict[str, PerformanceFit], dict[str, str]]:
    """Fit one curve per record label. Returns ``(fits, skipped)`` where ``skipped`` says why a
    label got no curve (too few runs, no convergence).

    With ``include_baseline`` the metric measured before training (``baseline_metrics``, zero
    FLOPs) is one more point of every curve, anchoring ``P0``. ``C_full`` is shared by all curves:
    the median training cost per example times the pool size. ``warn_undetermined`` is passed to
    :func:`fit_performance_curve`.

    Example:
        >>> from hf_cads import read_records
        >>> fits, skipped = fit_selectors(read_records("runs.jsonl"), "target_loss")  # doctest: +SKIP
        >>> fits["bm25"].predict([1e15])  # doctest: +SKIP
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
                flops,
                values,
                c_full,
                higher_is_better=higher,
                label=label,
                warn_undetermined=warn_undetermined,
                ceiling=metric_ceiling(metric),
                cost_per_example=float(np.median([r.train_flops / r.k for r in group])),
                selection_flops=float(np.median([r.selection_flops for r in group])),
                selection_pool_flops=_pool_flops(group),
                split_runs=sum(r.selection_split is not None for r in group),
                pool_size=int(np.median([r.pool_size for r in group])),
                model_params=int(np.median([r.model_params for r in group])),
                selection_model_params=int(np.median([r.selection_model_params for r in group])),
                selector=group[0].selector,
                max_k=max(r.k for r in group),
            )
        except ValueError as err:
            skipped[label] = str(err)
    return fits, skipped


def _pool_flops(group: Sequence[RunRecord]) -> float | None:
    """Median pool part of the runs' measured selection splits; ``None`` unless every run has one."""
    if not group or any(r.selection_split is None for r in group):
        return None
    return float(np.median([r.selection_split["pool"] for r in group]))  # type: ignore[index]
