"""Every shipped recipe parses and names only options that exist: the run recipes through parse_recipe
(unknown keys are an error) plus their selector options through the selector's config, the sweep
through load_sweep, and the accelerate configs through accelerate's own loader and launch options.
Recipes are package data found by name from any folder; their model options are TRL's ModelConfig."""

import re
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml

from hf_cads import get_selector, list_selectors
from hf_cads.cli import main
from hf_cads.package_data import find_recipe, shipped_accelerate_configs, shipped_recipes
from hf_cads.pipeline import RunConfig, model_load_options, parse_recipe, recipe_from_dict
from hf_cads.sweep_grid import load_sweep

ROOT = Path(__file__).resolve().parents[2]
RECIPES = shipped_recipes()
ACCELERATE = shipped_accelerate_configs()
RUN_RECIPES = sorted(RECIPES.values())
ACCELERATE_CONFIGS = sorted(ACCELERATE.values())
LAUNCH_LINE = r'--config_file "\$\(hf-cads recipes --path (\w+)\)".* -m hf_cads\.cli (\w+) (\S+)'
DISTRIBUTED_TYPES = {
    "multi_cpu": "MULTI_GPU",
    "single_gpu": "NO",
    "multi_gpu": "MULTI_GPU",
    "fsdp": "FSDP",
    "deepspeed_zero3": "DEEPSPEED",
}


def relative(path):
    return next(name for name, file in {**RECIPES, **ACCELERATE}.items() if file == path)


def test_the_recipe_family_ships_inside_the_package():
    assert {
        "quickstart",
        "sweep",
        "llama-3-8b/qlora-bm25",
        "llama-3-8b/qlora-less",
        "llama-3-8b/qlora-cads-s",
        "smollm2-135m/lora-bm25",
        "smollm2-135m/lora-embedding-gtr-t5",
        "smollm2-135m/qlora-bm25",
        "smollm2-135m/sft-bm25",
    } <= set(RECIPES)
    assert set(ACCELERATE) == set(DISTRIBUTED_TYPES)
    package = ROOT / "hf_cads"
    assert all(package in path.parents for path in [*RUN_RECIPES, *ACCELERATE_CONFIGS])
    assert not (ROOT / "recipes").exists() and not (ROOT / "model_cards").exists()
    assert not (package / "model_cards").exists() and (package / "card_templates" / "budgeted_model.md").is_file()


def test_recipes_are_found_by_name_from_any_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert (
        find_recipe("smollm2-135m/lora-bm25")
        == find_recipe("smollm2-135m/lora-bm25.yaml")
        == RECIPES["smollm2-135m/lora-bm25"]
    )
    own = tmp_path / "mine.yaml"
    own.write_text("target: gsm8k\n")
    assert find_recipe("mine.yaml").resolve() == own  # a path still works
    with pytest.raises(
        FileNotFoundError,
        match=r"does not exist and no shipped recipe has that name; pass a path or one of \[.*'quickstart'",
    ):
        find_recipe("smollm2-135m/lora-bm52")
    assert main(["run", "smollm2-135m/lora-bm52"]) == 2
    assert "hf-cads recipes lists them" in capsys.readouterr().err

    assert main(["recipes"]) == 0
    listed = capsys.readouterr().out.splitlines()
    for name in [*RECIPES, *ACCELERATE]:
        (line,) = [line for line in listed if line.split()[0] == name]
        assert len(line.split()) > 3, line  # a one-line description follows the name
    assert main(["recipes", "--path", "fsdp"]) == 0
    assert capsys.readouterr().out.strip() == str(ACCELERATE["fsdp"])
    assert main(["recipes", "--path", "nope"]) == 2
    assert "No shipped recipe or accelerate config named 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("path", RUN_RECIPES, ids=relative)
