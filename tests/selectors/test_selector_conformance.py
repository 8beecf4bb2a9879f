"""Every registered selector keeps the selector contract: run over ``list_selectors()``, so a selector
registered later (a new built-in, or one a user plugs in before the suite runs) is checked too.

The contract: the FLOPs estimated before any work equal the FLOPs charged; scoring in small shards
gives what scoring the whole pool does; a result holds ``k`` sorted, unique pool rows with their
scores in pool order; NaN scores are refused, never ranked; the same seed gives the same indices;
and a bf16 model scores finite values on CPU. Tiny random models keep each selector to seconds; the
real default models run only under ``-m slow``.

A selector that needs options to run fast (or a model other than a causal LM) gets them from
``OPTIONS`` / ``ENCODER_SELECTORS`` below; any other registered selector is built with its defaults
(and the tiny causal LM when it ``uses_model``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hf_cads.flops import FlopLedger
from hf_cads.selectors import (
    INDEX_COLUMN,
    SCORE_COLUMN,
    ScoreOutput,
    get_selector,
    get_selector_class,
    list_selectors,
    select_within_budget,
)
from hf_cads.testing import assert_close_at_scale, tiny_causal_lm

K = 6
SHARD_SIZE = 5  # several shards, the last one short, on the 24-row pool

# Small but real settings: every stage of each method runs (LESS's warmup and projection, CADS's pilot
# runs and outer loop), on few steps.
OPTIONS: dict[str, dict] = {
    "embedding": dict(max_length=64, batch_size=4),
    "perplexity": dict(max_length=64, batch_size=4),
    "less": dict(
        projection_dim=64,
        max_length=64,
        warmup_fraction=0.25,
        warmup_epochs=1,
        learning_rate=1e-3,
        lora_r=4,
        lora_target_modules=("q_proj", "v_proj"),
    ),
    "cads": dict(train_budget=2e9, max_length=64, outer_steps=2, num_sampling_points=3),
}
REAL_MODEL_OPTIONS = {"cads": {"train_budget": 2e12}}
"""Overrides for the real default models: a SmolLM2-135M training step of this pool's rows costs up to
~2.5e11 FLOPs, so CADS's pilot runs need a budget of a few steps (the tiny model's 2e9 is less than one)."""
ESTIMATE_TOLERANCE: dict[str, float] = {"cads": 0.15}
"""Relative gap allowed between a selector's estimate and its charge (default: none, up to rounding).
CADS trains on randomly drawn masks whose rows differ in length, so it can only plan their expected
cost (test_cads checks the same bound)."""
ENCODER_SELECTORS = {"embedding"}
"""Selectors whose model is a sentence-transformers encoder rather than a causal LM."""

SELECTORS = list_selectors()
MODEL_SELECTORS = [name for name in SELECTORS if get_selector_class(name).uses_model]


@pytest.fixture(scope="module")
def pool(small_pool):
    """24 real rows, 6 from each of the 4 sources."""
    sources = np.asarray(small_pool["source"])
    rows = [int(row) for name in sorted(set(sources)) for row in np.flatnonzero(sources == name)[:6]]
    return small_pool.select(rows)


@pytest.fixture(scope="module")
def targets(bbh_target):
    validation, test = bbh_target
    return {"first": validation, "second": test.select(range(3))}


@pytest.fixture(scope="module")
def encoder_folder(tmp_path_factory, tokenizer):
    """A tiny random BERT saved as a sentence-transformers folder (mean pooling), loaded per test."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("encoder")
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder / "transformer")
    tokenizer.save_pretrained(folder / "transformer")
    transformer = models.Transformer(str(folder / "transformer"), max_seq_length=64)
    pooling = models.Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(folder / "encoder"))
    return folder / "encoder"


@pytest.fixture
def build(tokenizer, encoder_folder):
    """``build(name, dtype=None, **options)``: the selector ``name`` with tiny models and fast options."""

    def make(name: str, dtype: torch.dtype | None = None, **options):
        cls = get_selector_class(name)
        objects = {}
        if cls.uses_model and name in ENCODER_SELECTORS:
            from sentence_transformers import SentenceTransformer

            objects["model"] = SentenceTransformer(
                str(encoder_folder), device="cpu", model_kwargs={"attn_implementation": "eager"}
            )
        elif cls.uses_model:
            objects = {"model": tiny_causal_lm(tokenizer), "tokenizer": tokenizer}
        if dtype is not None and "model" in objects:
            objects["model"] = objects["model"].to(dtype)
        return get_selector(name, **{**OPTIONS.get(name, {}), "show_progress": False, **options}, **objects)

    return make


