"""Pilot design by simulation on the 270 compute-optimal runs, leave-one-cell-out.

For each (model, target) cell of ``benchmarks/results/compute_optimal_full_runs.jsonl`` (target
loss: 6 cells), the measured prior is built on the other cells (:mod:`hf_cads.planner.prior`).
Pilots are bought from the held-out cell's recorded runs (15 options: 5 selectors x 5/10/25% of
the pool; a pilot is one seed's run, its FLOPs the recorded ones), the posterior recommends an
option for the final budget ``K`` (a multiple of the cell's ``C_full``), and the regret is the
held-out cell's best affordable seed-mean relative gain minus that of the recommendation (0 = the
best measured option; 1 = the spread between the untrained model and the cell's best run). Three
ways to choose ``N`` pilots within the pilot budget ``B``:

- **designed**: :func:`hf_cads.planner.pilots.propose_pilots` (lowest expected regret, greedy);
- **random**: ``N`` options drawn at random among those the remaining budget affords (20 draws);
- **grid**: the cheap selectors (random, bm25, embedding) at 5/10/25%, cheapest first, the first ``N``
  that fit.

Each is repeated for the seeds 0, 1, 2 (the pilot's outcome is that seed's run). "prior only" buys
nothing. Writes ``benchmarks/results/pilot_design.{json,md}``.

    python benchmarks/pilot_design.py            # ~ minutes on one CPU core
    python benchmarks/pilot_design.py --write-prior   # also regenerate hf_cads/planner/prior.json
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from _common import RESULTS, make_parser, markdown_table, write_json, write_markdown

from hf_cads.planner.pilots import PlanCandidate, propose_pilots, recommend_candidate
from hf_cads.planner.prior import (
    PRIOR_FILE,
    MeasuredPrior,
    Observation,
    build_prior,
    record_option,
    shipped_prior_options,
    write_prior,
)
from hf_cads.records import read_records

RECORDS = RESULTS / "compute_optimal_full_runs.jsonl"
BUDGETS = (0.1, 0.3, 1.0)
"""Final budgets ``K`` as multiples of the held-out cell's ``C_full``."""
DESIGNS = ((3, 0.5), (3, 1.5), (6, 1.5), (9, 1.5))
"""``(N pilots, pilot budget B as a multiple of C_full)``."""
CHEAP = ("random", "bm25", "embedding")
RANDOM_DRAWS = 20


def held_out_cell(
    records: list[Any], model: str, target: str, metric: str, selectors: Sequence[str]
) -> dict[str, Any]:
    """The cell's options of ``selectors`` (seed-mean cost and relative gain) and each seed's run per option."""
    sign = -1.0  # target loss: lower is better
    group = [
        r
        for r in records
        if r.model == model and r.target == target and metric in r.metrics and r.selector in selectors
    ]
    baseline = float(np.mean([r.baseline_metrics[metric] for r in group]))
    per_row = float(np.median([r.train_flops / r.k for r in group]))
    c_full = per_row * float(np.median([r.pool_size for r in group]))
    options: dict[tuple[str, float], list[Any]] = {}
    for r in group:
        options.setdefault((r.selector, round(r.k / r.pool_size, 6)), []).append(r)
    means = {o: float(np.mean([sign * (r.metrics[metric] - baseline) for r in rs])) for o, rs in options.items()}
    scale = max(abs(v) for v in means.values())
    candidates = {
        o: PlanCandidate(o[0], o[1], float(np.mean([r.total_flops for r in rs])) / c_full) for o, rs in options.items()
    }
    runs = {o: {r.seed: sign * (r.metrics[metric] - baseline) for r in rs} for o, rs in options.items()}
    return {
        "candidates": candidates,
        "gain": {o: v / scale for o, v in means.items()},
        "runs": runs,
        "c_full": c_full,
    }


