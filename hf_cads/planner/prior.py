"""A measured prior for planning before any run of your own: the 270 compute-optimal runs, normalised.

What transfers from the recorded (model, target) *cells* to a new one is the shape of each
selector's curve, not its numbers. Each cell is normalised as

    x = k / |pool|                       (the training share: C_train / C_full)
    g = s * (P - P0) / D                 (relative gain; s = -1 for losses, +1 for accuracies)

with ``P0`` the untrained model's metric and ``D`` the cell's largest seed-mean gain over all
selectors and fractions, so the best recorded configuration of every cell has ``g = 1``. A cell's
curve of a selector is its seed means at the recorded shares, linear in between, ``g(0) = 0`` and
constant beyond the largest recorded share (no extrapolation). Selection costs are not part of the
prior: they are known exactly before running (:mod:`hf_cads.planner.cost_table`) and charged to
the budget as they are.

**The prior** is the equal-weight mixture of the cells' curves: its prediction for an option is the
mean of the cells' ``g`` and its interval the range over the cells (how much the measured cells
disagree, not a confidence interval). **Updating with your records** (empirical Bayes over the
cells): an observation is ``y = s * (P - P0)`` of one of your runs. Under cell ``c`` it is
``D * g_c(selector, x) + noise`` with your scale ``D`` unknown (log-normal prior fitted to the cells'
scales) and noise ``sigma * D``, where ``sigma`` adds in quadrature the pooled seed spread of the
cells and their shape misfit (how far each cell's curves are from the closest other cell's, both in
units of ``D``): your cell is likely none of the measured ones. Each cell's weight becomes its
prior weight times the marginal likelihood of your observations (``D`` integrated over a grid), so
cells whose curve shapes explain your runs dominate the prediction; with many runs of every
selector the planner fits your records alone (:func:`hf_cads.planner.fit_selectors`).

Example:
    >>> prior = MeasuredPrior.load("target_loss")
    >>> len(prior.cells), sorted(prior.selectors)
    (6, ['bm25', 'embedding', 'less', 'perplexity', 'random'])
    >>> mean, low, high = prior.predict("bm25", 0.1)
    >>> low <= mean <= high
    True
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..records import RunRecord
from .fit import lower_is_better

PRIOR_FILE = Path(__file__).with_name("prior.json")
"""The shipped prior, written by :func:`write_prior` from ``benchmarks/results/compute_optimal_full_runs.jsonl``."""
PRIOR_NOTE = (
    "PRIOR: no records of your own (or too few); predictions are relative gains (1 = the best run of a "
    "measured cell) from the curves of {cells} measured model x target cells, with their range across cells."
)


@dataclass(frozen=True)
class Observation:
    """One of your runs, as the prior sees it: ``gain = s * (P - P0)`` at training share ``share``."""

    selector: str
    share: float
    gain: float


@dataclass(frozen=True)
class PriorCell:
    """One measured (model, target) cell: normalised seed-mean gains per selector at the recorded shares.

    ``selection_share``: the cell's measured selection cost over ``C_full`` per selector (for
    reference and the pilot simulation; a new cell's costs come from its cost table).
    """

    model: str
    target: str
    scale: float
    baseline: float
    curves: dict[str, tuple[tuple[float, ...], tuple[float, ...]]]
    selection_share: dict[str, float] = field(default_factory=dict)
    noise: float = math.nan
    """Root mean square of this cell's single seeds around their seed means, in units of ``scale``."""

    def gain(self, selector: str, share: Any) -> np.ndarray:
        """Relative gain of ``selector`` at training share(s) ``share`` (0 at 0, flat past the last share)."""
        shares, gains = self.curves[selector]
        return np.interp(np.asarray(share, dtype=np.float64), (0.0, *shares), (0.0, *gains))


