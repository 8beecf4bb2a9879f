import numpy as np
import pytest
import torch
from datasets import Dataset, concatenate_datasets

from hf_cads import get_selector, list_selectors
from hf_cads.data import load_gsm8k
from hf_cads.selectors import INDEX_COLUMN, SCORE_COLUMN, ScoreOutput, Selector, register_selector
from hf_cads.selectors.scoring import CausalLMScorer
from hf_cads.testing import tiny_causal_lm


@pytest.fixture(scope="module")
def math_vs_code(small_pool, data_dir):
    """40 GSM8K rows (target-like) among 40 Code Alpaca rows, target = GSM8K test questions."""
    math_rows = small_pool.filter(lambda r: r["source"] == "gsm8k").select(range(40))
    code_rows = small_pool.filter(lambda r: r["source"] == "code_alpaca").select(range(40))
    pool = concatenate_datasets([code_rows, math_rows]).shuffle(seed=0).flatten_indices()
    target = load_gsm8k("test", data_dir).select(range(8))
    return pool, target


def share_of_source(result, source):
    return np.mean([s == source for s in result.dataset["source"]])


@pytest.mark.parametrize(
    "name,options",
    [("bm25", {}), ("bm25", {"aggregate": "max"}), ("embedding", {}), ("embedding", {"aggregate": "max"})],
)
def test_targeted_selectors_prefer_target_like_rows(math_vs_code, name, options):
    pool, target = math_vs_code
    result = get_selector(name, show_progress=False, **options).select(pool, target=target, k=20)
    assert share_of_source(result, "gsm8k") >= 0.9
    assert result.flops > 0
    assert result.flops == pytest.approx(get_selector(name, **options).estimate_flops(pool, target))


def test_perplexity_prefers_what_the_model_knows(math_vs_code, tokenizer):
    pool, target = math_vs_code
    model = tiny_causal_lm(tokenizer, seed=1)
    # Teach the tiny model the target's style, then low perplexity must pick the math rows.
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scorer = CausalLMScorer(model, tokenizer, batch_size=8, max_length=128, show_progress=False)
    ids = list(scorer.batcher.batches(scorer.batcher.tokenize(list(load_gsm8k("train")["text"][:64]))))
    model.train()
    for _ in range(4):
        for batch in ids:
            labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
            loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    selector = get_selector("perplexity", model=model, tokenizer=tokenizer, max_length=128, show_progress=False)
    low = selector.select(pool, k=20)
    assert share_of_source(low, "gsm8k") >= 0.8
    high = get_selector(
        "perplexity", model=model, tokenizer=tokenizer, prefer="high", max_length=128, show_progress=False
    ).select(pool, k=20)
    assert share_of_source(high, "gsm8k") <= 0.2
    assert low.flops == pytest.approx(selector.estimate_flops(pool, None)) and low.flops > 0


def test_result_contract(math_vs_code):
    pool, target = math_vs_code
    result = get_selector("bm25").select(pool, target=target, fraction=0.25)
    assert len(result) == 20 == len(result.dataset) == len(result.scores)
    assert list(result.indices) == sorted(set(result.indices))
    assert result.dataset[INDEX_COLUMN] == result.indices.tolist()
    assert np.allclose(result.dataset[SCORE_COLUMN], result.scores)
    assert np.allclose(result.scores, result.all_scores[result.indices])
    # original rows are kept in pool order
    assert result.dataset["text"] == [pool[int(i)]["text"] for i in result.indices]
    # the kept rows are the top scores
    assert result.scores.min() >= np.sort(result.all_scores)[-20]


def test_random_is_seeded_and_costs_nothing(small_pool):
    a = get_selector("random", seed=3).select(small_pool, k=30)
    b = get_selector("random", seed=3).select(small_pool, k=30)
    c = get_selector("random", seed=4).select(small_pool, k=30)
    assert list(a.indices) == list(b.indices) != list(c.indices)
    assert a.flops == 0


