"""Score caching: keyed by what the scores depend on, reused at 0 FLOPs, robust to damaged files."""

import json
import logging

import numpy as np
import pytest
from datasets import Dataset

from hf_cads import BudgetedTrainer, BudgetedTrainingArguments, get_selector
from hf_cads.cache import CACHE_ENV, CacheError, ScoreCache
from hf_cads.selectors import ScoreOutput, Selector
from hf_cads.testing import tiny_causal_lm


def folders(root):
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_a_rerun_reuses_the_scores_and_charges_nothing(tmp_path, small_pool, bbh_target):
    target = bbh_target[0]
    first = get_selector("bm25", cache_dir=str(tmp_path), shard_size=50).select(small_pool, target=target, k=20)
    assert first.flops > 0 and first.extras["cache"]["hit"] is False and first.extras["cache"]["resumed_shards"] == 0
    (folder,) = tmp_path.iterdir()
    manifest = ScoreCache(folder).manifest()
    assert manifest["complete"] and manifest["flops"] == first.flops
    assert manifest["description"]["pool"]["fingerprint"] == small_pool._fingerprint
    assert ScoreCache(folder).stored_shards() == list(range(-(-len(small_pool) // 50)))

    again = get_selector("bm25", cache_dir=str(tmp_path), shard_size=50, show_progress=False).select(
        small_pool, target=target, k=20
    )
    assert again.flops == 0.0
    assert again.extras["cache"] == {"hit": True, "dir": str(folder), "original_flops": first.flops}
    assert again.indices.tolist() == first.indices.tolist() and np.array_equal(again.all_scores, first.all_scores)
    assert folders(tmp_path) == [folder.name]  # show_progress is cosmetic: same cache


def test_the_key_follows_data_options_and_model(tmp_path, small_pool, bbh_target, tokenizer):
    target = bbh_target[0]

    def run(name="bm25", pool=small_pool, target=target, **options):
        return get_selector(name, cache_dir=str(tmp_path), show_progress=False, **options).select(
            pool, target=target, k=5
        )

    run()
    run(aggregate="max")  # another option
    run(pool=small_pool.select(range(100)))  # another pool
    run(target=bbh_target[1].select(range(5)))  # another target
    run(shard_size=64)  # other shards (and so, for model scorers, other batches and FLOPs)
    assert len(folders(tmp_path)) == 5
    assert run().extras["cache"]["hit"]

    def perplexity(model_seed):
        model = tiny_causal_lm(tokenizer, seed=model_seed)
        return run("perplexity", model=model, tokenizer=tokenizer, max_length=64)

    assert not perplexity(0).extras["cache"]["hit"]
    assert perplexity(0).extras["cache"]["hit"]  # a new object with the same weights
    assert not perplexity(1).extras["cache"]["hit"]  # other weights, same name


def test_environment_variable_turns_the_cache_on(tmp_path, monkeypatch, small_pool, bbh_target):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env_cache"))
    get_selector("bm25").select(small_pool, target=bbh_target[0], k=5)
    assert get_selector("bm25").select(small_pool, target=bbh_target[0], k=5).extras["cache"]["hit"]
    assert len(folders(tmp_path / "env_cache")) == 1
    monkeypatch.delenv(CACHE_ENV)
    assert "cache" not in get_selector("bm25").select(small_pool, target=bbh_target[0], k=5).extras


class WholePool(Selector):
    """A selector that scores the whole pool at once (not shardable), with assorted extras."""

    requires_target = False
    calls = 0

    def score(self, pool, target):
        WholePool.calls += 1
        lengths = np.array([len(t) for t in pool["text"]], dtype=float)
        return ScoreOutput(
            lengths, 123.0, {"per_row": lengths * 2, "mixture": {"a": 0.25, "b": 0.75}, "steps": np.int64(3)}
        )

    def estimate_flops(self, pool, target):
        return 123.0


def test_whole_pool_selectors_are_cached_with_their_extras(tmp_path):
    pool = Dataset.from_dict({"text": ["a", "bbb", "cc", "dddd"]})
    WholePool.calls = 0
    first = WholePool(cache_dir=str(tmp_path)).select(pool, k=2)
    again = WholePool(cache_dir=str(tmp_path)).select(pool, k=2)
    assert WholePool.calls == 1
    assert again.flops == 0 and again.extras["cache"]["original_flops"] == 123.0 == first.flops
    assert again.extras["mixture"] == {"a": 0.25, "b": 0.75} and again.extras["steps"] == 3
    assert np.array_equal(again.extras["per_row"], first.extras["per_row"])
    assert again.indices.tolist() == first.indices.tolist() == [1, 3]


def test_unstorable_extras_skip_the_cache_with_a_warning(tmp_path, caplog):
    class OddExtras(WholePool):
        def score(self, pool, target):
            output = super().score(pool, target)
            output.extras["object"] = object()
            return output

    pool = Dataset.from_dict({"text": ["a", "bbb"]})
    with caplog.at_level(logging.WARNING, logger="hf_cads.cache"):
        result = OddExtras(cache_dir=str(tmp_path)).select(pool, k=1)
    assert result.flops == 123.0 and "cache" not in result.extras
    assert "Not caching" in caplog.text


def test_damaged_or_foreign_files_are_rescored_or_refused(tmp_path, small_pool, bbh_target, caplog):
    target = bbh_target[0]
    first = get_selector("bm25", cache_dir=str(tmp_path), shard_size=50).select(small_pool, target=target, k=20)
    (folder,) = tmp_path.iterdir()
    (folder / "shard-00001.npz").write_bytes(b"not a numpy file")
    with caplog.at_level(logging.WARNING, logger="hf_cads.cache"):
        again = get_selector("bm25", cache_dir=str(tmp_path), shard_size=50).select(small_pool, target=target, k=20)
    assert "unreadable cached shard" in caplog.text and "lacks shards" in caplog.text
    # the damaged shard was scored again; the others were reused and charged (an unfinished cache)
    assert (
        not again.extras["cache"]["hit"]
        and again.extras["cache"]["resumed_shards"] == len(ScoreCache(folder).stored_shards()) - 1
    )
    assert again.flops == pytest.approx(first.flops) and np.array_equal(again.all_scores, first.all_scores)

    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["key"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="belongs to other scores.*delete the folder"):
        get_selector("bm25", cache_dir=str(tmp_path), shard_size=50).select(small_pool, target=target, k=20)


def test_budgeted_trainer_records_a_cached_selection(tmp_path, small_pool, bbh_target, tokenizer):
    def trainer():
        args = BudgetedTrainingArguments(
            output_dir=str(tmp_path / "out"),
            flop_budget=1e10,
            selector="bm25",
            selection_fraction=0.5,
            selector_kwargs={"cache_dir": str(tmp_path / "cache")},
            report_to="none",
            use_cpu=True,
            max_length=64,
            save_strategy="no",
        )
        return BudgetedTrainer(
            model=tiny_causal_lm(tokenizer),
            args=args,
            train_dataset=small_pool,
            processing_class=tokenizer,
            selection_target=bbh_target[0],
        )

    first, second = trainer(), trainer()
    spent = first.flop_ledger.entries["selection"]
    assert spent > 0 and second.flop_ledger.entries["selection"] == 0
    assert second.flop_ledger.selection.cache_hit and second.flop_ledger.selection.cache["original_flops"] == spent
    assert second.selection_result.indices.tolist() == first.selection_result.indices.tolist()
