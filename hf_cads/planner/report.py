"""The whole plan: fits, frontier, recommendation and break-even, as one object and a text report."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence


from ..records import RunRecord
from .fit import PerformanceFit, fit_selectors, lower_is_better, select_records
from .frontier import pareto_frontier
from .recommend import BreakEven, Recommendation, break_even_ratios, recommend

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
