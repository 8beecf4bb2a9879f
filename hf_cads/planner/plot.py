"""The planner figure: runs, fitted curves, frontier, budget and recommendation on a log-FLOPs axis."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .._extras import require_extra
from .report import Plan, display_names

# -- the plot ----------------------------------------------------------------------------------
PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]


def plot_plan(plan: Plan, path: str | Path, *, title: str | None = None) -> Path:
    """Write the planner figure as PNG: log-FLOPs x axis, one colour per selector, scatter = runs,
    curves = fits (band = interval), dashed = Pareto frontier, dotted = before finetuning and budget."""
    require_extra("matplotlib", "plot", "the planner figure")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=(8, 5.2), dpi=130)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    labels = sorted({r.label for r in plan.records})
    colours = {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}
    flops = np.array([r.total_flops for r in plan.records])
    positive = flops[flops > 0]
    if len(positive) == 0:
        raise ValueError("No run spent any FLOPs; nothing to plot on a log axis.")
    left, right = positive.min() / 1.6, max(positive.max(), plan.budget or 0.0) * 1.6
    shown = [r.metrics[plan.metric] for r in plan.records] + [
        r.baseline_metrics[plan.metric] for r in plan.records if plan.metric in r.baseline_metrics
    ]
    names = display_names(labels)  # long family labels: the report's "families" list spells them out
    for label in labels:
        shown += _draw_selector(axes, plan, label, names[label], colours[label], np.geomspace(left, right, 200), left)
    _draw_frontier_and_baseline(axes, plan, right)
    _draw_budget(axes, plan, colours, names)
    _format_axes(axes, plan, left, right, shown, title)
    figure.tight_layout()
    figure.savefig(path)
    return path


def _draw_selector(
    axes: Any, plan: Plan, label: str, name: str, colour: str, grid: np.ndarray, left: float
) -> list[float]:
    """One selector's runs (scatter) and fitted curve with its interval band; returns the curve's values."""
    group = [r for r in plan.records if r.label == label and r.total_flops > 0]
    axes.scatter(
        [r.total_flops for r in group],
        [r.metrics[plan.metric] for r in group],
        s=26,
        alpha=0.8,
        color=colour,
        edgecolors="none",
        zorder=3,
    )
    fit = plan.fits.get(label)
    if fit is None:
        axes.plot([], [], color=colour, marker="o", linestyle="none", label=f"{name} (runs only)")
        return []
    # A curve exists from the selection cost (k = 0) to training on the whole pool (k = |pool|).
    xs = grid[(grid >= fit.selection_flops) & (grid <= float(fit.flops_for_k(fit.pool_size)))]
    xs = np.unique(np.concatenate([xs, [max(fit.selection_flops, left), float(fit.flops_for_k(fit.pool_size))]]))
    axes.plot(xs, fit.predict(xs), color=colour, linewidth=1.8, label=name, zorder=2)
    confidence = plan.recommendation.confidence if plan.recommendation else 0.9
    low, high = fit.interval(xs, confidence)
    if np.isfinite(low).all() and np.isfinite(high).all():
        axes.fill_between(xs, low, high, color=colour, alpha=0.12, linewidth=0)
    return fit.predict(xs).tolist()


def _draw_frontier_and_baseline(axes: Any, plan: Plan, right: float) -> None:
    front = [r for r in plan.frontier if r.total_flops > 0]
    if front:
        xs = [r.total_flops for r in front] + [right]
        ys = [r.metrics[plan.metric] for r in front] + [front[-1].metrics[plan.metric]]
        axes.plot(
            xs,
            ys,
            linestyle="--",
            color="black",
            linewidth=1.2,
            drawstyle="steps-post",
            label="Pareto frontier",
            zorder=4,
        )
    baselines = [r.baseline_metrics[plan.metric] for r in plan.records if plan.metric in r.baseline_metrics]
    if baselines:
        axes.axhline(float(np.mean(baselines)), color="grey", linestyle=":", linewidth=1.0, label="before finetuning")


def _draw_budget(axes: Any, plan: Plan, colours: dict[str, str], names: dict[str, str]) -> None:
    if plan.budget is None:
        return
    axes.axvline(plan.budget, color="grey", linestyle="-.", linewidth=1.0, label=f"budget {plan.budget:.2g}")
    if plan.recommendation is not None:
        rec = plan.recommendation
        fit = plan.fits[rec.selector]
        shared = f"; selection shared by {rec.targets} targets" if rec.targets > 1 else ""
        # The star sits where the curve is read: at c*k + the full (measured) selection cost.
        axes.scatter(
            [float(fit.flops_for_k(rec.k))],
            [rec.predicted],
            marker="*",
            s=220,
            color=colours[rec.selector],
            edgecolors="black",
            linewidths=0.8,
            zorder=5,
            label=f"recommended: {names[rec.selector]}, k={rec.k}{shared}",
        )


def _format_axes(axes: Any, plan: Plan, left: float, right: float, shown: list[float], title: str | None) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

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


def _flops_label(value: float, _position: Any = None) -> str:
    """``2e13``-style tick labels."""
    if value <= 0:
        return ""
    exponent = math.floor(math.log10(value) + 1e-9)
    return f"{value / 10**exponent:.2g}e{exponent}"