def test_recipe_parses_with_existing_options_only(path):
    data = yaml.safe_load(path.read_text())
    assert not {key for key in data if re.search(r"(^|_)token$", key)}, "recipes must never hold a token"
    # GPU recipes ask for bf16; parse them as a bf16-capable GPU would (this machine has none).
    with mock.patch("transformers.training_args.is_torch_bf16_gpu_available", return_value=True):
        if "sweep" in data:
            runs, _, _ = load_sweep(path)
            configs = [(run.args.selector, run.args.selector_kwargs) for run in runs]
            run_config, args = runs[0].run, runs[0].args
        else:
            run_config, args = parse_recipe(path)
            configs = [(args.selector, args.selector_kwargs)]
    for selector, options in configs:
        if selector is not None:
            get_selector(selector, **(options or {}))  # unknown or invalid selector options fail here
    assert args.flop_budget is None or isinstance(args.flop_budget, float)
    if run_config.load_in_4bit and not args.use_cpu:
        assert args.bf16 and run_config.use_peft
        # Stored as bfloat16 the 4-bit weights can be sharded, so the recipe runs under every config.
        assert run_config.bnb_4bit_quant_storage == "bfloat16"
    for config, verb, recipe in re.findall(LAUNCH_LINE, path.read_text()):
        assert config in ACCELERATE and verb in ("run", "sweep") and find_recipe(recipe).is_file(), (config, recipe)


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=relative)
def test_accelerate_config_has_what_accelerate_launch_reads(path):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    data = yaml.safe_load(path.read_text())
    required = {
        "compute_environment",
        "distributed_type",
        "num_processes",
        "num_machines",
        "machine_rank",
        "mixed_precision",
        "main_training_function",
    }
    assert required <= set(data), required - set(data)
    config = load_config_from_file(str(path))  # accelerate refuses unknown top-level keys
    assert config.distributed_type.value == DISTRIBUTED_TYPES[path.stem]
    assert config.num_processes >= 1 and config.num_machines == 1
    launch_options = {action.dest for action in launch_command_parser()._actions}
    nested = [f"fsdp_{k}" if not k.startswith("fsdp") else k for k in config.fsdp_config] + list(
        config.deepspeed_config
    )
    assert set(nested) <= launch_options, set(nested) - launch_options
    if path.stem == "deepspeed_zero3":
        assert config.deepspeed_config["zero_stage"] == 3
    launches = re.findall(LAUNCH_LINE, path.read_text())
    assert launches
    for config_file, _, recipe in launches:
        assert config_file in ACCELERATE and find_recipe(recipe).is_file()


