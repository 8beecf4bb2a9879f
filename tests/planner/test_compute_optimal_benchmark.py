"""The compute-optimal benchmark's core (grid -> runs -> records -> fits, frontier, table, PNG) on a tiny model."""

import json
from pathlib import Path

import pytest

from hf_cads.records import read_records
from hf_cads.testing import tiny_causal_lm

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compute_optimal(benchmark_script):
    return benchmark_script("compute_optimal")


def test_every_selector_runs_records_and_the_planner_reads_the_frontier(
    compute_optimal, tmp_path, tiny_model_dir, monkeypatch
):
    monkeypatch.setenv("HF_CADS_CACHE", str(tmp_path / "cache"))
    options = compute_optimal.default_selector_options(48, cheap=True)
    options["embedding"]["max_length"] = 48
    setup = compute_optimal.Setup(
        name="co_test",
        targets=("boolean_expressions",),
        fractions=(0.2, 0.4),
        seeds=(0,),
        max_per_source=10,
        max_seq_length=48,
        eval_examples=6,
        model=str(tiny_model_dir),
        max_pool_chars=500,
        eval_batch_size=6,
        selector_options=options,
        results_dir=tmp_path / "results",
        output_dir=tmp_path / "out",
    )
    summary = compute_optimal.run_benchmark(setup)
    # Entries scoring with the training model are skipped where it is also the selection model (here).
    entries = [name for name in compute_optimal.SELECTORS if name not in compute_optimal.OWN_MODEL_SELECTORS]
    expected_runs = len(entries) * len(setup.fractions)
    assert summary["timing"]["failed"] == {} and summary["timing"]["ran"] == expected_runs
    records = read_records(setup.records_path)
    selectors = {compute_optimal.DESIGN_VARIANTS.get(name, (name,))[0] for name in entries}
    assert {r.selector for r in records} == selectors and len(records) == expected_runs
    pool_size = records[0].pool_size
    for r in records:
        assert r.k == round(r.selection_fraction * pool_size) and r.total_flops == r.selection_flops + r.train_flops
        assert r.train_flops > 0 and (r.selection_flops > 0) == (r.selector != "random")
        assert "target_loss" in r.metrics and "exact_match" in r.metrics and 0 <= r.metrics["exact_match"] <= 1
        assert r.baseline_metrics.keys() == r.metrics.keys()
    # Size-independent scores are computed once; the run that reused them is still charged their cost.
    for label in {r.label for r in records if r.selector in ("perplexity", "less", "bm25", "embedding", "rds")}:
        small, large = sorted((r for r in records if r.label == label), key=lambda r: r.k)
        assert small.selection_flops == pytest.approx(large.selection_flops, rel=1e-9)
    # CADS selects for the training budget of its subset size: twice the rows, about twice the budget.
    budgets = sorted(r.selector_config["train_budget"] for r in records if r.selector == "cads-e")
    assert 1.5 < budgets[1] / budgets[0] < 2.5
    for r in records:
        if r.selector.startswith("cads"):
            assert 0.5 < r.train_flops / r.selector_config["train_budget"] < 2.0

    loss = next(a for a in summary["analyses"] if a["metric"] == "target_loss")
    assert (
        loss["runs"] == expected_runs
        and loss["frontier"]
        and len(loss["regret"]) == 3
        and loss["bootstrap_unit"] == "runs"
    )
    frontier_flops = [p["total_flops"] for p in loss["frontier"]]
    assert frontier_flops == sorted(frontier_flops)
    for row in loss["regret"]:
        best = next(
            (p for p in loss["points"] if p["selector"] == row["best_selector"] and p["k"] == row["best_k"]), None
        )
        assert best is None or best["total_flops"] <= row["budget"]
    assert set(loss["crossover"]) <= {"perplexity", "less", "cads-e", "cads-s"}
    png = setup.results_dir / "co_test.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 20_000
    assert (setup.results_dir / "co_test_boolean_expressions_exact_match.png").is_file()
    text = (setup.results_dir / "co_test.md").read_text()
    assert "Frontier selectors per budget" in text and "Extrapolated crossover" in text and "| cads-s |" in text
    # The at-a-glance row of a selector: its seed-mean loss / exact match at each fraction.
    accuracy = next(a for a in summary["analyses"] if a["metric"] == "exact_match")
    cells = [
        f"{p['value']:.3f} / {q['value']:.2f}"
        for p, q in zip(
            (p for p in loss["points"] if p["selector"] == "random"),
            (q for q in accuracy["points"] if q["selector"] == "random"),
        )
    ]
    glance = text.split("## Seed means at a glance")[1]
    assert f"| boolean_expressions | random | {' | '.join(cells)} | 1 | 0 |" in glance
    saved = json.loads((setup.results_dir / "co_test.json").read_text())
    assert saved["machine"]["cores"] and saved["timing"]["cpu_seconds"] > 0

    # Resuming: a second call finds every run recorded and runs nothing.
    again = compute_optimal.run_benchmark(setup, selectors=["random", "cads-s"])
    assert (again["timing"]["ran"], again["timing"]["skipped"]) == (0, 4)
    assert len(read_records(setup.records_path)) == expected_runs
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