@dataclass(frozen=True)
class MeasuredPrior:
    """The mixture of measured cells' normalised curves; :meth:`update` weights them by your runs."""

    metric: str
    cells: tuple[PriorCell, ...]
    noise: float
    log_scale_mean: float
    log_scale_sd: float
    weights: tuple[float, ...] = ()

    @classmethod
    def load(cls, metric: str = "target_loss", path: str | Path | None = None) -> MeasuredPrior:
        """The prior of ``metric`` from ``path`` (default: the shipped :data:`PRIOR_FILE`)."""
        data = json.loads(Path(path or PRIOR_FILE).read_text(encoding="utf-8"))
        return cls.from_dict(data, metric)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], metric: str = "target_loss") -> MeasuredPrior:
        if metric not in data["metrics"]:
            raise ValueError(
                f"The measured prior has no metric {metric!r}; it has {sorted(data['metrics'])}. Pass --metric."
            )
        entry = data["metrics"][metric]
        cells = tuple(
            PriorCell(
                c["model"],
                c["target"],
                c["scale"],
                c["baseline"],
                {s: (tuple(v["shares"]), tuple(v["gains"])) for s, v in c["curves"].items()},
                dict(c.get("selection_share", {})),
                float(c.get("noise", math.nan)),
            )
            for c in entry["cells"]
        )
        return cls(metric, cells, entry["noise"], entry["log_scale_mean"], entry["log_scale_sd"])

    @property
    def selectors(self) -> list[str]:
        """Selectors measured in every cell."""
        return sorted(set.intersection(*(set(c.curves) for c in self.cells)))

    @property
    def spread(self) -> float:
        """The likelihood's noise in units of ``D``: the seed noise and the shape misfit (how far a cell's
        curves are from the closest other cell's, :func:`shape_misfit`) added in quadrature, so that a
        new cell that is none of the measured ones does not make the posterior overconfident."""
        return math.hypot(self.noise, shape_misfit(self.cells))

    @property
    def cell_weights(self) -> np.ndarray:
        return (
            np.asarray(self.weights, dtype=np.float64)
            if self.weights
            else np.full(len(self.cells), 1 / len(self.cells))
        )

    def without(self, model: str, target: str) -> MeasuredPrior:
        """The prior built on the other cells (leave-one-cell-out)."""
        kept = tuple(c for c in self.cells if (c.model, c.target) != (model, target))
        scales = np.log([c.scale for c in kept])
        noises = [c.noise for c in kept if math.isfinite(c.noise)]
        noise = float(np.sqrt(np.mean(np.square(noises)))) if noises else self.noise
        return MeasuredPrior(self.metric, kept, noise, float(scales.mean()), float(scales.std(ddof=1)))

    def gains(self, selector: str, share: Any) -> np.ndarray:
        """Every cell's relative gain: shape ``(cells, ...)``."""
        if selector not in self.selectors:
            raise ValueError(f"The measured prior has no selector {selector!r}; it has {self.selectors}.")
        return np.stack([cell.gain(selector, share) for cell in self.cells])

    def predict(self, selector: str, share: float) -> tuple[float, float, float]:
        """``(mean, low, high)`` relative gain: the weighted mean over cells and the range of the cells that
        carry weight (>= 1% of the largest)."""
        values = self.gains(selector, share)
        weights = self.cell_weights
        carried = weights >= 0.01 * weights.max()
        mean = float(weights @ values)
        return mean, min(mean, float(values[carried].min())), max(mean, float(values[carried].max()))

    def log_likelihoods(self, observations: Sequence[Observation]) -> np.ndarray:
        """Per cell: log marginal likelihood of ``observations`` with the scale ``D`` integrated out."""
        if not observations:
            return np.zeros(len(self.cells))
        y = np.array([o.gain for o in observations])
        predicted = np.stack(
            [np.array([cell.gain(o.selector, o.share) for o in observations]) for cell in self.cells]
        )  # cells x observations
        log_d = self.log_scale_mean + self.log_scale_sd * np.linspace(-3, 3, 61)
        prior_d = np.exp(-0.5 * np.linspace(-3, 3, 61) ** 2)
        prior_d /= prior_d.sum()
        d = np.exp(log_d)[None, :, None]  # 1 x grid x 1
        sigma = self.spread * d
        residual = y[None, None, :] - d * predicted[:, None, :]
        log_lik = (-0.5 * (residual / sigma) ** 2 - np.log(sigma) - 0.5 * math.log(2 * math.pi)).sum(axis=2)
        top = log_lik.max(axis=1, keepdims=True)
        return top[:, 0] + np.log((np.exp(log_lik - top) * prior_d[None, :]).sum(axis=1))

    def update(self, observations: Sequence[Observation]) -> MeasuredPrior:
        """The posterior mixture: each cell weighted by how well its curves explain ``observations``.

        Example:
            >>> prior = MeasuredPrior.load("target_loss")
            >>> seen = [Observation("bm25", 0.05, 1.3), Observation("random", 0.05, 0.18)]
            >>> posterior = prior.update(seen)
            >>> round(float(posterior.cell_weights.sum()), 6), len(posterior.cells)
            (1.0, 6)
        """
        log_w = np.log(self.cell_weights) + self.log_likelihoods(observations)
        weights = np.exp(log_w - log_w.max())
        return MeasuredPrior(
            self.metric,
            self.cells,
            self.noise,
            self.log_scale_mean,
            self.log_scale_sd,
            tuple((weights / weights.sum()).tolist()),
        )


