"""The measured prior (hf_cads.planner.prior), pilot design (planner.pilots) and `hf-cads plan` without records."""

import json
from pathlib import Path

import numpy as np
import pytest

from hf_cads.planner.pilots import PlanCandidate, expected_regret, propose_pilots
from hf_cads.planner.prior import PRIOR_FILE, MeasuredPrior, Observation, build_prior
from hf_cads.planner.prior_plan import plan_from_prior
from hf_cads.records import read_records

RECORDS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "compute_optimal_full_runs.jsonl"
COSTS = {
    "pool_rows": 10_000,
    "train_flops_per_row": 1e12,
    "epochs": 1.0,
    "rows": [
        {"selector": "random", "selection_flops": 0.0},
        {"selector": "bm25", "selection_flops": 1e9},
        {"selector": "embedding", "selection_flops": 2e13},
        {"selector": "perplexity", "selection_flops": 2e15},
        {"selector": "less", "selection_flops": 5e15},
    ],
}


def flat(value, prefix=""):
    """Nested JSON as ``{path: number}`` (strings kept as they are), for comparisons with a tolerance."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flat(item, f"{prefix}/{key}").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in flat(item, f"{prefix}/{i}").items()}
    return {prefix: value}


def test_the_shipped_prior_is_the_one_the_recorded_runs_give():
    shipped = json.loads(PRIOR_FILE.read_text())
    # The records file grows as new selectors and configurations are measured; the shipped prior names its own.
    rebuilt = build_prior(read_records(RECORDS), options=shipped["options"])
    assert rebuilt["options"] == shipped["options"] and len({o.split("[")[0] for o in shipped["options"]}) == 5
    expected, got = flat(shipped["metrics"]), flat(json.loads(json.dumps(rebuilt["metrics"])))
    assert expected.keys() == got.keys()
    numbers = [k for k, v in expected.items() if isinstance(v, (int, float))]
    labels = set(expected) - set(numbers)
    assert {k: expected[k] for k in labels} == {k: got[k] for k in labels}
    assert [got[k] for k in numbers] == pytest.approx([expected[k] for k in numbers], rel=1e-9)
    loss, em = MeasuredPrior.load("target_loss"), MeasuredPrior.load("exact_match")
    assert (
        len(loss.cells) == 6
        and len(em.cells) == 4
        and sum(c["runs"] for c in shipped["metrics"]["target_loss"]["cells"]) == 270
    )
    for cell in loss.cells:  # each cell's best option is its scale: relative gain 1
        assert max(max(gains) for _, gains in cell.curves.values()) == pytest.approx(1.0) or min(
            min(gains) for _, gains in cell.curves.values()
        ) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="no metric 'bleu'"):
        MeasuredPrior.load("bleu")


def test_two_configurations_of_one_selector_in_every_cell_need_options():
    import dataclasses

    from hf_cads.planner.synthetic import synthetic_records

    records = synthetic_records(seeds=(0,), model="a") + synthetic_records(seeds=(0,), model="b")
    relabelled = [dataclasses.replace(r, label="bm25[aggregate=round_robin]") for r in records if r.selector == "bm25"]
    with pytest.raises(ValueError, match=r"several configurations of one selector.*pass options="):
        build_prior(records + relabelled, ["target_loss"])
    kept = build_prior(records + relabelled, ["target_loss"], options=["bm25[aggregate=round_robin]", "random"])
    assert kept["options"] == ["bm25[aggregate=round_robin]", "random"]
    assert set(kept["metrics"]["target_loss"]["cells"][0]["curves"]) == {"bm25", "random"}
    with pytest.raises(ValueError, match=r"none of the prior options \['less'\]"):
        build_prior(records, ["target_loss"], options=["less", "random"])


def test_records_shaped_like_one_cell_give_that_cell_the_weight():
    prior = MeasuredPrior.load("target_loss")
    options = [(s, f) for s in prior.selectors for f in (0.05, 0.1, 0.25)]
    assert prior.cell_weights == pytest.approx(np.full(6, 1 / 6))
    for index, cell in enumerate(prior.cells):
        seen = [Observation(s, f, 0.7 * float(cell.gain(s, f))) for s, f in options]
        posterior = prior.update(seen)
        # Cells with similar shapes (one target, two models) share the weight: the cell itself is among
        # the top two and holds at least twice its prior weight.
        assert index in np.argsort(posterior.cell_weights)[-2:] and posterior.cell_weights[index] > 2 / 6
        assert posterior.cell_weights.sum() == pytest.approx(1.0)
        mean, low, high = posterior.predict("bm25", 0.1)
        assert low <= mean <= high
    # Leave-one-cell-out keeps the other cells and refits the scale prior on them.
    held = prior.cells[0]
    rest = prior.without(held.model, held.target)
    assert len(rest.cells) == 5 and all((c.model, c.target) != (held.model, held.target) for c in rest.cells)


def test_pilots_stay_within_count_and_pilot_budget():
    prior = MeasuredPrior.load("target_loss")
    per_row = 1e12 * 10_000
    candidates = [
        PlanCandidate(s, f, f * per_row + {"less": 5e15, "perplexity": 2e15}.get(s, 0.0))
        for s in prior.selectors
        for f in (0.05, 0.1, 0.25)
    ]
    for count, pilot_budget in ((1, 1e15), (3, 6e15), (4, 2e16)):
        design = propose_pilots(prior, candidates, candidates, 3e15, pilot_budget, count, draws=2)
        assert 1 <= len(design.pilots) <= count and design.pilot_flops <= pilot_budget
        assert design.pilot_flops == pytest.approx(sum(p.flops for p in design.pilots))
        assert len(set(design.pilots)) == len(design.pilots)
    nothing = propose_pilots(prior, candidates, candidates, 3e15, 1e12, 3, draws=2)
    assert nothing.pilots == () and nothing.expected_regret_after == nothing.expected_regret_before
    assert expected_regret(prior, candidates, 3e15) >= 0
    with pytest.raises(ValueError, match="number of pilot runs"):
        propose_pilots(prior, candidates, candidates, 3e15, 1e16, 0)


def test_plan_from_prior_recommends_an_affordable_option_and_says_it_is_a_prior():
    plan = plan_from_prior(COSTS, 3e15)
    assert plan.recommended.flops <= 3e15 and plan.recommended.selector != "less"  # LESS alone costs 5e15
    text = plan.format()
    assert text.startswith("PRIOR:") and "6 measured model x target cells" in text
    with pytest.raises(ValueError, match="affords no option"):
        plan_from_prior(COSTS, 1e11)


def test_plan_command_without_records_uses_the_prior_and_proposes_pilots(tmp_path, capsys):
    from hf_cads.commands import plan

    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps(COSTS))
    assert plan.main(["--costs", str(costs), "--budget", "3e15", "--propose", "2", "--pilot-budget", "5e15"]) == 0
    out = capsys.readouterr().out
    assert "PRIOR:" in out and "Proposed pilots" in out and "Expected regret" in out
    with pytest.raises(ValueError, match="--propose needs --costs"):
        plan.main([str(tmp_path / "runs.jsonl"), "--budget", "1e15", "--propose", "2"])
    with pytest.raises(ValueError, match="Pass RUNS.jsonl"):
        plan.main(["--budget", "1e15"])
