"""The compute-optimal analysis (hf_cads.planner.analysis) on runs that follow known curves."""

import numpy as np
import pytest

from hf_cads.planner import BENT_SHARE, PerformanceFit, analysis
from hf_cads.planner.synthetic import synthetic_records


def test_analysis_bootstrap_frontier_regret_and_crossover_on_synthetic_records():
    records = synthetic_records()
    points = analysis.seed_means(records, "target_loss")
    assert len(points) == 9 and all(p["seeds"] == 3 and p["low"] <= p["value"] <= p["high"] for p in points)
    base = analysis.untrained_point(records, "target_loss")
    assert base["value"] == 3.0 and base["total_flops"] == 0.0
    frontier = analysis.mean_frontier([base] + points, higher_is_better=False)
    assert frontier[0] is base
    flops = [p["total_flops"] for p in frontier]
    values = [p["value"] for p in frontier]
    assert flops == sorted(flops) and values == sorted(values, reverse=True) and len(set(values)) == len(values)

    fits, skipped, samples, unit = analysis.bootstrap_fits(records, "target_loss", resamples=20)
    assert skipped == {} and unit == "seeds" and len(samples) == 20
    intervals = analysis.fit_intervals(fits, samples)
    for entry in intervals.values():
        low, high = entry["p_max_95"]
        assert low <= entry["p_max"] <= high and entry["bootstrap_fits"] >= 15
    # One seed: the bootstrap falls back to resampling runs, and says so.
    assert analysis.bootstrap_fits(synthetic_records(seeds=(0,)), "target_loss", resamples=12)[3] == "runs"

    c_full = next(iter(fits.values())).c_full
    rows = analysis.regret_table(fits, points, False, c_full)
    assert [row["budget_multiple"] for row in rows] == list(analysis.BUDGET_MULTIPLES)
    for row in rows:
        assert row["best_value"] is None or all(
            p["value"] >= row["best_value"] for p in points if p["total_flops"] <= row["budget"]
        )
        if row.get("regret") is not None:
            assert row["regret"] >= 0
            if row["planner_selector"] == row["best_selector"]:
                assert row["regret"] == 0
        if row.get("planner_selector"):
            measured = max(r.k for r in records if r.label == row["planner_selector"])
            assert row["planner_extrapolation"] == pytest.approx(row["planner_k"] / measured)

    # A one-seed frontier point has no interval (not a zero-width one).
    one_seed = analysis.seed_means(synthetic_records(seeds=(0,)), "target_loss")
    assert all(
        row["best_interval"] is None and row["best_seeds"] == 1
        for row in analysis.regret_table(fits, one_seed, False, c_full)
        if row["best_value"] is not None
    )
    assert all(row["best_interval"] and row["best_seeds"] == 3 for row in rows if row["best_value"] is not None)

    # Crossover: the dearer the selection, the larger the train / selection size ratio needed; flags are
    # monotone in the ratio; a free selection with the fastest curve is on the frontier from 1x.
    ratios = {}
    for share in (0.0, 0.1, 0.6):
        fits_at = analysis.bootstrap_fits(
            synthetic_records(selection_cost_share=share, noise=0.0, seeds=(0,)), "target_loss", resamples=0
        )[0]
        crossover = analysis.crossover_ratios(fits_at)
        assert set(crossover) == {"perplexity"}
        entry = crossover["perplexity"]
        flags = [entry["joins"][f"{r:g}"] for r in analysis.CROSSOVER_RATIOS]
        assert flags == sorted(flags) and entry["measured_ratio"] == 1.0 and entry["paper_ratio"] == 5.0
        ratios[share] = entry["ratio"]
    assert ratios[0.0] <= 1.0 and ratios[0.0] <= ratios[0.1] <= ratios[0.6] and ratios[0.6] > 1.0

    # A crossover is a finding only where the selector's runs measured its curve's bend: a free selection
    # on a fast curve is saturated in its data; a curve that has barely moved by its largest run is not.
    bent = analysis.crossover_ratios(
        analysis.bootstrap_fits(
            synthetic_records(selection_cost_share=0.0, noise=0.0, seeds=(0,)), "target_loss", resamples=0
        )[0]
    )["perplexity"]
    assert bent["saturated"] and bent["unbent"] is None and bent["gain_measured"] >= BENT_SHARE
    assert bent["asymptote"] == pytest.approx(2.0, abs=0.05)  # the true curve's floor
    straight = analysis.crossover_ratios(
        analysis.bootstrap_fits(
            synthetic_records(
                selection_cost_share=0.0, noise=0.0, seeds=(0,), rates={"random": 2.0, "bm25": 4.0, "perplexity": 0.05}
            ),
            "target_loss",
            resamples=0,
        )[0]
    )["perplexity"]
    assert (
        not straight["saturated"] and straight["gain_measured"] < BENT_SHARE and "reached only" in straight["unbent"]
    )
    # Exact match is a fraction: fitted against its ceiling, a curve still rising is pinned at 1.

    line = PerformanceFit(
        "perplexity",
        0.0,
        1.0,
        5.0,
        np.zeros((3, 3)),
        1e12,
        higher_is_better=True,
        cost_per_example=1e9,
        max_k=500,
        ceiling=1.0,
    )
    assert analysis.fit_saturation(line)["gain_measured"] > 0.9
    assert not analysis.fit_saturation(line)["saturated"] and "ceiling" in analysis.fit_saturation(line)["unbent"]
    assert analysis.fit_saturation(PerformanceFit(**{**line.__dict__, "p_max": 0.6}))["saturated"]