def shape_misfit(cells: Sequence[PriorCell]) -> float:
    """Root mean square, over the cells, of each cell's distance to its closest other cell: the
    residual of its relative gains fitted as ``D`` x the other cell's (least squares, ``D >= 0``) at
    its measured options (0 for fewer than 2 cells).

    Example:
        >>> cell = PriorCell("m", "t", 1.0, 0.0, {"bm25": ((0.1, 0.2), (0.5, 1.0))})
        >>> shape_misfit([cell, PriorCell("n", "t", 1.0, 0.0, {"bm25": ((0.1, 0.2), (0.25, 0.5))})])
        0.0
    """
    if len(cells) < 2:
        return 0.0
    selectors = sorted(set.intersection(*(set(c.curves) for c in cells)))
    distances = []
    for held in cells:
        options = [(s, x) for s in selectors for x in held.curves[s][0]]
        y = np.array([held.gain(s, x) for s, x in options])
        best = math.inf
        for other in cells:
            if other is held:
                continue
            g = np.array([other.gain(s, x) for s, x in options])
            scale = max(0.0, float(g @ y) / float(g @ g)) if float(g @ g) > 0 else 0.0
            best = min(best, float(np.sqrt(np.mean((y - scale * g) ** 2))))
        distances.append(best)
    return float(np.sqrt(np.mean(np.square(distances))))


# -- building the prior from run records --------------------------------------------------------------
def record_option(record: RunRecord) -> str:
    """The configuration a record measured: its label (``embedding[aggregate=max]``) or its selector."""
    return record.label or record.selector


