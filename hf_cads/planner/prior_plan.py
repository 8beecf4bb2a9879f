"""Planning from the measured prior and a cost table, before (or with few) runs of your own.

The cost table (``hf-cads estimate --json``) gives each selector's exact selection FLOPs and the
training FLOPs per row; the prior (:mod:`hf_cads.planner.prior`), updated with whatever runs you
have, gives each option's relative gain. The plan recommends the affordable option with the best
posterior mean and, on request, the pilot runs that most reduce its expected regret
(:mod:`hf_cads.planner.pilots`).

Example:
    >>> costs = {"pool_rows": 10_000, "train_flops_per_row": 1e12, "epochs": 1.0,
    ...          "rows": [{"selector": "random", "selection_flops": 0.0},
    ...                   {"selector": "bm25", "selection_flops": 1e9},
    ...                   {"selector": "less", "selection_flops": 4e15}]}
    >>> plan = plan_from_prior(costs, budget=2e15)
    >>> plan.recommended.selector in {"random", "bm25"}, plan.recommended.flops <= 2e15
    (True, True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..records import RunRecord
from .cost_table import largest_affordable_k
from .fit import lower_is_better
from .pilots import PilotDesign, PlanCandidate, propose_pilots, recommend_candidate
from .prior import PRIOR_NOTE, MeasuredPrior, Observation

OPTION_SHARES = (0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
"""Training shares the final recommendation chooses among (the prior is flat past the measured 25%)."""
PILOT_SHARES = (0.05, 0.1, 0.25)
"""Training shares pilots are drawn from: the ones the prior's cells measured."""


@dataclass(frozen=True)
class PriorPlan:
    """A recommendation from the prior (updated by ``observations``), with pilots when asked for."""

    recommended: PlanCandidate
    predicted: tuple[float, float, float]
    budget: float
    pool_rows: int
    observations: tuple[Observation, ...]
    cells: int
    options: tuple[tuple[PlanCandidate, tuple[float, float, float]], ...]
    pilots: PilotDesign | None = None

    def format(self) -> str:
        lines = [PRIOR_NOTE.format(cells=self.cells)]
        if self.observations:
            lines.append(f"Updated with {len(self.observations)} run(s) of yours (cells reweighted by likelihood).")
        k = round(self.recommended.share * self.pool_rows)
        mean, low, high = self.predicted
        lines += [
            "",
            f"Recommendation at {self.budget:.4g} FLOPs: {self.recommended.selector} with k = {k:,} "
            f"({self.recommended.share:.0%} of the pool), {self.recommended.flops:.4g} FLOPs; "
            f"relative gain {mean:.2f} [cells: {low:.2f}, {high:.2f}]",
            "",
            f"{'selector':<12} {'share':>6} {'k':>9} {'FLOPs':>11} {'gain':>6} {'range over cells':>17}",
        ]
        for option, (mean, low, high) in self.options:
            lines.append(
                f"{option.selector:<12} {option.share:>6.0%} {round(option.share * self.pool_rows):>9,} "
                f"{option.flops:>11.4g} {mean:>6.2f} {f'[{low:.2f}, {high:.2f}]':>17}"
            )
        if self.pilots is not None:
            design = self.pilots
            lines += [
                "",
                f"Proposed pilots ({design.pilot_flops:.4g} FLOPs): "
                + (
                    ", ".join(f"{p.selector} k={round(p.share * self.pool_rows):,}" for p in design.pilots)
                    or "none fits"
                ),
                f"Expected regret of the recommendation (relative gain): {design.expected_regret_before:.3f} now, "
                f"{design.expected_regret_after:.3f} after the pilots (criterion: hf_cads.planner.pilots).",
            ]
        return "\n".join(lines)