def check_result(result, pool, name: str, k: int = K) -> None:
    """What every SelectionResult promises about its rows, scores and cost."""
    indices = np.asarray(result.indices)
    assert indices.dtype == np.int64 and len(indices) == k == len(result)
    assert np.all(np.diff(indices) > 0), "indices are sorted and unique"
    assert 0 <= indices.min() and indices.max() < len(pool)
    assert result.selector == name and result.pool_size == len(pool)
    assert result.dataset[INDEX_COLUMN] == indices.tolist()
    assert result.dataset["text"] == [pool[int(i)]["text"] for i in indices]
    np.testing.assert_array_equal(result.dataset[SCORE_COLUMN], result.all_scores[indices])
    np.testing.assert_array_equal(result.scores, result.all_scores[indices])
    assert result.all_scores.shape == (len(pool),) and np.isfinite(result.all_scores).all()
    assert math.isfinite(result.flops) and result.flops >= 0


def target_for(name: str, targets):
    return targets["first"] if get_selector_class(name).requires_target else None


def test_every_builtin_selector_is_checked():
    assert {"bm25", "cads", "embedding", "less", "perplexity", "random"} <= set(SELECTORS)


@pytest.mark.parametrize("name", SELECTORS)
def test_estimate_equals_charge_and_the_result_contract(name, build, pool, targets):
    selector = build(name)
    ledger = FlopLedger()
    result, charge = select_within_budget(selector, pool, target_for(name, targets), ledger, k=K)
    check_result(result, pool, name)
    assert charge.flops == result.flops == ledger.entries["selection"]
    assert charge.flops == pytest.approx(charge.estimated_flops, rel=ESTIMATE_TOLERANCE.get(name, 1e-9), abs=1e-6)
    if get_selector_class(name).uses_model:
        assert charge.flops > 0


@pytest.mark.parametrize("name", SELECTORS)
def test_sharded_scoring_equals_whole_pool_scoring(name, build, pool, targets):
    target = target_for(name, targets)
    whole = build(name, seed=1, shard_size=10_000).select(pool, target=target, k=K)
    sharded = build(name, seed=1, shard_size=SHARD_SIZE).select(pool, target=target, k=K)
    np.testing.assert_array_equal(sharded.indices, whole.indices)
    # Shards batch rows differently, so float reductions may differ in the last bits only.
    assert_close_at_scale(sharded.all_scores, whole.all_scores, rel=1e-4, what=f"{name} scores")


@pytest.mark.parametrize("name", SELECTORS)
def test_select_many_equals_one_selection_per_target(name, build, pool, targets):
    if not get_selector_class(name).requires_target:
        pytest.skip(f"{name} ignores the target")
    many = build(name, seed=2).select_many(pool, targets, k=K)
    assert list(many) == list(targets)
    for target_name, target in targets.items():
        check_result(many[target_name], pool, name)
        alone = build(name, seed=2).select(pool, target=target, k=K)
        np.testing.assert_array_equal(many[target_name].indices, alone.indices)
        assert_close_at_scale(many[target_name].all_scores, alone.all_scores, rel=1e-4, what=f"{name} scores")


@pytest.mark.parametrize("name", SELECTORS)
def test_nan_scores_are_refused(name, build, pool, targets):
    selector = build(name)

    def nan_scores(rows: int) -> ScoreOutput:
        scores = np.linspace(0.0, 1.0, rows)
        scores[rows // 2] = np.nan
        return ScoreOutput(scores, 0.0)

    # Only the row scores are replaced; prepare, sharding, the checks and the choice are the selector's own.
    selector.score = lambda pool_rows, target: nan_scores(len(pool_rows))
    selector.score_rows = lambda pool_rows, target, rows, prepared, progress=None: nan_scores(len(rows))
    with pytest.raises(ValueError, match="NaN scores for pool rows"):
        selector.select(pool, target=target_for(name, targets), k=K)


@pytest.mark.parametrize("name", SELECTORS)
def test_same_seed_gives_the_same_indices(name, build, pool, targets):
    target = target_for(name, targets)
    first = build(name, seed=3).select(pool, target=target, k=K)
    again = build(name, seed=3).select(pool, target=target, k=K)
    np.testing.assert_array_equal(first.indices, again.indices)
    np.testing.assert_array_equal(first.all_scores, again.all_scores)


@pytest.mark.parametrize("name", MODEL_SELECTORS)
def test_a_bf16_model_scores_on_cpu(name, build, pool, targets):
    selector = build(name, dtype=torch.bfloat16)
    assert next(selector.model.parameters()).dtype == torch.bfloat16
    result = selector.select(pool, target=target_for(name, targets), k=K)
    check_result(result, pool, name)
    assert result.flops > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", SELECTORS)
def test_real_default_models_keep_the_contract(name, pool, targets):
    options = {key: value for key, value in OPTIONS.get(name, {}).items() if key != "lora_target_modules"}
    options.update(REAL_MODEL_OPTIONS.get(name, {}))
    selector = get_selector(name, **options, show_progress=False)
    result, charge = select_within_budget(selector, pool, target_for(name, targets), FlopLedger(), k=K)
    check_result(result, pool, name)
    assert charge.flops == pytest.approx(charge.estimated_flops, rel=ESTIMATE_TOLERANCE.get(name, 1e-9), abs=1e-6)
