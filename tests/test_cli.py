import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hf_cads.cli import main
from hf_cads.pipeline import parse_recipe

ROOT = Path(__file__).resolve().parents[1]


def write_recipe(tmp_path, **options):
    recipe = yaml.safe_load((ROOT / "recipes" / "quickstart.yaml").read_text())
    recipe.update(options)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_run_recipe_end_to_end_on_a_tiny_model(tmp_path, tiny_model_dir, capsys):
    recipe = write_recipe(
        tmp_path,
        model_name_or_path=str(tiny_model_dir),
        output_dir=str(tmp_path / "out"),
        flop_budget=3e10,
        max_per_source=30,
        eval_examples=8,
        max_seq_length=96,
        logging_steps=2,
    )
    assert main(["run", str(recipe)]) == 0
    printed = capsys.readouterr().out
    assert "target loss before" in printed and "FLOP ledger" in printed
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["selector"] == "bm25" and report["k"] == round(0.1 * report["pool_size"])
    assert 0.95 * 3e10 <= report["ledger"]["total"] <= 3e10
    assert report["ledger"]["eval"] > 0 and report["train_steps"] > 0
    assert set(report["selected_sources"]) <= {"gsm8k", "code_alpaca", "alpaca_seed", "bbh"}


def test_cli_overrides_and_selector_listing(tmp_path, capsys):
    run_config, args = parse_recipe(
        ROOT / "recipes" / "quickstart.yaml", ["--flop_budget", "5e12", "--selector", "embedding"]
    )
    assert args.flop_budget == 5e12 and args.selector == "embedding" and run_config.target == "boolean_expressions"
    assert args.selector_kwargs == {"aggregate": "max"}
    assert main(["selectors"]) == 0
    assert "bm25" in capsys.readouterr().out


def test_quickstart_recipe_parses():
    run_config, args = parse_recipe(ROOT / "recipes" / "quickstart.yaml")
    assert run_config.model_name_or_path == "smollm2-135m-instruct"
    assert args.flop_budget > 0 and args.selector == "bm25"


@pytest.mark.slow
def test_quickstart_runs_offline_with_the_default_models(tmp_path):
    """The real main job: SmolLM2-135M from its PyPI package, BM25 selection, LoRA, budget cap."""
    out = tmp_path / "qs"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hf_cads.cli",
            "run",
            str(ROOT / "recipes" / "quickstart.yaml"),
            "--output_dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    budget = report["ledger"]["budget"]
    assert 0.95 * budget <= report["ledger"]["total"] <= budget
    assert report["target_loss_after"] < report["target_loss_before"]


def test_run_recipe_with_the_sft_trainer_packed(tmp_path, tiny_model_dir):
    recipe = write_recipe(
        tmp_path,
        model_name_or_path=str(tiny_model_dir),
        output_dir=str(tmp_path / "out"),
        flop_budget=3e10,
        max_per_source=30,
        eval_examples=8,
        max_seq_length=96,
        logging_steps=2,
        trainer="sft",
        packing=True,
    )
    assert main(["run", str(recipe)]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["trainer"] == "BudgetedSFTTrainer" and report["train_steps"] > 0
    assert 0.85 * 3e10 <= report["ledger"]["selection"] + report["ledger"]["train"] <= 3e10


@pytest.mark.slow
def test_qlora_recipe_runs_on_cpu(tmp_path):
    pytest.importorskip("bitsandbytes")
    recipe = ROOT / "recipes" / "smollm2-135m" / "qlora-bm25.yaml"
    out = tmp_path / "out"
    assert main(["run", str(recipe), "--output_dir", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    budget = parse_recipe(recipe)[1].flop_budget
    assert report["train_steps"] > 0 and report["train_loss"] == report["train_loss"]  # not NaN
    assert 0.8 * budget <= report["ledger"]["selection"] + report["ledger"]["train"] <= budget