def test_chat_messages_column_uses_chat_template(tokenizer):
    pool = Dataset.from_dict(
        {
            "messages": [
                [{"role": "user", "content": "add two numbers"}, {"role": "assistant", "content": "3 + 4 = 7"}],
                [{"role": "user", "content": "a poem"}, {"role": "assistant", "content": "roses are red"}],
            ]
        }
    )
    target = Dataset.from_dict({"text": ["what is 5 + 6 numbers"]})
    result = get_selector("bm25").select(pool, target=target, k=1)
    assert list(result.indices) == [0]
    model = tiny_causal_lm(tokenizer)
    scored = get_selector("perplexity", model=model, tokenizer=tokenizer, show_progress=False).select(pool, k=1)
    assert scored.extras["loss"].shape == (2,)


def test_user_selectors_plug_into_the_registry():
    @register_selector("longest-test")
    class LongestSelector(Selector):
        requires_target = False

        def score(self, pool, target):
            return ScoreOutput(np.array([len(t) for t in pool["text"]], float), 0.0)

        def estimate_flops(self, pool, target):
            return 0.0

    assert "longest-test" in list_selectors()
    pool = Dataset.from_dict({"text": ["a", "abcd", "ab"]})
    assert list(get_selector("longest-test").select(pool, k=1).indices) == [1]


def test_vectorised_bm25_equals_rank_bm25(small_pool, bbh_target):
    from rank_bm25 import BM25Okapi

    from hf_cads.selectors.bm25 import bm25_tokenize, okapi_bm25_scores

    documents = [bm25_tokenize(t) for t in small_pool["text"]]
    queries = [bm25_tokenize(t) for t in bbh_target[0]["text"]] + [["the", "the", "answer", "zzzunknown"]]
    reference = BM25Okapi(documents, k1=1.2, b=0.6)
    expected = np.stack([reference.get_scores(q) for q in queries])
    assert np.allclose(okapi_bm25_scores(documents, queries, k1=1.2, b=0.6), expected)


def test_duplicated_rows_are_dropped_and_indices_point_at_the_original_rows(math_vs_code, tokenizer, caplog):
    pool, target = math_vs_code
    # Real pools repeat rows: add exact copies of 10 rows at the end (and one repeated twice).
    repeated = [3, 5, 8, 13, 21, 34, 55, 60, 70, 75, 5]
    with_copies = concatenate_datasets([pool, pool.select(repeated)])
    n = len(pool)
    reference = get_selector("bm25").select(pool, target=target, k=20)
    with caplog.at_level("INFO", logger="hf_cads.selectors"):
        result = get_selector("bm25").select(with_copies, target=target, k=20)
    assert "Dropped 11 duplicated pool row(s)" in caplog.text
    # the copies were never scored or chosen: the same rows as without them, by their original index
    assert result.indices.tolist() == reference.indices.tolist()
    assert result.dataset[INDEX_COLUMN] == result.indices.tolist()
    assert result.dataset["text"] == [with_copies[int(i)]["text"] for i in result.indices]
    assert np.isnan(result.all_scores[n:]).all() and np.array_equal(result.all_scores[:n], reference.all_scores)
    assert result.pool_size == len(with_copies) and result.flops == reference.flops
    dedup = result.extras["deduplication"]
    assert dedup["dropped"] == 11 and dedup["column"] == "text" and dedup["examples"][0] == [3, n]
    # fraction counts unique rows; per-row extras (perplexity's losses) follow the original rows too
    model = tiny_causal_lm(tokenizer)
    ppl = get_selector("perplexity", model=model, tokenizer=tokenizer, max_length=64, show_progress=False)
    chosen = ppl.select(with_copies, fraction=0.25)
    assert len(chosen) == 20 and chosen.indices.max() < n
    assert np.isnan(chosen.extras["loss"][n:]).all() and np.allclose(chosen.extras["loss"][:n], -chosen.all_scores[:n])
    # allow_duplicates keeps every copy
    kept = get_selector("random", allow_duplicates=True).select(with_copies, k=len(with_copies))
    assert len(kept) == len(with_copies) and "deduplication" not in kept.extras
