"""The whole plan: fits, frontier, recommendation and break-even, as one object and a text report."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..records import RunRecord
from .fit import PerformanceFit, fit_selectors, lower_is_better, select_records, unbent_fit_reason
from .frontier import pareto_frontier
from .recommend import BreakEven, Recommendation, amortised_selection_flops, break_even_ratios, recommend


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
    selection_costs: dict[str, float] = field(default_factory=dict)
    """Selection costs given instead of the measured ones (``--selection-cost``), by family."""

    def selection_cost(self, label: str) -> float:
        """The family's selection cost: the one given in :attr:`selection_costs`, else the measured one."""
        return float(self.selection_costs.get(label, self.fits[label].selection_flops))

    def amortisation(self) -> dict[str, dict[str, Any]]:
        """Per fitted family, what one of :attr:`targets` finetunes pays for selection and by which
        rule: ``pool / T + target`` from a measured split, else the whole cost ``/ T``."""
        rows = {}
        for label, fit in self.fits.items():
            cost, share = self.selection_cost(label), fit.selection_pool_share
            rows[label] = {
                "selection_flops": cost,
                "pool_flops": None if share is None else share * cost,
                "target_flops": None if share is None else (1 - share) * cost,
                "per_target": amortised_selection_flops(fit, cost, self.targets),
                "rule": "pool / T + target (measured split)"
                if share is not None
                else "C_select / T (no measured split)",
                "runs_with_split": fit.split_runs,
                "runs": fit_runs(self.records, label),
            }
        return rows

    def format(self) -> str:
        """Human-readable tables (at most :data:`REPORT_WIDTH` columns): fits, the option of each
        selector family, recommendation, break-even. Long family labels are shortened in the tables
        and spelled out under "families"."""
        direction = "higher" if self.higher_is_better else "lower"
        first = self.records[0]
        name = display_names(sorted({r.label for r in self.records}))
        lines = [
            f"{len(self.records)} runs of {first.model} on {first.target}; metric {self.metric} ({direction} is "
            "better)",
        ]
        long_names = {short: label for label, short in name.items() if short != label}
        if long_names:
            lines += ["", "families (shortened in the tables):"]
            lines += [
                _wrap(f"{short} = {label.replace(',', ', ')}", indent="      ", first="  ")
                for short, label in long_names.items()
            ]
        lines += [
            "",
            "fits  P(C) = (P_max - P0) * (1 - exp(-lambda * C / C_full)) + P0,  C = c*k + C_select",
            "      (bounded least squares, variable projection over lambda; +- 1 s.e.)",
        ]
        rows = [("selector", "runs", "P0", "P_max", "lambda", "rmse", "c/example", "C_select", "C_full")]
        for label, fit in self.fits.items():
            err = fit.parameter_errors
            rows.append(
                (
                    name[label],
                    str(fit.num_points),
                    f"{fit.p0:.4g}±{err['p0']:.2g}",
                    f"{fit.p_max:.4g}±{err['p_max']:.2g}",
                    f"{fit.lam:.3g}±{err['lam']:.2g}",
                    f"{fit.rmse:.3g}",
                    f"{fit.cost_per_example:.3g}",
                    f"{fit.selection_flops:.3g}",
                    f"{fit.c_full:.3g}",
                )
            )
        lines.append(_table(rows))
        unbent = self.unbent_fits()
        for label, reason in self.skipped.items():
            lines.append(
                _wrap(f"(no curve for {name[label]}: {reason.replace(label, name[label])})", indent="    ", first="  ")
            )
        for label, reason in unbent.items():
            lines.append(
                _wrap(
                    f"note: the runs of {name[label]} have not bent its curve: {reason}. Beyond its largest k the "
                    "fit is a line that keeps improving; a run at a larger k decides.",
                    indent="    ",
                    first="  ",
                )
            )
        lines += ["", "Pareto frontier (best metric at each total FLOPs):"]
        lines.append(
            _table(
                [("total FLOPs", self.metric, "selector", "k", "seed")]
                + [
                    (f"{r.total_flops:.4g}", f"{r.metrics[self.metric]:.4g}", name[r.label], str(r.k), str(r.seed))
                    for r in self.frontier
                ]
            )
        )
        if self.budget is not None:
            amortised = f", selection amortised over {self.targets} targets" if self.targets > 1 else ""
            lines += ["", f"at a budget of {self.budget:.3g} FLOPs per target{amortised}:"]
            if self.targets > 1 and self.fits:
                lines.append(
                    _wrap(
                        "selection per target: a measured split (run records' selection_split: LESS's warmup and "
                        "pool features "
                        "are paid once, its target gradients per target) amortises only the pool part, pool / "
                        f"{self.targets} + "
                        f"target; without one the whole selection cost is divided by {self.targets}.",
                        first="  ",
                        indent="  ",
                    )
                )
                rows = [("selector", "C_select", "pool part", "target part", "per target", "rule")]
                for label, row in self.amortisation().items():
                    split = row["pool_flops"] is not None
                    rule = (
                        "measured split"
                        if split
                        else (
                            "no split: C_select / T"
                            + (
                                f" ({row['runs_with_split']} of {row['runs']} runs have one)"
                                if row["runs_with_split"]
                                else ""
                            )
                        )
                    )
                    rows.append(
                        (
                            name[label],
                            f"{row['selection_flops']:.3g}",
                            f"{row['pool_flops']:.3g}" if split else "-",
                            f"{row['target_flops']:.3g}" if split else "-",
                            f"{row['per_target']:.3g}",
                            rule,
                        )
                    )
                lines += [_table(rows), ""]
            if self.recommendation is None:
                lines.append(f"  {self.recommendation_error}")
            else:
                rec = self.recommendation
                level = f"{rec.confidence:.0%}"
                rows = [("selector", "k", "fraction", "C_select", "C_train", "predicted", f"{level} interval")]
                for o in sorted(rec.options, key=lambda o: -o.predicted if self.higher_is_better else o.predicted):
                    rows.append(
                        (
                            name[o.label],
                            str(o.k),
                            f"{o.fraction:.3f}",
                            f"{o.selection_flops:.3g}",
                            f"{o.train_flops:.3g}",
                            f"{o.predicted:.4g}",
                            f"[{o.interval[0]:.4g}, {o.interval[1]:.4g}]",
                        )
                    )
                lines.append(_table(rows))
                for label, reason in rec.infeasible.items():
                    lines.append(_wrap(f"{name[label]}: unaffordable, {reason}", indent="    ", first="  "))
                lines.append(
                    _wrap(
                        f"recommendation: {name[rec.selector]} with k={rec.k} ({rec.chosen.fraction:.1%} of the "
                        "pool), predicted "
                        f"{self.metric} {rec.predicted:.4g} ({level} interval {rec.interval[0]:.4g} .. "
                        f"{rec.interval[1]:.4g})"
                    )
                )
                if rec.chosen.extrapolation > EXTRAPOLATION_WARNING:
                    lines.append(
                        _wrap(
                            f"warning: k={rec.k} is {rec.chosen.extrapolation:.1f}x the largest k measured for "
                            f"{name[rec.selector]} ({rec.chosen.measured_k}): the prediction extrapolates its "
                            "fitted curve. "
                            "Record a run near this k (a larger fraction in hf-cads sweep) before relying on it."
                        )
                    )
                if rec.selector in unbent:
                    lines.append(
                        _wrap(
                            f"warning: the fit of {name[rec.selector]} has not bent within its runs "
                            f"({unbent[rec.selector]}): the recommendation may rest on a line, not a measured curve."
                        )
                    )
            affordable = [r for r in self.frontier if r.total_flops <= self.budget]
            if affordable:
                run = affordable[-1]  # the frontier improves with FLOPs: its last affordable run is the best
                lines.append(
                    _wrap(
                        f"best recorded run within the budget: {name[run.label]} k={run.k} seed={run.seed}, "
                        f"{self.metric} {run.metrics[self.metric]:.4g} at {run.total_flops:.3g} FLOPs"
                    )
                )
            if self.break_even:
                lines += [
                    "",
                    _wrap(
                        "break-even: training / selection model size (matmul params) from which each expensive "
                        "selector beats the cheap ones at this budget (as a multiple of C_full):"
                    ),
                ]
                rows = [("selector", "vs", "C_select/budget", "N_t/N_s now", "break-even N_t/N_s", "x N_t now")]
                for b in self.break_even:
                    rows.append(
                        (
                            name.get(b.selector, b.selector),
                            name.get(b.versus, b.versus),
                            f"{b.selection_share:.3g}",
                            f"{b.reference_ratio:.3g}",
                            _ratio_text(b.ratio, b.scale),
                            _ratio_text(b.scale, b.scale),
                        )
                    )
                lines.append(_table(rows))
                on_lines = [name.get(b.selector, b.selector) for b in self.break_even if b.selector in unbent]
                if on_lines:
                    lines.append(
                        _wrap(
                            f"({', '.join(on_lines)}: unbent fit, so the break-even is the fitted line's, not the "
                            "data's)",
                            indent="   ",
                            first="  ",
                        )
                    )
        return "\n".join(lines)

    def unbent_fits(self) -> dict[str, str]:
        """Families whose fitted curve is a line rather than a measured bend, with the reason
        (:func:`hf_cads.planner.unbent_fit_reason`)."""
        reasons = {label: unbent_fit_reason(fit) for label, fit in self.fits.items()}
        return {label: reason for label, reason in reasons.items() if reason is not None}

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain data (``hf-cads plan --json``): every family with its full label, the
        options that define it and a run's whole selector configuration, its fit, the frontier and
        the recommendation."""
        families: dict[str, Any] = {}
        for label in sorted({r.label for r in self.records}):
            group = [r for r in self.records if r.label == label]
            fit = self.fits.get(label)
            share = math.nan if fit is None else fit.measured_share
            families[label] = {
                "selector": group[0].selector,
                "runs": len(group),
                "selector_config": group[0].selector_config,
                "fit": None
                if fit is None
                else {
                    "p0": fit.p0,
                    "p_max": fit.p_max,
                    "lambda": fit.lam,
                    "rmse": fit.rmse,
                    "errors": fit.parameter_errors,
                    "cost_per_example": fit.cost_per_example,
                    "selection_flops": fit.selection_flops,
                    "c_full": fit.c_full,
                    "selection_pool_flops": fit.selection_pool_flops,
                    "split_runs": fit.split_runs,
                    "largest_measured_k": fit.max_k,
                    "measured_share": None if math.isnan(share) else share,
                    "unbent": unbent_fit_reason(fit),
                },
                "no_fit_reason": self.skipped.get(label),
            }
        rec = self.recommendation
        return {
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "budget": self.budget,
            "targets": self.targets,
            "selection_per_target": self.amortisation(),
            "families": families,
            "frontier": [
                {
                    "label": r.label,
                    "k": r.k,
                    "seed": r.seed,
                    "total_flops": r.total_flops,
                    "metric": r.metrics[self.metric],
                }
                for r in self.frontier
            ],
            "recommendation": None
            if rec is None
            else {
                "selector": rec.selector,
                "k": rec.k,
                "predicted": rec.predicted,
                "interval": list(rec.interval),
                "largest_measured_k": rec.chosen.measured_k,
                "infeasible": dict(rec.infeasible),
            },
            "recommendation_error": self.recommendation_error,
        }


EXTRAPOLATION_WARNING = 2.0
"""A recommended ``k`` more than this many times the largest measured ``k`` gets a warning in the report."""

REPORT_WIDTH = 120
"""Columns :meth:`Plan.format` stays within."""
LABEL_WIDTH = 32
"""Family labels longer than this are shortened in report tables."""


def display_names(labels: Sequence[str], width: int = LABEL_WIDTH) -> dict[str, str]:
    """Table names for family labels: a label up to ``width`` characters as it is, a longer one as
    its selector name with a number (``cads-e#1``), unique among ``labels``.

    Example:
        >>> long = "cads-e[" + "x=1," * 20 + "y=2]"
        >>> names = display_names(["bm25", long])
        >>> names["bm25"], names[long]
        ('bm25', 'cads-e#1')
    """
    names: dict[str, str] = {}
    taken = {label for label in labels if len(label) <= width}
    counters: dict[str, int] = {}
    for label in labels:
        if len(label) <= width:
            names[label] = label
            continue
        base = label.split("[", 1)[0][: width - 4]
        while True:
            counters[base] = counters.get(base, 0) + 1
            short = f"{base}#{counters[base]}"
            if short not in taken:
                break
        taken.add(short)
        names[label] = short
    return names


def fit_runs(records: Sequence[RunRecord], label: str) -> int:
    """How many of ``records`` belong to the family ``label``."""
    return sum(r.label == label for r in records)


def _wrap(text: str, indent: str = "  ", first: str = "") -> str:
    return "\n".join(
        textwrap.wrap(
            text,
            width=REPORT_WIDTH,
            initial_indent=first,
            subsequent_indent=indent,
            break_on_hyphens=False,
            break_long_words=True,
        )
    )


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
    plan = Plan(
        chosen,
        metric,
        higher,
        fits,
        skipped,
        [chosen[i] for i in indices],
        budget=budget,
        targets=targets,
        selection_costs=dict(selection_costs or {}),
    )
    if budget is not None and fits:
        try:
            plan.recommendation = recommend(budget, fits, selection_costs, targets=targets, confidence=confidence)
        except ValueError as err:
            plan.recommendation_error = str(err)
        plan.break_even = break_even_ratios(fits, budget, selection_costs, targets=targets)
    elif budget is not None:
        plan.recommendation_error = "no selector has enough runs for a curve"
    return plan