def test_two_training_models_share_one_selection_model_and_the_flat_records_resume(
    compute_optimal, tmp_path, tiny_model_dir, monkeypatch
):
    """The full design in miniature: two training models with different tokenizers; perplexity scores
    with the first model for both (same scores, cost and selection-model size); one flat row per run."""
    from hf_cads.data import build_multisource_pool
    from hf_cads.testing import tiny_causal_lm, tiny_tokenizer

    monkeypatch.setenv("HF_CADS_CACHE", str(tmp_path / "cache"))
    texts = build_multisource_pool(None, max_per_source=10, max_chars=500)["text"]
    other_tokenizer = tiny_tokenizer(texts, vocab_size=400)
    other = tmp_path / "other-model"
    tiny_causal_lm(other_tokenizer, hidden_size=96, intermediate_size=192).save_pretrained(other)
    other_tokenizer.save_pretrained(other)
    options = compute_optimal.default_selector_options(48, cheap=True)
    setup = compute_optimal.Setup(
        name="co_two",
        targets=("boolean_expressions",),
        fractions=(0.2, 0.4),
        seeds=(0,),
        max_per_source=10,
        max_seq_length=48,
        eval_examples=6,
        model=str(tiny_model_dir),
        train_models=(str(tiny_model_dir), str(other)),
        selection_model=str(tiny_model_dir),
        selectors=("random", "perplexity"),
        max_pool_chars=500,
        eval_batch_size=6,
        selector_options=options,
        results_dir=tmp_path / "results",
        output_dir=tmp_path / "out",
    )
    summary = compute_optimal.run_benchmark(setup, resamples=0)
    assert summary["timing"]["failed"] == {} and summary["timing"]["ran"] == 8
    assert summary["progress"] == {**summary["progress"], "planned": 8, "done": 8}
    records = read_records(setup.records_path)
    first, second = (
        sorted((r for r in records if r.selector == "perplexity" and r.model == m), key=lambda r: r.k)
        for m in setup.models
    )
    assert first[0].model_params < second[0].model_params
    for a, b in zip(first, second):
        assert a.selection_model_params == b.selection_model_params == first[0].model_params
        assert a.selection_flops == pytest.approx(b.selection_flops, rel=1e-9) and a.k == b.k
    rows = [json.loads(line) for line in setup.flat_path.read_text().splitlines()]
    assert len(rows) == 8 and all(set(compute_optimal.FLAT_FIELDS) <= set(row) for row in rows)
    assert {row["selection_model"] for row in rows if row["selector"] == "perplexity"} == {str(tiny_model_dir)}
    assert {row["selection_model"] for row in rows if row["selector"] == "random"} == {None}
    assert all(
        row["cpu_seconds"] > 0 and row["total_flops"] == row["selection_flops"] + row["train_flops"] for row in rows
    )
    assert {a["model"] for a in summary["analyses"]} == set(setup.models)
    again = compute_optimal.run_benchmark(setup, train_models=[str(other)], resamples=0)
    assert (again["timing"]["ran"], again["timing"]["skipped"]) == (0, 4)
    assert len(setup.flat_path.read_text().splitlines()) == 8
    # Two processes syncing at once can each append a row: the next sync leaves one row per run.
    lines = setup.flat_path.read_text().splitlines()
    setup.flat_path.write_text("\n".join(lines + lines[:2]) + "\n")
    assert len(compute_optimal.sync_flat_rows(setup)) == 8
    assert [json.loads(line)["key"] for line in setup.flat_path.read_text().splitlines()] == [
        row["key"] for row in rows
    ]