def regret_of(prior: MeasuredPrior, cell: dict[str, Any], pilots: list[PlanCandidate], seed: int, budget: float):
    """Regret (relative gain) of the recommendation after observing ``pilots`` (that seed's runs)."""
    key = {c: o for o, c in cell["candidates"].items()}
    observations = [Observation(p.selector, p.share, cell["runs"][key[p]][seed]) for p in pilots]
    posterior = prior.update(observations)
    options = [c for c in cell["candidates"].values() if c.selector in prior.selectors]
    chosen = recommend_candidate(posterior, options, budget)
    affordable = [c for c in options if c.flops <= budget]
    if chosen is None:
        return None
    best = max(cell["gain"][key[c]] for c in affordable)
    return best - cell["gain"][key[chosen]], chosen


def random_pilots(candidates: list[PlanCandidate], count: int, pilot_budget: float, rng: np.random.Generator):
    chosen: list[PlanCandidate] = []
    spent = 0.0
    while len(chosen) < count:
        fits = [c for c in candidates if c not in chosen and spent + c.flops <= pilot_budget]
        if not fits:
            break
        pick = fits[int(rng.integers(len(fits)))]
        chosen.append(pick)
        spent += pick.flops
    return chosen


def grid_pilots(candidates: list[PlanCandidate], count: int, pilot_budget: float) -> list[PlanCandidate]:
    chosen: list[PlanCandidate] = []
    spent = 0.0
    for c in sorted((c for c in candidates if c.selector in CHEAP), key=lambda c: (c.flops, c.selector)):
        if len(chosen) < count and spent + c.flops <= pilot_budget:
            chosen.append(c)
            spent += c.flops
    return chosen


def simulate(metric: str = "target_loss", draws: int = 6) -> dict[str, Any]:
    # The configurations of the shipped prior only: the records also hold newer selectors and options.
    options = set(shipped_prior_options())
    records = [r for r in read_records(RECORDS) if record_option(r) in options]
    full = MeasuredPrior.from_dict(build_prior(records, [metric]), metric)
    rows: list[dict[str, Any]] = []
    for held in full.cells:
        prior = full.without(held.model, held.target)
        cell = held_out_cell(records, held.model, held.target, metric, full.selectors)
        candidates = [c for c in cell["candidates"].values() if c.selector in prior.selectors]
        for budget in BUDGETS:
            base = [regret_of(prior, cell, [], seed, budget) for seed in (0, 1, 2)]
            rows.append(_row(held, budget, "prior only", 0, 0.0, [b[0] for b in base], 0.0, [b[1] for b in base]))
            for count, pilot_budget in DESIGNS:
                design = propose_pilots(prior, candidates, candidates, budget, pilot_budget, count, draws=draws)
                designed = [regret_of(prior, cell, list(design.pilots), seed, budget) for seed in (0, 1, 2)]
                rows.append(
                    _row(
                        held,
                        budget,
                        "designed",
                        count,
                        pilot_budget,
                        [d[0] for d in designed],
                        design.pilot_flops,
                        [d[1] for d in designed],
                        [f"{p.selector}@{p.share:g}" for p in design.pilots],
                    )
                )
                grid = grid_pilots(candidates, count, pilot_budget)
                gridded = [regret_of(prior, cell, grid, seed, budget) for seed in (0, 1, 2)]
                rows.append(
                    _row(
                        held,
                        budget,
                        "grid",
                        count,
                        pilot_budget,
                        [g[0] for g in gridded],
                        sum(p.flops for p in grid),
                        [g[1] for g in gridded],
                        [f"{p.selector}@{p.share:g}" for p in grid],
                    )
                )
                rng = np.random.default_rng(0)
                regrets, spent = [], []
                for _ in range(RANDOM_DRAWS):
                    pilots = random_pilots(candidates, count, pilot_budget, rng)
                    spent.append(sum(p.flops for p in pilots))
                    regrets += [regret_of(prior, cell, pilots, seed, budget)[0] for seed in (0, 1, 2)]
                rows.append(_row(held, budget, "random", count, pilot_budget, regrets, float(np.mean(spent)), []))
    return {"metric": metric, "rows": rows, "summary": summary(rows)}


