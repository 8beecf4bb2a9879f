"""``hf-cads run`` end to end on tiny models: the report, what it keeps in output_dir (adapter or
model, tokenizer, model card, selected subset) reloaded to reproduce the printed loss, the Hub pushes
up to the offline error, and ``--selector X`` on the quickstart for every registered selector."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hf_cads import list_selectors
from hf_cads.cli import main
from hf_cads.package_data import find_recipe
from hf_cads.pipeline import parse_recipe

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = find_recipe("quickstart")


def write_recipe(tmp_path, **options):
    recipe = yaml.safe_load(QUICKSTART.read_text())
    recipe.update(options)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


TINY_RUN = dict(flop_budget=3e10, max_per_source=30, eval_examples=8, max_length=96, logging_steps=2)


def reproduce_target_loss(model, recipe, out):
    """The target loss of ``model`` on the run's test rows, measured as the run measures it."""
    from transformers import AutoTokenizer

    from hf_cads.pipeline import evaluate_target, load_run_data

    run, args = parse_recipe(recipe, ["--output_dir", str(out)])
    tokenizer = AutoTokenizer.from_pretrained(out)  # the saved tokenizer
    metrics, _ = evaluate_target(model, tokenizer, load_run_data(run, args.seed).test, run, args)
    return metrics["target_loss"]


def test_run_keeps_adapter_tokenizer_card_and_subset(tmp_path, tiny_model_dir, capsys):
    """35.3: what `hf-cads run` leaves in output_dir reloads with peft and reproduces the printed loss."""
    from datasets import load_dataset
    from huggingface_hub import DatasetCard, ModelCard
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, model_name_or_path=str(tiny_model_dir), output_dir=str(out), **TINY_RUN)
    assert main(["run", str(recipe)]) == 0
    printed = capsys.readouterr().out
    assert "target loss before" in printed and "FLOP ledger" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["selector"] == "bm25" and report["k"] == round(0.1 * report["pool_size"])
    assert 0.95 * 3e10 <= report["ledger"]["total"] <= 3e10
    assert report["ledger"]["eval"] > 0 and report["train_steps"] > 0
    assert set(report["selected_sources"]) <= {"gsm8k", "code_alpaca", "alpaca_seed", "bbh"}
    assert f"model, tokenizer and model card saved to {out}" in printed
    assert f"selected subset saved to {out / 'selected_subset'}" in printed

    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md"} <= {
        p.name for p in out.iterdir()
    }
    assert not (out / "model.safetensors").exists()  # a LoRA run keeps the adapter, not a copy of the base
    card = ModelCard.load(out / "README.md")
    assert "hf_cads:budget-section:start" in card.text and "hf-cads" in card.data.tags
    assert card.data["hf_cads"]["ledger"]["total"] == pytest.approx(report["ledger"]["total"], rel=1e-6)
    subset = load_dataset(str(out / "selected_subset"), split="train")
    assert len(subset) == report["k"] and "pool_index" in subset.column_names
    subset_card = DatasetCard.load(out / "selected_subset" / "README.md")
    assert subset_card.data["hf_cads"][0]["selector"] == "bm25"

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(base, out)
    printed_loss = float(re.search(r"target loss before: \S+\s+after: (\S+)", printed).group(1))
    reloaded = reproduce_target_loss(model, recipe, out)
    assert reloaded == pytest.approx(report["target_loss_after"], rel=1e-4)
    assert round(reloaded, 4) == pytest.approx(printed_loss, abs=1e-4)
    assert not math.isclose(reloaded, report["target_loss_before"], rel_tol=1e-4)  # the adapter changed it


