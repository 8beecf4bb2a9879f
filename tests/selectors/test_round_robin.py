"""aggregate="round_robin": each target row in turn takes its best remaining pool row.

The constructed case: a target with two clusters of unequal size. Mean aggregation ranks the pool
by closeness to the big cluster and fills the subset from it alone; round robin gives the small
cluster its share. The choice runs on the per-target-row scores the selectors return as a per-row
extra, so it survives sharding and the score cache, and ``aggregate`` keys the cache.
"""

from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset

from hf_cads.selectors import get_selector
from hf_cads.selectors.bm25 import BM25SelectorConfig
from hf_cads.selectors.embedding import EmbeddingSelectorConfig
from hf_cads.selectors.less import LESSSelectorConfig
from hf_cads.selectors.options import affects_result
from hf_cads.selectors.rds import RDSSelectorConfig
from hf_cads.selectors.result import top_k_indices
from hf_cads.selectors.round_robin import round_robin_indices
from hf_cads.testing import tiny_causal_lm

CAT_POOL = [
    "the cat sat on the mat and the cat purred",
    "a cat and a kitten sat on a warm mat",
    "my cat chased the other cat around the mat",
    "the kitten and the cat slept on the mat all day",
    "cats like a soft mat and a sunny window",
]
STOCK_POOL = [
    "stock prices fell as the market closed lower",
    "the stock market rallied after the prices rose",
    "investors sold stock when market prices dropped",
]
NOISE_POOL = ["write a haiku about autumn leaves", "translate good morning into German"]
TARGET = [
    "the cat sat on my mat",
    "a cat purred on the mat",
    "the kitten and the cat on the mat",
    "stock prices",
]
K = 4


@pytest.fixture(scope="module")
def clusters():
    pool = Dataset.from_dict({"text": CAT_POOL + STOCK_POOL + NOISE_POOL})
    cats, stocks = set(range(len(CAT_POOL))), set(range(len(CAT_POOL), len(CAT_POOL) + len(STOCK_POOL)))
    return pool, Dataset.from_dict({"text": TARGET}), cats, stocks


def test_mean_serves_one_cluster_and_round_robin_both(clusters):
    pool, target, cats, stocks = clusters
    mean = get_selector("bm25", aggregate="mean", show_progress=False).select(pool, target=target, k=K)
    robin = get_selector("bm25", aggregate="round_robin", show_progress=False).select(pool, target=target, k=K)
    assert set(mean.indices.tolist()) <= cats
    chosen = set(robin.indices.tolist())
    assert chosen & cats and chosen & stocks
    # Three cat target rows and one stock row: one round gives each its own nearest row.
    assert len(chosen & cats) == 3 and len(chosen & stocks) == 1


def test_a_matrix_with_two_target_clusters():
    # Rows 0-3 are close to target rows 0-2, rows 4-5 to target row 3 (a smaller cluster).
    scores = np.array(
        [
            [0.90, 0.88, 0.91, 0.10],
            [0.85, 0.86, 0.84, 0.05],
            [0.80, 0.82, 0.83, 0.10],
            [0.78, 0.80, 0.79, 0.12],
            [0.10, 0.12, 0.08, 0.95],
            [0.05, 0.06, 0.10, 0.90],
        ]
    )
    assert top_k_indices(scores.mean(axis=1), 4).tolist() == [0, 1, 2, 3]
    assert round_robin_indices(scores, 4, seed=0).tolist() == [0, 1, 2, 4]
    assert round_robin_indices(scores, 6, seed=0).tolist() == list(range(6))


@pytest.mark.parametrize("seed", range(5))
def test_properties_over_random_matrices(seed):
    rng = np.random.default_rng(seed)
    rows, targets = 40, 7
    scores = rng.normal(size=(rows, targets))
    for k in (1, 5, targets, 23, rows):
        chosen = round_robin_indices(scores, k, seed=seed)
        assert len(chosen) == k == len(set(chosen.tolist())) and np.all(np.diff(chosen) > 0)
    # The first round: every target row gets its own best row (no two share one here).
    best = scores.argmax(axis=0)
    if len(set(best.tolist())) == targets:
        assert set(round_robin_indices(scores, targets, seed=seed).tolist()) == set(best.tolist())
    # One target row: round robin is top-k.
    np.testing.assert_array_equal(round_robin_indices(scores[:, :1], 9, seed=seed), top_k_indices(scores[:, 0], 9))


def test_ties_are_broken_by_the_seed():
    scores = np.zeros((30, 2))
    picks = {tuple(round_robin_indices(scores, 5, seed=seed).tolist()) for seed in range(6)}
    assert len(picks) > 1
    np.testing.assert_array_equal(round_robin_indices(scores, 5, seed=3), round_robin_indices(scores, 5, seed=3))
    # Ties sit wherever the ranking needs them: a deep tie still follows the seed, not the row order.
    tied = np.concatenate([np.linspace(1.0, 0.9, 3)[:, None], np.zeros((27, 1))])
    chosen = round_robin_indices(tied, 6, seed=1)
    assert set(chosen[:3].tolist()) <= set(range(6)) and {0, 1, 2} <= set(chosen.tolist())


