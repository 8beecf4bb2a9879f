import json
from pathlib import Path

import pytest
import yaml

from hf_cads import BudgetedTrainer, BudgetedTrainingArguments
from hf_cads.cli import main
from hf_cads.records import read_records
from hf_cads.sweep_grid import load_sweep, run_sweep

ROOT = Path(__file__).resolve().parents[1]


def write_sweep(tmp_path, model_dir, **sweep):
    recipe = yaml.safe_load((ROOT / "hf_cads" / "recipes" / "sweep.yaml").read_text())
    recipe.update(
        model_name_or_path=str(model_dir),
        output_dir=str(tmp_path / "sweep"),
        max_per_source=12,
        max_pool_chars=500,
        eval_examples=6,
        max_length=64,
        per_device_eval_batch_size=6,
        logging_steps=50,
        use_cpu=True,
    )
    recipe["sweep"] = {
        "selectors": [
            "random",
            {"name": "bm25", "kwargs": {"aggregate": "max"}},
            {"name": "perplexity", "kwargs": {"batch_size": 16}},
        ],
        "fractions": [0.15, 0.3, 0.6],
        "seeds": [0],
        "plot": str(tmp_path / "plots" / "sweep.png"),
        **sweep,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_sweep_on_a_tiny_model_records_every_run_plots_and_resumes(tmp_path, tiny_model_dir, capsys):
    sweep_file = write_sweep(tmp_path, tiny_model_dir)
    assert main(["sweep", str(sweep_file), "--budget", "5e10"]) == 0
    out = capsys.readouterr().out
    records_path = tmp_path / "sweep" / "runs.jsonl"
    records = read_records(records_path)
    assert len(records) == 9 and "9 ran, 0 already recorded, 0 failed" in out
    assert {r.label for r in records} == {"random", "bm25[aggregate=max]", "perplexity[batch_size=16]"}
    pool_size = records[0].pool_size
    for record in records:
        assert record.k == round(record.selection_fraction * pool_size) and record.pool_size == pool_size
        assert record.total_flops == record.selection_flops + record.train_flops > 0
        assert record.tokens_trained > record.k  # every selected row trained once (1 epoch), several tokens each
        assert record.metrics["target_loss"] > 0 and record.baseline_metrics["target_loss"] > 0
        assert (
            record.model == str(tiny_model_dir)
            and record.target == "boolean_expressions"
            and record.flop_budget is None
        )
        assert record.model_params > 0 and record.train_steps == -(-record.k // 4)
        uses_model = record.selector == "perplexity"
        assert (record.selection_model_params > 0) == uses_model and (record.selection_flops > 0) == (
            record.selector != "random"
        )
    # The training cost per row is what the planner assumes: the same within a selector's runs.
    per_row = [r.train_flops / r.tokens_trained for r in records]
    assert max(per_row) / min(per_row) < 1.5
    assert "recommendation:" in out and "Pareto frontier" in out and "break-even" in out
    plot = tmp_path / "plots" / "sweep.png"
    assert plot.read_bytes()[:4] == b"\x89PNG" and plot.stat().st_size > 20_000
    report = json.loads((tmp_path / "sweep" / "bm25-aggregate-max-f0.3-seed0" / "report.json").read_text())
    assert report["selector"] == "bm25"

    # A second sweep skips everything recorded (no run starts, so no output folder is touched) and runs only
    # the new seed.
    stamps = {path: path.stat().st_mtime_ns for path in (tmp_path / "sweep").rglob("report.json")}
    summary = run_sweep(sweep_file)
    assert (summary.ran, summary.skipped, summary.failed) == (0, 9, {})
    assert {path: path.stat().st_mtime_ns for path in (tmp_path / "sweep").rglob("report.json")} == stamps
    assert len(read_records(records_path)) == 9
    runs, _, _ = load_sweep(write_sweep(tmp_path, tiny_model_dir, seeds=[0, 1], selectors=["random"]))
    assert len(runs) == 6
    summary = run_sweep(tmp_path / "sweep.yaml")
    assert (summary.ran, summary.skipped) == (3, 3) and len(read_records(records_path)) == 12


def test_bad_sweep_files_are_clear_errors(tmp_path, tiny_model_dir, capsys):
    path = write_sweep(tmp_path, tiny_model_dir, fractions=[0.1], ks=[5])
    assert main(["sweep", str(path)]) == 2
    assert "one of them" in capsys.readouterr().err
    path = write_sweep(tmp_path, tiny_model_dir, selectors=["nope"])
    with pytest.raises(ValueError, match="Unknown selector 'nope'"):
        load_sweep(path)
    path.write_text(yaml.safe_dump({"flop_budget": 1e12}))
    with pytest.raises(ValueError, match="'sweep:' section"):
        load_sweep(path)


def test_budgeted_trainer_appends_its_own_run_record(tmp_path, small_pool, bbh_target, tokenizer, tiny_lm):
    records_path = tmp_path / "runs.jsonl"
    args = BudgetedTrainingArguments(
        output_dir=str(tmp_path / "out"),
        flop_budget=2e10,
        selector="bm25",
        selection_fraction=0.2,
        per_device_train_batch_size=4,
        max_length=64,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        seed=3,
    )
    trainer = BudgetedTrainer(
        model=tiny_lm,
        args=args,
        train_dataset=small_pool,
        processing_class=tokenizer,
        selection_target=bbh_target[0],
        run_records=records_path,
    )
    trainer.train()
    (record,) = read_records(records_path)
    assert record.selector == "bm25" and record.seed == 3 and record.flop_budget == 2e10
    assert record.k == len(trainer.selection_result) and record.pool_size == len(small_pool)
    assert record.total_flops == pytest.approx(trainer.flop_ledger.spent) and record.total_flops <= 2e10
    assert record.train_steps == trainer.state.global_step > 0 and record.tokens_trained > 0
    assert record.metrics["train_loss"] > 0 and record.selection_model_params == 0
