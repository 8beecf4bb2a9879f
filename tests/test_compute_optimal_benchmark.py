"""The compute-optimal benchmark's core (grid -> runs -> records -> fits, frontier, table, PNG) on a tiny model."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from hf_cads.records import read_records
from hf_cads.testing import tiny_causal_lm

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compute_optimal():
    spec = importlib.util.spec_from_file_location("compute_optimal", ROOT / "benchmarks" / "compute_optimal.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_every_selector_runs_records_and_the_planner_reads_the_frontier(compute_optimal, tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_CADS_CACHE", str(tmp_path / "cache"))
    options = compute_optimal.default_selector_options(48, cheap=True)
    options["embedding"]["max_length"] = 48
    setup = compute_optimal.Setup(
        name="co_test", targets=("boolean_expressions",), fractions=(0.2, 0.4), seeds=(0,), max_per_source=10,
        max_seq_length=48, eval_examples=6, model=str(tiny_model_dir), max_pool_chars=500, eval_batch_size=6,
        selector_options=options, results_dir=tmp_path / "results", output_dir=tmp_path / "out",
    )
    summary = compute_optimal.run_benchmark(setup)
    assert summary["timing"]["failed"] == {} and summary["timing"]["ran"] == 14
    records = read_records(setup.records_path)
    assert sorted({r.selector for r in records}) == sorted(compute_optimal.SELECTORS) and len(records) == 14
    pool_size = records[0].pool_size
    for r in records:
        assert r.k == round(r.selection_fraction * pool_size) and r.total_flops == r.selection_flops + r.train_flops
        assert r.train_flops > 0 and (r.selection_flops > 0) == (r.selector != "random")
        assert "target_loss" in r.metrics and "exact_match" in r.metrics and 0 <= r.metrics["exact_match"] <= 1
        assert r.baseline_metrics.keys() == r.metrics.keys()
    # Size-independent scores are computed once; the run that reused them is still charged their cost.
    for name in ("perplexity", "less", "bm25", "embedding"):
        small, large = sorted((r for r in records if r.selector == name), key=lambda r: r.k)
        assert small.selection_flops == pytest.approx(large.selection_flops, rel=1e-9)
    # CADS selects for the training budget of its subset size: twice the rows, about twice the budget.
    budgets = sorted(r.selector_config["train_budget"] for r in records if r.selector == "cads-e")
    assert 1.5 < budgets[1] / budgets[0] < 2.5
    for r in records:
        if r.selector.startswith("cads"):
            assert 0.5 < r.train_flops / r.selector_config["train_budget"] < 2.0

    loss = next(a for a in summary["analyses"] if a["metric"] == "target_loss")
    assert loss["runs"] == 14 and loss["frontier"] and len(loss["compute_optimal"]) == 8
    frontier_flops = [p["total_flops"] for p in loss["frontier"]]
    assert frontier_flops == sorted(frontier_flops)
    for row in loss["compute_optimal"]:
        assert row["frontier_flops"] is None or row["frontier_flops"] <= row["budget"]
    png = setup.results_dir / "co_test.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 20_000
    assert (setup.results_dir / "co_test_boolean_expressions_exact_match.png").is_file()
    text = (setup.results_dir / "co_test.md").read_text()
    assert "compute-optimal at which budget" in text and "| cads-s |" in text
    saved = json.loads((setup.results_dir / "co_test.json").read_text())
    assert saved["machine"]["cores"] and saved["timing"]["cpu_seconds"] > 0

    # Resuming: a second call finds every run recorded and runs nothing.
    again = compute_optimal.run_benchmark(setup, selectors=["random", "cads-s"])
    assert (again["timing"]["ran"], again["timing"]["skipped"]) == (0, 4)
    assert len(read_records(setup.records_path)) == 14
    with pytest.raises(ValueError, match="Unknown selector"):
        compute_optimal.run_benchmark(setup, selectors=["nope"])


def test_exact_match_counts_its_flops_and_agrees_with_itself_across_batchings(bbh_target, tokenizer):
    """Greedy exact match on real BBH rows: FLOPs equal FlopCounterMode's count of the generation,
    and another batch size (other left padding) gives the same greedy answers."""
    from torch.utils.flop_counter import FlopCounterMode

    from hf_cads.evaluation import answers_fit, exact_match, normalise_answer

    model = tiny_causal_lm(tokenizer)
    test = bbh_target[1].select(range(10))
    assert answers_fit(tokenizer, test["target"], 8)
    with FlopCounterMode(display=False) as counter:
        first = exact_match(model, tokenizer, test, max_new_tokens=8, batch_size=4)
    assert first.flops == pytest.approx(counter.get_total_flops(), rel=1e-9)
    assert first.total == 10 and first.correct == round(first.accuracy * 10)
    second = exact_match(model, tokenizer, test, max_new_tokens=8, batch_size=3)
    assert second.predictions == first.predictions and second.correct == first.correct
    assert len(set(first.predictions)) > 1  # the rows' answers differ: the prompts reached the model
    assert normalise_answer(" False.\nQ: next") == "False" and normalise_answer("(B) \n") == "(B)"


def test_exact_match_refuses_long_answers_and_the_pipeline_skips_them(data_dir, tokenizer):
    from hf_cads.data import load_gsm8k
    from hf_cads.evaluation import answers_fit, exact_match
    from hf_cads.pipeline import RunConfig, exact_match_applies

    gsm8k = load_gsm8k("test", data_dir).select(range(4))
    assert not answers_fit(tokenizer, gsm8k["answer"], 8)
    assert not exact_match_applies(RunConfig(target="gsm8k"), tokenizer, gsm8k)
    with pytest.raises(ValueError, match="raise max_new_tokens or judge this target by its loss"):
        exact_match(tiny_causal_lm(tokenizer), tokenizer, gsm8k, max_new_tokens=8)
    with pytest.raises(ValueError, match="exact_match_max_new_tokens must be >= 0"):
        RunConfig(exact_match_max_new_tokens=-1)