def normalised_cells(
    records: Sequence[RunRecord], metric: str, options: Collection[str] | None = None
) -> tuple[list[dict[str, Any]], float, list[str]]:
    """``(cells, noise, used)``: every (model, target) of ``records`` that measured ``metric``, normalised
    (module docstring) over the selectors measured in every cell, and the pooled standard deviation
    of single seeds around their seed means in units of each cell's scale, and the configurations
    (:func:`record_option`) used. ``options`` keeps only the records of those configurations."""
    sign = -1.0 if lower_is_better(metric) else 1.0
    if options is not None:
        wanted = set(options)
        missing = sorted(wanted - {record_option(r) for r in records})
        if missing:
            raise ValueError(f"The records measure none of the prior options {missing}; pick options they hold.")
        records = [r for r in records if record_option(r) in wanted]
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for r in records:
        if metric in r.metrics and metric in r.baseline_metrics and r.k > 0:
            groups.setdefault((r.model, str(r.target)), []).append(r)
    # Only selectors measured in every cell: a selector still being measured would shift the scales.
    # Configurations are told apart by label (embedding with max vs round-robin aggregation are two
    # options); the prior names each by its selector, so one label per selector is kept.
    per_cell = [{record_option(r) for r in group} for group in groups.values()]
    everywhere = set.intersection(*per_cell) if per_cell else set()
    groups = {cell: [r for r in group if record_option(r) in everywhere] for cell, group in groups.items()}
    by_selector: dict[str, set[str]] = {}
    for r in records:
        if record_option(r) in everywhere:
            by_selector.setdefault(r.selector, set()).add(record_option(r))
    several = sorted(option for found in by_selector.values() if len(found) > 1 for option in found)
    if several:
        raise ValueError(
            f"The records measure several configurations of one selector in every cell: {several}; "
            "pass options= with one label per selector."
        )
    cells, pooled = [], []
    for (model, target), group in sorted(groups.items()):
        residuals: list[float] = []
        baseline = float(np.mean([r.baseline_metrics[metric] for r in group]))
        by_option: dict[tuple[str, float], list[float]] = {}
        for r in group:
            by_option.setdefault((r.selector, r.k / r.pool_size), []).append(sign * (r.metrics[metric] - baseline))
        means = {option: float(np.mean(values)) for option, values in by_option.items()}
        scale = max(abs(v) for v in means.values())
        if not scale > 0:
            continue
        curves: dict[str, dict[str, list[float]]] = {}
        for (selector, share), mean in sorted(means.items()):
            curve = curves.setdefault(selector, {"shares": [], "gains": []})
            curve["shares"].append(round(share, 6))
            curve["gains"].append(mean / scale)
            residuals += [
                (v - mean) / scale for v in by_option[(selector, share)] if len(by_option[(selector, share)]) > 1
            ]
        per_row = float(np.median([r.train_flops / r.k for r in group]))
        c_full = per_row * float(np.median([r.pool_size for r in group]))
        selection = {
            s: float(np.median([r.selection_flops for r in group if r.selector == s])) / c_full for s in curves
        }
        cells.append(
            {
                "model": model,
                "target": target,
                "scale": scale,
                "baseline": baseline,
                "runs": len(group),
                "curves": curves,
                "selection_share": selection,
                "noise": float(np.sqrt(np.mean(np.square(residuals)))) if residuals else math.nan,
            }
        )
        pooled += residuals
    noise = float(np.sqrt(np.mean(np.square(pooled)))) if pooled else 0.1
    return cells, noise, sorted(everywhere)


def build_prior(
    records: Sequence[RunRecord],
    metrics: Sequence[str] = ("target_loss", "exact_match"),
    options: Collection[str] | None = None,
) -> dict:
    """The prior's JSON document from run records (several (model, target) cells per metric), of the
    configurations ``options`` (labels, one per selector; default: every one measured in all cells).

    Example:
        >>> from hf_cads.planner.synthetic import synthetic_records
        >>> data = build_prior(synthetic_records(model="a") + synthetic_records(model="b"), ["target_loss"])
        >>> [cell["model"] for cell in data["metrics"]["target_loss"]["cells"]]
        ['a', 'b']
    """
    out: dict[str, Any] = {"method": __doc__.split("\n\n")[0], "metrics": {}}
    for metric in metrics:
        cells, noise, used = normalised_cells(records, metric, options)
        if len(cells) < 2:
            continue
        out["options"] = sorted(set(out.get("options", [])) | set(used))
        scales = np.log([c["scale"] for c in cells])
        out["metrics"][metric] = {
            "cells": cells,
            "noise": noise,
            "log_scale_mean": float(scales.mean()),
            "log_scale_sd": float(scales.std(ddof=1)),
        }
    if not out["metrics"]:
        raise ValueError("A prior needs records of at least 2 (model, target) cells with baseline metrics.")
    return out


def shipped_prior_options() -> list[str]:
    """The configurations (record labels) the shipped prior was built from: each selector's default."""
    return list(json.loads(PRIOR_FILE.read_text(encoding="utf-8"))["options"])


def write_prior(
    records_path: str | Path, path: str | Path = PRIOR_FILE, options: Collection[str] | None = None
) -> Path:
    """Build the prior from a run-record file and write it (the shipped one: :data:`PRIOR_FILE`), of
    the configurations ``options`` (default: those of the shipped prior)."""
    from ..records import read_records

    data = build_prior(read_records(records_path), options=shipped_prior_options() if options is None else options)
    data["source"] = Path(records_path).name
    Path(path).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return Path(path)
