"""Every recipe parses and names only options that exist: the run recipes through parse_recipe
(unknown keys are an error) plus their selector options through the selector's config, the sweep
through load_sweep, and the accelerate configs through accelerate's own loader and launch options."""

import re
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml

from hf_cads import get_selector
from hf_cads.pipeline import RunConfig, model_load_options, parse_recipe
from hf_cads.sweep_grid import load_sweep

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
ACCELERATE = RECIPES / "accelerate"
RUN_RECIPES = sorted(p for p in RECIPES.rglob("*.yaml") if ACCELERATE not in p.parents)
ACCELERATE_CONFIGS = sorted(ACCELERATE.glob("*.yaml"))
DISTRIBUTED_TYPES = {
    "multi_cpu": "MULTI_GPU",
    "single_gpu": "NO",
    "multi_gpu": "MULTI_GPU",
    "fsdp": "FSDP",
    "deepspeed_zero3": "DEEPSPEED",
}


def relative(path):
    return path.relative_to(RECIPES).as_posix()


def test_the_recipe_family_is_there():
    names = {relative(p) for p in RUN_RECIPES}
    assert {
        "llama-3-8b/qlora-bm25.yaml",
        "llama-3-8b/qlora-less.yaml",
        "llama-3-8b/qlora-cads-s.yaml",
        "smollm2-135m/lora-bm25.yaml",
        "smollm2-135m/lora-embedding-gtr-t5.yaml",
    } <= names
    assert {p.stem for p in ACCELERATE_CONFIGS} == set(DISTRIBUTED_TYPES)


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
        assert args.bf16 and run_config.lora_r > 0
        # Stored as bfloat16 the 4-bit weights can be sharded, so the recipe runs under every config.
        assert run_config.bnb_4bit_quant_storage == "bfloat16"
    for config, recipe in re.findall(r"--config_file (\S+) -m hf_cads\.cli \w+ (\S+)", path.read_text()):
        assert (RECIPES.parent / config).is_file() and (RECIPES.parent / recipe).is_file(), (config, recipe)


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
    for config_file, recipe in re.findall(r"--config_file (\S+).* -m hf_cads\.cli \w+ (\S+)", path.read_text()):
        assert (RECIPES.parent / config_file).is_file() and (RECIPES.parent / recipe).is_file()


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

    run, args = parse_recipe(RECIPES / "smollm2-135m" / "sft-bm25.yaml")
    assert (run.trainer, run.packing) == ("sft", True)
    config = sft_config_from(args, packing=run.packing)
    assert (config.max_length, config.packing, config.flop_budget, config.selector) == (
        args.max_seq_length,
        True,
        args.flop_budget,
        "bm25",
    )
    lora_run, _ = parse_recipe(RECIPES / "smollm2-135m" / "lora-bm25.yaml")
    columns = type("Pool", (), {"column_names": ["text", "messages"]})
    chats = type("Pool", (), {"column_names": ["messages"]})
    assert (resolve_trainer(lora_run, columns), resolve_trainer(lora_run, chats)) == ("causal-lm", "sft")
    qlora_run, _ = parse_recipe(RECIPES / "smollm2-135m" / "qlora-bm25.yaml")
    assert qlora_run.load_in_4bit and qlora_run.lora_r > 0 and resolve_trainer(qlora_run, chats) == "causal-lm"
    with pytest.raises(ValueError, match="trainer must be one of"):
        RunConfig(trainer="dpo")
    with pytest.raises(ValueError, match="packing is an SFTTrainer option; set trainer: sft"):
        RunConfig(trainer="causal-lm", packing=True)


def test_bad_quantisation_options_are_refused():
    with pytest.raises(ValueError, match="set lora_r > 0"):
        RunConfig(load_in_4bit=True, lora_r=0)
    with pytest.raises(ValueError, match="bnb_4bit_quant_type must be one of \\['nf4', 'fp4'\\]"):
        RunConfig(load_in_4bit=True, bnb_4bit_quant_type="int8")
    with pytest.raises(ValueError, match="dtype must be one of"):
        RunConfig(dtype="float8")
