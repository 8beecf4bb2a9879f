"""The rds selector (RDS+): position-weighted mean-pooled hidden states, cosine to each target row.

Checked here: the representation is the paper's (SGPT weights over the real tokens of the chosen
hidden state, unit norm, independent of padding and batching); the FLOPs charged are the decoder's
forward passes without the LM head plus the projection and similarity products, equal to
``FlopCounterMode`` on a tiny Llama and a tiny Gemma 3; the optional random projection is seeded;
the trained model is reused by the selection path; bad options get one clear error.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from datasets import Dataset
from torch.utils.flop_counter import FlopCounterMode

from hf_cads.flops import FlopProfile
from hf_cads.selectors import build_selector, get_selector
from hf_cads.selectors.options import affects_result
from hf_cads.selectors.rds import RDSSelectorConfig, decoder_of, position_weighted_mean
from hf_cads.selectors.round_robin import round_robin_indices
from hf_cads.testing import tiny_causal_lm, tiny_tokenizer

POOL_TEXTS = [
    "Q: what is 2 + 3? A: 5",
    "def add(a, b): return a + b",
    "The capital of France is Paris.",
    "Q: what is 7 * 6? A: 42 because seven sixes are forty two",
    "write a short poem about the sea and the wind",
    "not ( True and False ) is True",
    "sort the list 3 1 2 into 1 2 3",
    "Q: 10 - 4? A: 6",
    "translate hello into French: bonjour",
    "True or False and not True is True",
    "a",
]
TARGET_TEXTS = ["Q: what is 4 + 4? A: 8", "not True or False is False", "def mul(a, b): return a * b"]


@pytest.fixture(scope="module")
def texts_tokenizer():
    return tiny_tokenizer(POOL_TEXTS + TARGET_TEXTS, vocab_size=200)


@pytest.fixture(scope="module")
def pool():
    return Dataset.from_dict({"text": POOL_TEXTS})


@pytest.fixture(scope="module")
def target():
    return Dataset.from_dict({"text": TARGET_TEXTS})


def tiny_gemma3(vocab_size: int):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=512,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    return Gemma3ForCausalLM(config)


def rds(model, tokenizer, **options):
    return get_selector("rds", model=model, tokenizer=tokenizer, show_progress=False, **options)


@pytest.mark.parametrize("architecture", ["llama", "gemma3"])
@pytest.mark.parametrize("projection_dim", [None, 16])
def test_flops_charged_equal_the_flop_counter(architecture, projection_dim, texts_tokenizer, pool, target):
    model = tiny_causal_lm(texts_tokenizer) if architecture == "llama" else tiny_gemma3(len(texts_tokenizer))
    selector = rds(model, texts_tokenizer, batch_size=4, shard_size=4, projection_dim=projection_dim)
    estimate = selector.estimate_flops(pool, target)
    with FlopCounterMode(display=False) as counter:
        result = selector.select(pool, target=target, k=4)
    measured = counter.get_total_flops()
    assert result.flops == pytest.approx(measured, rel=0.01)
    assert result.flops == pytest.approx(estimate, rel=1e-9)
    # The LM head neither runs nor is charged.
    assert any(layer.name.endswith("lm_head") for layer in FlopProfile.from_model(model).linears)
    assert not any(layer.name.endswith("lm_head") for layer in selector._profile().linears)


def test_representation_is_the_position_weighted_mean_of_the_last_hidden_state(texts_tokenizer):
    model = tiny_causal_lm(texts_tokenizer)
    selector = rds(model, texts_tokenizer, batch_size=4)
    token_ids = [texts_tokenizer(text)["input_ids"] for text in POOL_TEXTS]
    features, _ = selector.represent(token_ids)
    assert torch.allclose(features.norm(dim=1), torch.ones(len(POOL_TEXTS)), atol=1e-5)
    for row, ids in enumerate(token_ids):
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
        weights = torch.arange(1, len(ids) + 1, dtype=torch.float32)
        expected = (hidden * (weights / weights.sum())[:, None]).sum(dim=0)
        # Padded, length-sorted batches of 4 give each row what it gets alone.
        assert torch.allclose(features[row], expected / expected.norm(), atol=1e-4), row


def test_position_weights_skip_padding_and_grow_with_the_position():
    hidden = torch.arange(12, dtype=torch.float32).reshape(1, 4, 3)
    mask = torch.tensor([[1, 1, 1, 0]])
    expected = (1 * hidden[0, 0] + 2 * hidden[0, 1] + 3 * hidden[0, 2]) / 6
    assert torch.allclose(position_weighted_mean(hidden, mask)[0], expected)
    # Padding content does not matter.
    changed = hidden.clone()
    changed[0, 3] = 1e6
    assert torch.equal(position_weighted_mean(changed, mask), position_weighted_mean(hidden, mask))


def test_layer_option_pools_the_named_hidden_states(texts_tokenizer):
    model = tiny_causal_lm(texts_tokenizer)
    ids = [texts_tokenizer(POOL_TEXTS[0])["input_ids"]]
    with torch.no_grad():
        states = model(input_ids=torch.tensor(ids), output_hidden_states=True).hidden_states
    mask = torch.ones(1, len(ids[0]), dtype=torch.long)

    def unit(vector):
        return vector / vector.norm()

    embeddings, _ = rds(model, texts_tokenizer, layer=0).represent(ids)
    assert torch.allclose(embeddings[0], unit(position_weighted_mean(states[0], mask)[0]), atol=1e-5)
    last_two, _ = rds(model, texts_tokenizer, layer=[1, -1]).represent(ids)
    both = torch.cat([position_weighted_mean(states[1], mask), position_weighted_mean(states[2], mask)], dim=-1)
    assert last_two.shape == (1, 2 * model.config.hidden_size)
    assert torch.allclose(last_two[0], unit(both[0]), atol=1e-5)
    assert torch.equal(
        rds(model, texts_tokenizer, layer=2).represent(ids)[0], rds(model, texts_tokenizer).represent(ids)[0]
    )


def test_random_projection_is_seeded_and_keeps_the_similarities_roughly(texts_tokenizer, pool, target):
    model = tiny_causal_lm(texts_tokenizer)
    plain = rds(model, texts_tokenizer, aggregate="max").select(pool, target=target, k=3)

    def projected(seed):
        return rds(model, texts_tokenizer, aggregate="max", projection_dim=48, seed=seed).select(
            pool, target=target, k=3
        )

    first, again, other = projected(0), projected(0), projected(1)
    np.testing.assert_array_equal(first.all_scores, again.all_scores)
    assert not np.array_equal(first.all_scores, other.all_scores)
    # Johnson-Lindenstrauss: 48 of 64 dimensions keep the cosines close (and ranked alike).
    assert np.abs(first.all_scores - plain.all_scores).max() < 0.35
    assert np.corrcoef(first.all_scores, plain.all_scores)[0, 1] > 0.8


def test_round_robin_is_the_default_and_chooses_by_the_per_target_cosines(texts_tokenizer, pool, target):
    selector = rds(tiny_causal_lm(texts_tokenizer), texts_tokenizer, seed=5)
    assert selector.config.aggregate == "round_robin"
    result = selector.select(pool, target=target, k=5)
    cosines = result.extras["target_scores"]
    assert cosines.shape == (len(pool), len(target))
    np.testing.assert_array_equal(result.indices, round_robin_indices(cosines, 5, seed=5))
    np.testing.assert_allclose(result.all_scores, cosines.max(axis=1))
    mean = rds(tiny_causal_lm(texts_tokenizer), texts_tokenizer, aggregate="mean").select(pool, target=target, k=5)
    np.testing.assert_allclose(mean.all_scores, cosines.mean(axis=1), atol=1e-6)


def test_scores_are_cached_resumed_and_duplicates_dropped(tmp_path, texts_tokenizer, target):
    pool = Dataset.from_dict({"text": POOL_TEXTS + POOL_TEXTS[:3]})
    model = tiny_causal_lm(texts_tokenizer)
    first = rds(model, texts_tokenizer, cache_dir=str(tmp_path), shard_size=3).select(pool, target=target, k=6)
    assert first.extras["deduplication"]["dropped"] == 3
    assert set(first.indices.tolist()) <= set(range(len(POOL_TEXTS)))
    again = rds(model, texts_tokenizer, cache_dir=str(tmp_path), shard_size=3).select(pool, target=target, k=6)
    assert again.flops == 0.0 and again.extras["cache"]["hit"]
    np.testing.assert_array_equal(again.indices, first.indices)
    # A killed run: drop the completion mark and one shard; the rerun scores only that shard.
    (folder,) = tmp_path.iterdir()
    (folder / "shard-00001.npz").unlink()
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "complete": False}))
    resumed = rds(model, texts_tokenizer, cache_dir=str(tmp_path), shard_size=3).select(pool, target=target, k=6)
    assert resumed.extras["cache"]["resumed_shards"] == 3
    np.testing.assert_array_equal(resumed.indices, first.indices)
    assert resumed.flops == pytest.approx(first.flops, rel=1e-9)


def test_the_selection_path_scores_with_the_trained_model_unless_another_is_named(texts_tokenizer):
    trained = tiny_causal_lm(texts_tokenizer)
    reused = build_selector("rds", {}, seed=0, training_model=trained, training_tokenizer=texts_tokenizer)
    assert reused.model is trained and reused.tokenizer is texts_tokenizer
    named = build_selector(
        "rds", {"model_name_or_path": "other"}, seed=0, training_model=trained, training_tokenizer=texts_tokenizer
    )
    assert named.model is None and named.config.model_name_or_path == "other"


def test_a_peft_wrapped_model_is_read_through_its_adapters(texts_tokenizer, pool, target):
    from peft import LoraConfig, get_peft_model

    wrapped = get_peft_model(tiny_causal_lm(texts_tokenizer), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert type(decoder_of(wrapped)).__name__ == "LlamaModel"
    selector = rds(wrapped, texts_tokenizer)
    with FlopCounterMode(display=False) as counter:
        result = selector.select(pool, target=target, k=3)
    assert result.flops == pytest.approx(counter.get_total_flops(), rel=0.01)


def test_options_are_checked_with_one_clear_error(texts_tokenizer, pool, target):
    with pytest.raises(ValueError, match="projection_dim must be a positive integer"):
        RDSSelectorConfig(projection_dim=0)
    with pytest.raises(ValueError, match="aggregate must be"):
        RDSSelectorConfig(aggregate="centroid")
    with pytest.raises(ValueError, match="layer must be a hidden-state index"):
        RDSSelectorConfig(layer="last")
    with pytest.raises(ValueError, match="names one hidden state twice|lists a hidden state twice"):
        RDSSelectorConfig(layer=[1, 1])
    model = tiny_causal_lm(texts_tokenizer)
    with pytest.raises(ValueError, match="layer \\[5\\] is out of range.*0 \\(embeddings\\) to 2"):
        rds(model, texts_tokenizer, layer=5).select(pool, target=target, k=2)
    with pytest.raises(ValueError, match="names one hidden state twice"):
        rds(model, texts_tokenizer, layer=[2, -1]).select(pool, target=target, k=2)
    with pytest.raises(ValueError, match="projection_dim=100 exceeds the pooled states' 64 dimensions"):
        rds(model, texts_tokenizer, projection_dim=100).select(pool, target=target, k=2)
    assert affects_result(RDSSelectorConfig, "aggregate") and affects_result(RDSSelectorConfig, "projection_dim")