def test_full_grid_runs_seed_by_seed_so_partial_results_cover_every_target(compute_optimal):
    blocks = compute_optimal.grid_blocks(compute_optimal.FULL)
    setup = compute_optimal.FULL
    assert len(blocks) == len(set(blocks)) == len(setup.targets) * len(setup.seeds) * len(setup.models)
    first = blocks[: len(setup.targets) * len(setup.models)]
    assert {seed for _, seed, _ in first} == {0}
    assert {(target, model) for target, _, model in first} == {(t, m) for t in setup.targets for m in setup.models}
    assert [seed for _, seed, _ in blocks] == sorted(seed for _, seed, _ in blocks)
    only_gemma = compute_optimal.grid_blocks(setup, train_models=["gemma3-270m"], seeds=[1])
    assert only_gemma == [(target, 1, "gemma3-270m") for target in setup.targets]
    with pytest.raises(ValueError, match="Unknown training model"):
        compute_optimal.grid_blocks(setup, train_models=["gpt2"])


def test_the_crossover_table_marks_a_ratio_from_an_unsaturated_fit(compute_optimal):
    from hf_cads.planner.analysis import bootstrap_fits, crossover_ratios
    from hf_cads.planner.synthetic import synthetic_records

    still_falling = synthetic_records(
        selection_cost_share=0.0, noise=0.0, seeds=(0,), rates={"random": 2.0, "bm25": 4.0, "perplexity": 0.05}
    )
    straight = crossover_ratios(bootstrap_fits(still_falling, "target_loss", resamples=0)[0])["perplexity"]
    analysis = {
        "model": "m",
        "target": "t",
        "metric": "target_loss",
        "regret": [
            {"budget_multiple": 0.1, "budget": 1e12, "best_selector": "bm25", "best_k": 50, "best_value": 4.0}
            | {"best_interval": None, "best_seeds": 1}
        ],
        "crossover": {"perplexity": straight, "rds": dict(straight, paper_ratio=None)},
    }
    table = "\n".join(compute_optimal.summary_tables({"analyses": [analysis]}))
    assert "(unsaturated fit)" in table and "fit measured" in table
    assert "| bm25 | 50 | 4 (1 seed) |" in table  # one seed: no interval, rather than [4, 4]
    rows = {line.split(" | ")[3]: line for line in table.splitlines() if line.startswith("| m | t |")}
    assert rows["perplexity"].endswith("| 5x |") and rows["rds"].endswith("| - |")  # rds has no paper figure


def test_records_of_a_design_variant_form_their_own_curve(compute_optimal):
    setup = compute_optimal.FULL
    records = compute_optimal.labelled_records(setup)
    assert {"embedding-rr", "rds-own", "rds"} <= {r.label for r in records} <= set(setup.selectors)
    for r in records:
        config = r.selector_config
        if r.selector == "embedding":
            assert config["aggregate"] == ("round_robin" if r.label == "embedding-rr" else "max")
        if r.selector == "rds":
            own = config["model_name_or_path"] == r.model != setup.selection_model
            assert (r.label == "rds-own") == own
    # rds-own scores with the trained model, so for the selection model itself it is plain rds and not run.
    assert "rds-own" not in setup.entries_for(setup.selection_model)
    per_block = len(setup.targets) * len(setup.seeds) * len(setup.fractions)
    assert setup.planned_runs() == per_block * (2 * len(setup.selectors) - 1)