def candidates_from_costs(
    costs: Mapping[str, Any], selectors: Sequence[str], shares: Sequence[float]
) -> list[PlanCandidate]:
    """Options ``selector x share`` priced from a cost table (``CostTable.to_dict()``)."""
    per_epoch = float(costs["train_flops_per_row"]) * float(costs.get("epochs", 1.0))
    selection = {row["selector"]: float(row["selection_flops"]) for row in costs["rows"]}
    pool = int(costs["pool_rows"])
    return [
        PlanCandidate(name, share, selection[name] + per_epoch * round(share * pool))
        for name in selectors
        if name in selection
        for share in shares
        if round(share * pool) >= 1
    ]


def largest_affordable(costs: Mapping[str, Any], selectors: Sequence[str], budget: float) -> list[PlanCandidate]:
    """Per selector, the most rows ``budget`` trains on after its selection (none when not one row)."""
    per_row, epochs, pool = (
        float(costs["train_flops_per_row"]),
        float(costs.get("epochs", 1.0)),
        int(costs["pool_rows"]),
    )
    selection = {row["selector"]: float(row["selection_flops"]) for row in costs["rows"]}
    out = []
    for name in selectors:
        k = largest_affordable_k(budget, selection[name], per_row, pool, epochs)
        if k >= 1:
            out.append(PlanCandidate(name, k / pool, selection[name] + epochs * per_row * k))
    return out


def observations_from_records(records: Sequence[RunRecord], metric: str) -> list[Observation]:
    """Your runs as the prior's observations: ``s * (P - P0)`` at ``k / pool``."""
    sign = -1.0 if lower_is_better(metric) else 1.0
    return [
        Observation(r.selector, r.k / r.pool_size, sign * (r.metrics[metric] - r.baseline_metrics[metric]))
        for r in records
        if metric in r.metrics and metric in r.baseline_metrics and r.k > 0 and r.pool_size > 0
    ]


def plan_from_prior(
    costs: Mapping[str, Any],
    budget: float,
    *,
    metric: str = "target_loss",
    records: Sequence[RunRecord] = (),
    propose: int = 0,
    pilot_budget: float | None = None,
    prior: MeasuredPrior | None = None,
    draws: int = 8,
) -> PriorPlan:
    """Recommend from the prior updated by ``records``; with ``propose`` also design that many pilots
    within ``pilot_budget`` FLOPs."""
    from ..flops import validate_budget

    budget = validate_budget(budget)
    prior = prior or MeasuredPrior.load(metric)
    selectors = [row["selector"] for row in costs["rows"] if row["selector"] in prior.selectors]
    if not selectors:
        raise ValueError(
            f"The cost table lists no selector the prior measured ({prior.selectors}); run hf-cads estimate with them."
        )
    observations = observations_from_records([r for r in records if r.selector in selectors], metric)
    posterior = prior.update(observations)
    options = candidates_from_costs(costs, selectors, OPTION_SHARES) + largest_affordable(costs, selectors, budget)
    chosen = recommend_candidate(posterior, options, budget)
    if chosen is None:
        cheapest = min(options, key=lambda o: o.flops)
        raise ValueError(
            f"A budget of {budget:.4g} FLOPs affords no option; the cheapest ({cheapest.selector}, 1% of the pool) "
            "needs "
            f"{cheapest.flops:.4g}. Raise --budget."
        )
    design = None
    if propose:
        if pilot_budget is None:
            raise ValueError("--propose needs --pilot-budget FLOPS (what the pilot runs may cost in all).")
        pilots = candidates_from_costs(costs, selectors, PILOT_SHARES)
        design = propose_pilots(posterior, pilots, options, budget, pilot_budget, propose, draws=draws)
    affordable = [o for o in options if o.flops <= budget]
    return PriorPlan(
        recommended=chosen,
        predicted=posterior.predict(chosen.selector, chosen.share),
        budget=budget,
        pool_rows=int(costs["pool_rows"]),
        observations=tuple(observations),
        cells=len(prior.cells),
        options=tuple(
            (o, posterior.predict(o.selector, o.share))
            for o in sorted(affordable, key=lambda o: (selectors.index(o.selector), o.share))
        ),
        pilots=design,
    )
