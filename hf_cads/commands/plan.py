"""``hf-cads plan RUNS.jsonl --budget 3e15``: which selector and how much data for a FLOP budget.

Without run records (or with too few to fit), ``--costs COSTS.json`` (from ``hf-cads estimate --json``)
plans from the measured prior, updated by the records there are; ``--propose N --pilot-budget B``
proposes the pilot runs that most reduce the expected regret of the recommendation.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from ..planner import make_plan, plot_plan
from ..records import read_records


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


def _fits(options: argparse.Namespace) -> bool:
    """Whether the records alone fit a curve for every selector they hold (else the prior helps)."""
    from ..planner import fit_selectors, select_records

    try:
        records = select_records(
            read_records(options.records), options.metric, model=options.model, target=options.target
        )
        fits, skipped = fit_selectors(records, options.metric, higher_is_better=options.higher)
    except ValueError:
        return False
    return bool(fits) and not skipped


def _plan_from_prior(options: argparse.Namespace) -> int:
    from ..planner.prior_plan import plan_from_prior

    if options.budget is None:
        raise ValueError("Pass --budget FLOPS: the budget of the final finetune.")
    costs = json.loads(Path(options.costs).read_text(encoding="utf-8"))
    records = read_records(options.records) if options.records else []
    plan = plan_from_prior(
        costs,
        options.budget,
        metric=options.metric,
        records=records,
        propose=options.propose,
        pilot_budget=options.pilot_budget,
    )
    print(plan.format())
    return 0


def main(argv: Sequence[str]) -> int:
    """``hf-cads plan RUNS.jsonl --budget 3e15``: fit, recommend, report break-even, write the plot."""
    parser = argparse.ArgumentParser(prog="hf-cads plan", description=main.__doc__)
    parser.add_argument("records", nargs="?", help="run-record file (JSON lines) written by hf-cads run / sweep")
    parser.add_argument("--budget", type=float, help="FLOPs per finetune (selection + training), e.g. 3e15")
    parser.add_argument("--metric", default="target_loss", help="record metric to optimise (default target_loss)")
    direction = parser.add_mutually_exclusive_group()
    direction.add_argument("--higher-is-better", dest="higher", action="store_true", default=None)
    direction.add_argument("--lower-is-better", dest="higher", action="store_false")
    parser.add_argument("--targets", type=int, default=1, help="finetunes sharing one selection (divides its cost)")
    parser.add_argument(
        "--selection-cost",
        action="append",
        default=[],
        metavar="LABEL=FLOPS",
        help="override a selector's selection cost (repeatable)",
    )
    parser.add_argument("--confidence", type=float, default=0.9, help="interval level (default 0.9)")
    parser.add_argument("--no-baseline", action="store_true", help="do not anchor curves at the untrained metric")
    parser.add_argument("--model", help="use only records of this model")
    parser.add_argument("--target", help="use only records of this target")
    parser.add_argument("--plot", help="PNG path (default: <records>_planner.png beside the records)")
    parser.add_argument("--json", help="also write the plan as JSON here (full family labels and selector configs)")
    parser.add_argument("--costs", help="cost table JSON from hf-cads estimate --json: plan from the measured prior")
    parser.add_argument("--propose", type=int, default=0, metavar="N", help="propose N pilot runs (needs --costs)")
    parser.add_argument("--pilot-budget", type=float, metavar="FLOPS", help="what the proposed pilots may cost in all")
    options = parser.parse_args(list(argv))
    if options.records is None and options.costs is None:
        raise ValueError("Pass RUNS.jsonl (your run records) or --costs COSTS.json (from hf-cads estimate --json).")
    if options.propose and options.costs is None:
        raise ValueError("--propose needs --costs COSTS.json (from hf-cads estimate --json) to price the pilots.")
    if options.costs is not None and (options.propose or options.records is None or not _fits(options)):
        return _plan_from_prior(options)
    if options.targets < 1:
        raise ValueError(f"--targets must be >= 1, got {options.targets}.")
    records = read_records(options.records)
    plan = make_plan(
        records,
        metric=options.metric,
        budget=options.budget,
        higher_is_better=options.higher,
        targets=options.targets,
        selection_costs=_parse_selection_costs(options.selection_cost),
        confidence=options.confidence,
        include_baseline=not options.no_baseline,
        model=options.model,
        target=options.target,
    )
    print(plan.format())
    if options.json:
        Path(options.json).write_text(json.dumps(plan.to_dict(), indent=2, default=str), encoding="utf-8")
        print(f"\nplan as JSON: {options.json}")
    plot = (
        Path(options.plot)
        if options.plot
        else Path(options.records).with_name(Path(options.records).stem + "_planner.png")
    )
    print(f"\nplot: {plot_plan(plan, plot)}")
    return 0
