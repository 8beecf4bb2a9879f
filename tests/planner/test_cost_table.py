"""Costs before running (planner.cost_table, `hf-cads estimate`): configs only, the selectors' own charges."""

import json
import time

import pytest

from hf_cads.flops import FlopProfile, LoraSpec
from hf_cads.planner.cost_table import estimate_costs, largest_affordable_k, load_model_config, meta_model

LLAMA_3_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "hidden_act": "silu",
}


def test_meta_model_estimates_equal_what_each_selector_estimates_with_the_weights(
    tiny_model_dir, tiny_lm, tokenizer, small_pool, bbh_target
):
    """Selection FLOPs from the config alone equal the selector's estimate (= its charge) on the loaded model."""
    from peft import LoraConfig, get_peft_model

    from hf_cads.selectors.within_budget import build_selector

    pool, target = small_pool.select(range(40)), bbh_target[0]
    options = {"less": {"projection_dim": 64, "warmup_epochs": 1, "max_length": 64}, "perplexity": {"max_length": 64}}
    config = load_model_config(str(tiny_model_dir))
    assert next(meta_model(config).parameters()).is_meta
    table = estimate_costs(
        config,
        tokenizer,
        pool,
        target,
        1e12,
        selectors=["random", "bm25", "perplexity", "less"],
        selector_options=options,
        batch_size=1,
        max_seq_length=64,
        lora=LoraSpec(8, ("q_proj", "v_proj")),
    )
    # A run hands its selectors the trained model with its adapters attached.
    trained = get_peft_model(tiny_lm, LoraConfig(r=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    for name in ("bm25", "perplexity", "less"):
        selector = build_selector(
            name,
            {**options.get(name, {}), "show_progress": False},
            seed=0,
            training_model=trained,
            training_tokenizer=tokenizer,
        )
        unique, _ = selector.unique_pool(pool)
        assert table.row(name).selection_flops == pytest.approx(selector.estimate_flops(unique, target), rel=1e-12)
    assert table.row("random").selection_flops == 0 and table.row("random").largest_k == min(
        len(pool), int(1e12 // table.train_flops_per_row)
    )
    # Batch size 1: no padding, so a row's training cost is its own forward + backward.
    from hf_cads.trainer import tokenize_for_causal_lm

    lengths = [len(ids) for ids in tokenize_for_causal_lm(pool, tokenizer, 64)["input_ids"]]
    profile = FlopProfile.from_config(config, lora=LoraSpec(8, ("q_proj", "v_proj")))
    per_epoch = sum(profile.train_step_flops(1, n) for n in lengths)
    assert table.train_flops_per_epoch == pytest.approx(per_epoch, rel=1e-9)
    assert table.pool_tokens == sum(lengths) and table.model_params == FlopProfile.from_config(config).num_params
    for row in table.rows:
        assert row.selection_flops + row.largest_k * table.train_flops_per_row <= table.budget * (1 + 1e-12)
        assert row.largest_k == len(pool) or (
            row.selection_flops + (row.largest_k + 1) * table.train_flops_per_row > table.budget
        )
        assert row.selection_share == pytest.approx(row.selection_flops / 1e12)
    assert table.row("perplexity").size_ratio == pytest.approx(1.0, rel=1e-6)


def test_largest_affordable_k_pays_selection_first():
    assert largest_affordable_k(1e6, 2e5, 1e3, 10_000, 1.0) == 800
    assert largest_affordable_k(1e6, 2e5, 1e3, 500, 1.0) == 500
    assert largest_affordable_k(1e6, 2e5, 1e3, 10_000, 2.0) == 400
    assert largest_affordable_k(1e6, 1e6, 1e3, 10_000, 1.0) == 0


def _write_llama_8b(folder, tokenizer):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA_3_8B))
    tokenizer.save_pretrained(folder)
    return folder


def _write_pool(path, rows):
    words = "the model data budget compute train select row token answer question plus minus".split()
    with open(path, "w") as handle:
        for i in range(rows):
            text = f"Example {i}: " + " ".join(words[(i * 7 + j) % len(words)] for j in range(8 + i % 40))
            handle.write(json.dumps({"text": text}) + "\n")
    return path


def run_estimate(capsys, argv):
    from hf_cads.commands import estimate

    assert estimate.main(argv) == 0
    return capsys.readouterr().out


def test_estimate_command_prices_an_8b_llama_config_without_weights(tmp_path, tokenizer, capsys):
    model = _write_llama_8b(tmp_path / "llama-3-8b", tokenizer)
    pool = _write_pool(tmp_path / "pool.jsonl", 2000)
    out = tmp_path / "costs.json"
    started = time.process_time()
    text = run_estimate(
        capsys,
        [
            "--model", str(model), "--pool", str(pool), "--budget", "1e18",
            "--selectors", "random,bm25,perplexity,less", "--selection-model", str(model),
            "--json", str(out), "--max_pool_chars", "100000",
        ],
    )  # fmt: skip
    assert time.process_time() - started < 60
    table = json.loads(out.read_text())
    assert table["pool_rows"] == 2000 and 7.4e9 < table["model_params"] < 7.6e9
    assert [row["selector"] for row in table["rows"]] == ["random", "bm25", "perplexity", "less"]
    rows = {row["selector"]: row for row in table["rows"]}
    assert (
        rows["random"]["selection_flops"] == 0
        and rows["less"]["selection_flops"] > rows["perplexity"]["selection_flops"]
    )
    assert rows["random"]["largest_k"] == min(2000, int(1e18 // table["train_flops_per_row"]))
    assert "FLOPs per epoch of the pool" in text and "less" in text and "train/sel size" in text


def test_estimate_refuses_a_missing_budget_and_a_missing_config(tmp_path, tokenizer):
    from hf_cads.commands import estimate

    model = _write_llama_8b(tmp_path / "llama-3-8b", tokenizer)
    (tmp_path / "recipe.yaml").write_text(f"model_name_or_path: {model}\ntarget: boolean_expressions\n")
    with pytest.raises(ValueError, match="Pass --budget"):
        estimate.main([str(tmp_path / "recipe.yaml")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(OSError, match="Could not read the config"):
        load_model_config(str(tmp_path / "empty"))


@pytest.mark.slow
def test_estimate_equals_a_real_smollm2_runs_ledger(tmp_path, capsys):
    """SmolLM2-135M: the printed selection and training FLOPs equal what a real run charges (within 0.1%)."""
    from hf_cads.pipeline import parse_recipe, run_budgeted_finetune

    pool = _write_pool(tmp_path / "pool.jsonl", 12)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "model_name_or_path: smollm2-135m-instruct\ntarget: boolean_expressions\n"
        f"pool: {pool}\neval_examples: 2\nlora_r: 8\nlora_alpha: 16\n"
        f"output_dir: {tmp_path / 'run'}\nselector: perplexity\nselection_fraction: 1.0\n"
        "max_length: 64\nper_device_train_batch_size: 1\nper_device_eval_batch_size: 2\n"
        "num_train_epochs: 1\nsave_strategy: 'no'\nreport_to: none\nuse_cpu: true\nseed: 0\n"
        f"run_records: {tmp_path / 'runs.jsonl'}\n"
    )
    out = tmp_path / "costs.json"
    run_estimate(capsys, [str(recipe), "--budget", "1e15", "--selectors", "perplexity", "--json", str(out)])
    table = json.loads(out.read_text())
    run, args = parse_recipe(recipe)
    report = run_budgeted_finetune(run, args)
    assert report["k"] == table["pool_rows"] == 12
    ledger = report["ledger"]
    assert table["rows"][0]["selection_flops"] == pytest.approx(ledger["selection"], rel=1e-3)
    assert table["train_flops_per_epoch"] == pytest.approx(ledger["train"], rel=1e-3)