def _row(cell, budget, strategy, count, pilot_budget, regrets, pilot_flops, chosen, pilots=()) -> dict[str, Any]:
    return {
        "model": cell.model,
        "target": cell.target,
        "budget_multiple": budget,
        "strategy": strategy,
        "pilots": count,
        "pilot_budget_multiple": pilot_budget,
        "pilot_flops_multiple": pilot_flops,
        "regret": float(np.mean(regrets)),
        "recommended": sorted({f"{c.selector}@{c.share:g}" for c in chosen}),
        "pilot_runs": list(pilots),
    }


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean regret and pilot FLOPs per (strategy, N, B), over cells and budgets."""
    keys = sorted(
        {(r["strategy"], r["pilots"], r["pilot_budget_multiple"]) for r in rows}, key=lambda k: (k[1], k[2], k[0])
    )
    out = []
    for strategy, count, pilot_budget in keys:
        mine = [
            r
            for r in rows
            if (r["strategy"], r["pilots"], r["pilot_budget_multiple"]) == (strategy, count, pilot_budget)
        ]
        out.append(
            {
                "strategy": strategy,
                "pilots": count,
                "pilot_budget_multiple": pilot_budget,
                "mean_regret": float(np.mean([r["regret"] for r in mine])),
                "regret_standard_error": float(np.std([r["regret"] for r in mine], ddof=1) / np.sqrt(len(mine))),
                "zero_regret_share": float(np.mean([r["regret"] <= 1e-12 for r in mine])),
                "mean_pilot_flops_multiple": float(np.mean([r["pilot_flops_multiple"] for r in mine])),
                "cases": len(mine),
            }
        )
    return out


def markdown(result: dict[str, Any], seconds: float) -> list[str]:
    lines = [
        "# Pilot design: which pilot runs to buy before the final finetune",
        "",
        f"Metric: {result['metric']}; leave-one-cell-out over the "
        f"{len({(r['model'], r['target']) for r in result['rows']})} "
        f"measured model x target cells of the compute-optimal runs; final budgets K = {list(BUDGETS)} x C_full; "
        "regret in relative gain (0 = the best measured option within K, 1 = untrained -> the cell's best run), "
        "mean over cells, budgets and the 3 seeds of the pilot outcomes (random pilots: also over 20 draws). "
        "Pilot FLOPs in multiples of the held-out cell's C_full (training on the whole pool once). "
        "The standard error is over the 18 (cell, budget) cases, each averaged over its seeds (and draws).",
        "",
    ]
    header = ["strategy", "N pilots", "pilot budget B (x C_full)", "mean regret (± s.e.)", "zero-regret share"]
    lines += markdown_table(
        [*header, "pilot FLOPs (x C_full)"],
        [
            [
                s["strategy"],
                s["pilots"],
                f"{s['pilot_budget_multiple']:g}",
                f"{s['mean_regret']:.3f} ± {s['regret_standard_error']:.3f}",
                f"{s['zero_regret_share']:.0%}",
                f"{s['mean_pilot_flops_multiple']:.2f}",
            ]
            for s in result["summary"]
        ],
    )
    lines += ["", "## Per cell", ""]
    lines += markdown_table(
        ["model", "target", "K (x C_full)", "strategy", "N", "B", "regret", "pilot FLOPs", "pilots", "recommended"],
        [
            [
                r["model"],
                r["target"],
                f"{r['budget_multiple']:g}",
                r["strategy"],
                r["pilots"],
                f"{r['pilot_budget_multiple']:g}",
                f"{r['regret']:.3f}",
                f"{r['pilot_flops_multiple']:.2f}",
                ", ".join(r["pilot_runs"]) or "-",
                ", ".join(r["recommended"]) or "-",
            ]
            for r in result["rows"]
        ],
    )
    lines += ["", f"Simulated in {seconds:.0f} s."]
    return lines


def main() -> int:
    arguments = make_parser(__doc__)
    arguments.add_argument("--write-prior", action="store_true", help=f"regenerate {PRIOR_FILE.name} from the records")
    arguments.add_argument("--draws", type=int, default=6, help="simulated outcomes per hypothesis (default 6)")
    options = arguments.parse_args()
    if options.write_prior:
        print(f"prior: {write_prior(RECORDS)}")
    started = time.time()
    result = simulate(draws=options.draws)
    seconds = time.time() - started
    write_json("pilot_design", result)
    print("\n".join(markdown(result, seconds)[: 12 + len(result["summary"])]))
    print(f"written: {write_markdown('pilot_design', markdown(result, seconds))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