def test_qlora_options_build_a_bitsandbytes_config(monkeypatch):
    import hf_cads.models

    monkeypatch.setattr(hf_cads.models, "bitsandbytes_version", lambda: "0.50.2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    run = RunConfig(load_in_4bit=True, bnb_4bit_quant_storage="bfloat16", dtype="bfloat16", attn_implementation="sdpa")
    monkeypatch.setenv("LOCAL_RANK", "3")
    options = model_load_options(run)
    quantization = options["quantization_config"]
    assert (quantization.load_in_4bit, quantization.bnb_4bit_quant_type, quantization.bnb_4bit_use_double_quant) == (
        True,
        "nf4",
        True,
    )
    assert quantization.bnb_4bit_compute_dtype == quantization.bnb_4bit_quant_storage == torch.bfloat16
    assert (
        options["device_map"] == {"": 3}
        and options["dtype"] is torch.bfloat16
        and options["attn_implementation"] == "sdpa"
    )
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert "device_map" not in model_load_options(run)  # FSDP places the shards itself
    monkeypatch.delenv("ACCELERATE_USE_FSDP")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert model_load_options(run)["device_map"] == {"": "cpu"}  # bitsandbytes' CPU backend runs it
    monkeypatch.setattr(hf_cads.models, "bitsandbytes_version", lambda: None)
    with pytest.raises(
        ImportError, match=r"needs bitsandbytes, which is not installed: pip install 'hf_cads\[qlora\]'"
    ):
        model_load_options(run)
    monkeypatch.setattr(hf_cads.models, "bitsandbytes_version", lambda: "0.43.1")
    with pytest.raises(ImportError, match=r"needs bitsandbytes>=0.48 .*0.43.1 is installed"):
        model_load_options(run)
    assert model_load_options(RunConfig()) == {}


def test_sft_recipe_picks_the_sft_trainer():
    from hf_cads.pipeline import resolve_trainer
    from hf_cads.trainer import sft_config_from

    run, args = parse_recipe(find_recipe("smollm2-135m/sft-bm25"))
    assert (run.trainer, run.packing) == ("sft", True)
    config = sft_config_from(args, packing=run.packing)
    assert (config.max_length, config.packing, config.flop_budget, config.selector) == (
        args.max_length,
        True,
        args.flop_budget,
        "bm25",
    )
    lora_run, _ = parse_recipe(find_recipe("smollm2-135m/lora-bm25"))
    columns = type("Pool", (), {"column_names": ["text", "messages"]})
    chats = type("Pool", (), {"column_names": ["messages"]})
    assert (resolve_trainer(lora_run, columns), resolve_trainer(lora_run, chats)) == ("causal-lm", "sft")
    qlora_run, _ = parse_recipe(find_recipe("smollm2-135m/qlora-bm25"))
    assert qlora_run.load_in_4bit and qlora_run.use_peft and resolve_trainer(qlora_run, chats) == "causal-lm"
    with pytest.raises(ValueError, match="trainer must be one of"):
        RunConfig(trainer="dpo")
    with pytest.raises(ValueError, match="packing is an SFTTrainer option; set trainer: sft"):
        RunConfig(trainer="causal-lm", packing=True)


def test_bad_quantisation_options_are_refused():
    with pytest.raises(ValueError, match="set use_peft: true"):
        RunConfig(load_in_4bit=True, use_peft=False)
    with pytest.raises(ValueError, match="lora_r must be >= 1, got 0; for a full finetune set use_peft: false"):
        RunConfig(lora_r=0)
    with pytest.raises(ValueError, match="bnb_4bit_quant_type must be one of \\['nf4', 'fp4'\\]"):
        RunConfig(load_in_4bit=True, bnb_4bit_quant_type="int8")
    with pytest.raises(ValueError, match="dtype must be one of"):
        RunConfig(dtype="float8")


def test_model_options_are_trl_model_config_read_by_trl():
    from peft import LoraConfig
    from trl import ModelConfig, get_peft_config

    run, _ = parse_recipe(find_recipe("quickstart"), ["--lora_dropout", "0.1", "--use_rslora", "true"])
    assert isinstance(run, ModelConfig)
    lora = get_peft_config(run)
    assert isinstance(lora, LoraConfig) and (lora.r, lora.lora_alpha, lora.lora_dropout, lora.use_rslora) == (
        8,
        16,
        0.1,
        True,
    )
    assert set(lora.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj"} and lora.task_type == "CAUSAL_LM"
    full, _ = parse_recipe(find_recipe("quickstart"), ["--use_peft", "false"])
    assert get_peft_config(full) is None
    one, _ = parse_recipe(find_recipe("quickstart"), ["--lora_target_modules", "q_proj"])
    assert one.lora_target_modules == ["q_proj"]  # a module name, not a regular expression over full names
    # The 0.1 names are gone (one name per setting); the error names the option.
    for old_key in ("bnb_4bit_use_double_quant",):
        with pytest.raises(ValueError, match=rf"unknown option\(s\) \['{old_key}'\]"):
            recipe_from_dict({old_key: True})


@pytest.mark.parametrize("selector", list_selectors())
def test_switching_the_selector_leaves_the_recipes_selector_options_behind(selector, caplog):
    """The quickstart's selector_kwargs are bm25's; --selector X builds X without them."""
    recipe = find_recipe("quickstart")
    with caplog.at_level("INFO", logger="hf_cads.pipeline.recipe"):
        _, args = parse_recipe(recipe, ["--selector", selector])
    if selector == "bm25":
        assert args.selector_kwargs == {"aggregate": "max"} and not caplog.records
    else:
        assert args.selector_kwargs is None
        assert f"--selector {selector} replaces the recipe's selector 'bm25'" in caplog.text
        assert "{'aggregate': 'max'} stay with it" in caplog.text
    get_selector(selector, **(args.selector_kwargs or {}))  # the options fit the selector
    _, chosen = parse_recipe(recipe, [f"--selector={selector}", "--selector_kwargs", '{"batch_size": 4}'])
    assert chosen.selector_kwargs == {"batch_size": 4}  # options given with the selector stay
