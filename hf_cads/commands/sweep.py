"""``hf-cads sweep [SWEEP.yaml]``: selectors x fractions x seeds -> run records, plan and plot."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..package_data import find_recipe
from ..sweep_grid import run_sweep


def main(argv: Sequence[str]) -> int:
    """``hf-cads sweep SWEEP.yaml [--budget FLOPS] [--option value ...]``: run the grid, record, plot."""
    parser = argparse.ArgumentParser(prog="hf-cads sweep", description=main.__doc__)
    parser.add_argument("sweep_file", nargs="?", default=None, help="sweep YAML path or shipped name (default: sweep)")
    parser.add_argument("--budget", type=float, default=None, help="also recommend a selector for this FLOP budget")
    options, overrides = parser.parse_known_args(list(argv))
    sweep_file = find_recipe(options.sweep_file or "sweep", "pass a sweep file: hf-cads sweep path/to/sweep.yaml")
    summary = run_sweep(sweep_file, overrides, budget=options.budget)
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return 0
    if summary.report:
        print(summary.report)
    print(
        f"\nrecords: {summary.records_path}  ({summary.ran} ran, {summary.skipped} already recorded, "
        f"{len(summary.failed)} failed)"
    )
    if summary.plot_path:
        print(f"plot: {summary.plot_path}")
    for description, error in summary.failed.items():
        print(f"failed: {description}: {error}")
    return 1 if summary.failed else 0