def test_a_full_finetune_keeps_the_whole_model(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "full"
    recipe = write_recipe(
        tmp_path,
        model_name_or_path=str(tiny_model_dir),
        output_dir=str(out),
        use_peft=False,
        save_subset=False,
        **TINY_RUN,
    )
    assert main(["run", str(recipe)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    assert not (out / "selected_subset").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    assert reproduce_target_loss(model, recipe, out) == pytest.approx(report["target_loss_after"], rel=1e-4)


@pytest.mark.parametrize(
    "options, stage",
    [
        ({"push_to_hub": True, "hub_model_id": "someone/tiny-budgeted"}, "model"),
        ({"push_subset_to": "someone/tiny-subset"}, "subset"),
    ],
)
def test_hub_pushes_are_the_real_hub_calls_up_to_the_offline_error(tmp_path, tiny_model_dir, capsys, options, stage):
    recipe = write_recipe(
        tmp_path, model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path / "out"), **TINY_RUN, **options
    )
    assert main(["run", str(recipe)]) == 2
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hf-cads run: error:")]
    assert len(error) == 1 and "offline" in error[0].lower(), error
    if stage == "subset":
        # The subset push comes after training, from the folder the run wrote.
        assert (tmp_path / "out" / "selected_subset" / "README.md").is_file()


# Options that make the selector fit a tiny model (the defaults are sized for real ones).
TINY_SELECTOR_OPTIONS = {
    "less": {"projection_dim": 256},
    "cads": {"train_budget": 2e10, "outer_steps": 3, "max_length": 96, "show_progress": False},
}


@pytest.mark.parametrize("selector", list_selectors())
def test_select_with_another_selector_on_the_quickstart(selector, tmp_path, tiny_model_dir, capsys):
    """33.5: the quickstart's bm25 options do not travel to the selector named on the command line."""
    flags = ["--selector", selector, "--model_name_or_path", str(tiny_model_dir), "--max_per_source", "10"]
    flags += ["--eval_examples", "4", "--local-dir", str(tmp_path / "sel")]
    if selector in TINY_SELECTOR_OPTIONS:
        flags += ["--selector_kwargs", json.dumps(TINY_SELECTOR_OPTIONS[selector])]
    assert main(["select", *flags]) == 0, capsys.readouterr().err
    assert f"with {selector}" in capsys.readouterr().out
    assert list((tmp_path / "sel").rglob("*.parquet"))


@pytest.mark.slow
@pytest.mark.parametrize("selector", list_selectors())
def test_select_with_another_selector_on_the_real_quickstart(selector, tmp_path, capsys):
    """33.5 with the quickstart's own model (SmolLM2-135M), selection only; the budget is raised so
    that the costly selectors (LESS, CADS) fit it (the quickstart's 1.2e13 is sized for bm25)."""
    flags = ["--selector", selector, "--max_per_source", "8", "--eval_examples", "8", "--flop_budget", "1e15"]
    flags += ["--local-dir", str(tmp_path / "sel")]
    if selector == "cads":
        flags += ["--selector_kwargs", json.dumps({"train_budget": 4e12, "outer_steps": 2, "batch_size": 2})]
    assert main(["select", *flags]) == 0, capsys.readouterr().err
    assert list((tmp_path / "sel").rglob("*.parquet"))


def test_run_with_another_selector_on_the_quickstart(tmp_path, tiny_model_dir):
    recipe = write_recipe(tmp_path, model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path / "o"), **TINY_RUN)
    assert main(["run", str(recipe), "--selector", "perplexity", "--save_subset", "false"]) == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["selector"] == "perplexity" and "aggregate" not in report["selector_config"]


def test_cli_overrides_and_selector_listing(tmp_path, capsys):
    run_config, args = parse_recipe(QUICKSTART, ["--flop_budget", "5e12", "--selector", "embedding"])
    assert args.flop_budget == 5e12 and args.selector == "embedding" and run_config.target == "boolean_expressions"
    assert args.selector_kwargs is None  # the quickstart's options are bm25's
    assert main(["selectors"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert any(line.startswith("bm25 ") for line in listing)
    assert all(line.endswith(".") for line in listing), listing  # whole sentences, not a docstring's first line


def test_quickstart_recipe_parses():
    run_config, args = parse_recipe(QUICKSTART)
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
            "--output_dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,  # the shipped recipe is found from any folder
        env={
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "HF_CADS_DATA_DIR": str(Path(os.environ["HF_CADS_DATA_DIR"]).resolve()),
        },
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
        **TINY_RUN,
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
    recipe = find_recipe("smollm2-135m/qlora-bm25")
    out = tmp_path / "out"
    assert main(["run", str(recipe), "--output_dir", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    budget = parse_recipe(recipe)[1].flop_budget
    assert report["train_steps"] > 0 and report["train_loss"] == report["train_loss"]  # not NaN
    assert 0.8 * budget <= report["ledger"]["selection"] + report["ledger"]["train"] <= budget
    # The saved adapter and its card name the Hub model the built-in alias is a build of.
    hub_id = "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == hub_id
    card = (out / "README.md").read_text()
    assert f"base_model: {hub_id}" in card and "site-packages" not in card