def test_bad_input_gets_one_clear_error():
    with pytest.raises(ValueError, match="0 < k <= 3"):
        round_robin_indices(np.zeros((3, 2)), 4, seed=0)
    with pytest.raises(ValueError, match="non-empty target"):
        round_robin_indices(np.zeros((3, 0)), 1, seed=0)
    with pytest.raises(ValueError, match="aggregate must be 'mean', 'max' or 'round_robin'"):
        get_selector("bm25", aggregate="robin")


def test_round_robin_survives_sharding_and_the_cache(tmp_path, clusters):
    pool, target, _, _ = clusters

    def run(**options):
        return get_selector("bm25", aggregate="round_robin", show_progress=False, **options).select(
            pool, target=target, k=5
        )

    whole, sharded = run(shard_size=1000), run(shard_size=3)
    np.testing.assert_array_equal(sharded.indices, whole.indices)
    np.testing.assert_allclose(sharded.extras["target_scores"], whole.extras["target_scores"])
    first, again = run(cache_dir=str(tmp_path), shard_size=3), run(cache_dir=str(tmp_path), shard_size=3)
    assert again.extras["cache"]["hit"] and again.flops == 0.0
    np.testing.assert_array_equal(again.indices, first.indices)
    np.testing.assert_array_equal(first.indices, whole.indices)
    # The aggregation keys the cache: mean scores are other scores.
    get_selector("bm25", cache_dir=str(tmp_path), shard_size=3, show_progress=False).select(pool, target=target, k=5)
    assert len(list(tmp_path.iterdir())) == 2


def test_duplicated_pool_rows_are_chosen_once(clusters):
    pool, target, _, _ = clusters
    doubled = Dataset.from_dict({"text": [*pool["text"], *pool["text"]]})
    result = get_selector("bm25", aggregate="round_robin", show_progress=False).select(doubled, target=target, k=6)
    assert result.indices.max() < len(pool) and result.extras["deduplication"]["dropped"] == len(pool)


@pytest.mark.parametrize(
    "config_class", [BM25SelectorConfig, EmbeddingSelectorConfig, LESSSelectorConfig, RDSSelectorConfig]
)
def test_aggregate_is_a_result_option(config_class):
    assert affects_result(config_class, "aggregate")
    assert config_class(aggregate="round_robin").result_options()["aggregate"] == "round_robin"


def test_embedding_round_robin_uses_every_target_row(tmp_path, tokenizer, clusters):
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel

    pool, target, _, _ = clusters
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4
    )
    BertModel(config).save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    transformer = models.Transformer(str(tmp_path / "bert"), max_seq_length=64)
    encoder = SentenceTransformer(
        modules=[transformer, models.Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")], device="cpu"
    )
    result = get_selector("embedding", model=encoder, aggregate="round_robin", seed=4, show_progress=False).select(
        pool, target=target, k=K
    )
    per_target = result.extras["target_scores"]
    assert per_target.shape == (len(pool), len(target))
    np.testing.assert_array_equal(result.indices, round_robin_indices(per_target, K, seed=4))
    maximum = get_selector("embedding", model=encoder, aggregate="max", show_progress=False).select(
        pool, target=target, k=K
    )
    np.testing.assert_allclose(result.all_scores, maximum.all_scores)


def test_less_round_robin_scores_each_target_row_and_reuses_the_feature_index(tmp_path, tokenizer, clusters):
    pool, target, _, _ = clusters
    options = dict(
        projection_dim=32,
        max_length=32,
        warmup_fraction=0.3,
        warmup_epochs=1,
        learning_rate=1e-3,
        lora_r=2,
        lora_target_modules=("q_proj",),
        feature_dir=str(tmp_path / "index"),
        show_progress=False,
    )

    def less(**more):
        return get_selector("less", model=tiny_causal_lm(tokenizer), tokenizer=tokenizer, **options, **more)

    mean = less().select(pool, target=target, k=K)
    robin = less(aggregate="round_robin", seed=42).select(pool, target=target, k=K)
    scores = robin.extras["subtask_scores"]
    assert scores.shape == (len(pool), len(target))
    np.testing.assert_array_equal(robin.indices, round_robin_indices(scores, K, seed=42))
    # Mean over one sub-task is the mean of the per-row scores; the pool features were reused.
    np.testing.assert_allclose(mean.all_scores, scores.mean(axis=1), rtol=1e-4, atol=1e-6)
    assert robin.extras["feature_index"]["reused"]
    with pytest.raises(ValueError, match="drop subtask_column"):
        less(aggregate="round_robin", subtask_column="task")
