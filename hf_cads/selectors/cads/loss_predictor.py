"""CADS's loss predictor ``l(|m|)``: the training loss a budget-``C`` run reaches on a subset of size ``|m|``.

A budget ``C`` buys ``C / |m|`` passes over a subset of ``|m|`` rows, so a small subset is seen many
times (low training loss) and a large one only a few times (higher training loss). CADS needs that
curve to replace the inner training problem by a penalty. It is measured at a handful of sizes by
short pilot runs and interpolated with a cubic spline in ``log |m|``; outside the sampled range a
log-linear least-squares fit (``a + b * log |m|``) takes over, because a spline extrapolates wildly.
With only a few points this is the method's weakest link, so :meth:`LossPredictor.loo_mse` reports
its leave-one-out error.

Example:
    >>> from hf_cads.selectors.cads.loss_predictor import LossPredictor
    >>> predictor = LossPredictor.fit([100, 200, 400, 800, 1600], [0.10, 0.18, 0.30, 0.45, 0.60])
    >>> round(float(predictor(400)), 2)
    0.3
    >>> predictor.method_at(3200)
    'log-linear'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class LossPredictor:
    """Interpolates measured ``(subset size, training loss)`` pairs.

    Build it with :meth:`fit`; call it with one size or an array of sizes.
    """

    sizes: np.ndarray
    losses: np.ndarray
    _spline: Any = field(default=None, repr=False)
    _line: tuple[float, float] = field(default=(0.0, 0.0), repr=False)

    @classmethod
    def fit(cls, sizes: Sequence[float], losses: Sequence[float]) -> LossPredictor:
        """Fit from pilot measurements; repeated sizes are averaged."""
        sizes_arr = np.asarray(sizes, dtype=np.float64)
        losses_arr = np.asarray(losses, dtype=np.float64)
        if sizes_arr.shape != losses_arr.shape or sizes_arr.ndim != 1:
            raise ValueError(
                f"sizes and losses must be 1-D and equally long, got {sizes_arr.shape} and {losses_arr.shape}."
            )
        if not (np.all(np.isfinite(sizes_arr)) and np.all(np.isfinite(losses_arr))):
            raise ValueError(
                f"Pilot measurements must be finite; got sizes {sizes_arr.tolist()} and losses {losses_arr.tolist()}."
            )
        if np.any(sizes_arr <= 0):
            raise ValueError(f"Subset sizes must be > 0, got {sizes_arr.tolist()}.")
        unique = np.unique(sizes_arr)
        if len(unique) < 2:
            raise ValueError(
                f"The loss predictor needs pilot runs at >= 2 different subset sizes, got {unique.tolist()}; "
                "raise num_sampling_points or use a larger pool."
            )
        mean_losses = np.array([losses_arr[sizes_arr == size].mean() for size in unique])
        return cls(unique, mean_losses)._build()

    def _build(self) -> LossPredictor:
        from scipy.interpolate import CubicSpline

        log_sizes = np.log(self.sizes)
        # "natural" boundary conditions work from 2 points up (2 points give the straight line).
        self._spline = CubicSpline(log_sizes, self.losses, bc_type="natural")
        slope, intercept = np.polyfit(log_sizes, self.losses, 1)
        self._line = (float(intercept), float(slope))
        return self

    def method_at(self, size: float) -> str:
        """``"spline"`` inside the sampled size range, ``"log-linear"`` outside it."""
        return "spline" if self.sizes[0] <= size <= self.sizes[-1] else "log-linear"

    def __call__(self, size: Any) -> Any:
        size_arr = np.asarray(size, dtype=np.float64)
        if np.any(size_arr <= 0):
            raise ValueError(f"Subset sizes must be > 0, got {size!r}.")
        log_size = np.log(size_arr)
        inside = (size_arr >= self.sizes[0]) & (size_arr <= self.sizes[-1])
        intercept, slope = self._line
        out = np.where(
            inside,
            self._spline(np.clip(log_size, np.log(self.sizes[0]), np.log(self.sizes[-1]))),
            intercept + slope * log_size,
        )
        # Losses are >= 0; the straight line in log-size would cross zero for very large subsets.
        out = np.maximum(out, 0.0)
        return float(out) if out.ndim == 0 else out

    def loo_mse(self) -> float:
        """Leave-one-out mean squared error: refit without each point and predict it.

        The end points are then outside the remaining range, so they test the log-linear fallback;
        inner points test the spline. ``nan`` with fewer than 3 sizes (nothing to refit from).
        """
        if len(self.sizes) < 3:
            return float("nan")
        errors = []
        for left_out in range(len(self.sizes)):
            keep = np.arange(len(self.sizes)) != left_out
            refit = LossPredictor(self.sizes[keep], self.losses[keep])._build()
            errors.append((refit(self.sizes[left_out]) - self.losses[left_out]) ** 2)
        return float(np.mean(errors))

    def to_dict(self) -> dict[str, Any]:
        intercept, slope = self._line
        return {
            "sizes": self.sizes.tolist(),
            "losses": self.losses.tolist(),
            "loglinear_intercept": intercept,
            "loglinear_slope": slope,
            "loo_mse": self.loo_mse(),
        }
