"""One declaration of what affects results (``field(metadata={"affects_result": False})``): the score
cache key, the LESS feature fingerprint, the run key and the run label all derive from it, and data
written under the previous keys is recognised or reported, never reused under a wrong key."""

import dataclasses
import json
import logging

import pytest

from hf_cads import get_selector
from hf_cads.cache import FORMAT_VERSION
from hf_cads.records import SCHEMA_VERSION, RunRecord, experiment_key, read_records, run_key, run_label
from hf_cads.selectors import get_selector_class, list_selectors
from hf_cads.selectors.cads import CADSSelectorConfig
from hf_cads.selectors.less import LESSSelectorConfig
from hf_cads.selectors.less.feature_index import INDEX_FORMAT, FeatureIndex
from hf_cads.selectors.options import affects_result

NOT_AFFECTING = {"show_progress", "cache_dir"}
LESS_NOT_AFFECTING = NOT_AFFECTING | {"feature_dir", "gradient_buffer_mb", "gradient_method", "lora_config"}
CADS_NOT_AFFECTING = NOT_AFFECTING | {"lora_config"}  # a LoraConfig's values are copied into the LoRA options


def not_affecting(config_class):
    return {f.name for f in dataclasses.fields(config_class) if not affects_result(config_class, f.name)}


def test_each_selector_declares_its_run_only_options_once():
    for name in list_selectors():
        config_class = get_selector_class(name).config_class
        expected = {LESSSelectorConfig: LESS_NOT_AFFECTING, CADSSelectorConfig: CADS_NOT_AFFECTING}.get(
            config_class, NOT_AFFECTING
        )
        assert not_affecting(config_class) == expected, name
    assert (
        set(LESSSelectorConfig().result_options())
        == {f.name for f in dataclasses.fields(LESSSelectorConfig)} - LESS_NOT_AFFECTING
    )


def test_cache_key_run_key_and_label_ignore_exactly_the_declared_options(small_pool, bbh_target, tmp_path):
    def description(**options):
        return get_selector("bm25", **options).cache_description(small_pool, bbh_target[0])

    base = description(seed=0)
    assert (
        description(seed=0, cache_dir=str(tmp_path), show_progress=False) == base
    )  # cache_dir no longer splits caches
    assert description(seed=1) != base and description(seed=0, aggregate="max") != base

    def key(**options):
        config = get_selector("bm25", **options).config.to_dict()
        return run_key("bm25", config, 0.1, None, 0, "m", "t", {"flop_budget": 1e12})

    assert key(seed=0) == key(seed=0, cache_dir=str(tmp_path), show_progress=False)  # cache_dir changed it before
    assert key(seed=0) != key(seed=0, aggregate="max")
    assert (
        run_label("bm25", {"aggregate": "max", "cache_dir": "/x", "show_progress": False, "seed": 3})
        == "bm25[aggregate=max]"
    )
    assert (
        run_label("less", {"gradient_method": "loop", "feature_dir": "/f", "projection_dim": 64})
        == "less[projection_dim=64]"
    )


def test_a_record_key_equals_the_key_expected_before_the_run():
    kwargs = {"aggregate": "max", "cache_dir": "/somewhere"}
    setup = {"pool_sources": ["bbh"], "lora_r": 8}
    expected = experiment_key("bm25", kwargs, 0, 0.1, None, "m", "t", 1e12, setup)
    record = RunRecord(
        selector="bm25",
        selector_config=get_selector("bm25", seed=0, **kwargs).config.to_dict(),
        model="m",
        model_params=10,
        selection_model_params=0,
        pool_size=100,
        k=10,
        tokens_trained=5,
        selection_flops=1.0,
        train_flops=2.0,
        metrics={"target_loss": 1.0},
        seed=0,
        target="t",
        selection_fraction=0.1,
        flop_budget=1e12,
        setup={"selector_kwargs": kwargs, **setup},
    )
    assert record.key == expected and record.schema_version == SCHEMA_VERSION
    # CADS resolves train_budget from the budget during the run; the key follows what was requested
    cads_config = get_selector("cads-s", seed=0, outer_steps=2).config.to_dict() | {"train_budget": 7.5e11}
    cads = dataclasses.replace(
        record,
        selector="cads-s",
        selector_config=cads_config,
        key="",
        setup={"selector_kwargs": {"outer_steps": 2}, **setup},
    )
    assert cads.key == experiment_key("cads-s", {"outer_steps": 2}, 0, 0.1, None, "m", "t", 1e12, setup)


def test_old_run_records_get_their_key_recomputed(tmp_path):
    kwargs = {"aggregate": "max", "show_progress": False}
    setup = {"flop_budget": 1e12, "pool_sources": ["bbh"]}
    old = {
        "selector": "bm25",
        "selector_config": get_selector("bm25", seed=0, **kwargs).config.to_dict(),
        "model": "m",
        "model_params": 10,
        "selection_model_params": 0,
        "pool_size": 100,
        "k": 10,
        "tokens_trained": 5,
        "selection_flops": 1.0,
        "train_flops": 2.0,
        "metrics": {"target_loss": 1.0},
        "seed": 0,
        "target": "t",
        "selection_fraction": 0.1,
        "flop_budget": 1e12,
        "setup": {"selector_kwargs": kwargs, **setup},
        "key": "0123456789abcdef",
        "schema_version": 1,
        "label": "bm25[aggregate=max]",
    }
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps(old) + "\n")
    (record,) = read_records(path)
    assert record.key != old["key"] and record.schema_version == SCHEMA_VERSION
    assert record.key == experiment_key("bm25", kwargs, 0, 0.1, None, "m", "t", 1e12, {"pool_sources": ["bbh"]})
    assert record.label == old["label"]


def test_old_score_cache_folders_are_reported_and_not_reused(small_pool, bbh_target, tmp_path, caplog):
    selector = get_selector("bm25", cache_dir=str(tmp_path), show_progress=False)
    fresh = selector.select(small_pool, target=bbh_target[0], k=5)
    (folder,) = tmp_path.glob("bm25-*")
    # Turn it into a folder an older version wrote: same place, same scores, format 1.
    manifest = json.loads((folder / "manifest.json").read_text())
    old = tmp_path / "bm25-0000000000000000000000aa"
    folder.rename(old)
    (old / "manifest.json").write_text(json.dumps({**manifest, "format": FORMAT_VERSION - 1, "key": "old"}))
    with caplog.at_level(logging.WARNING, logger="hf_cads.cache"):
        again = selector.select(small_pool, target=bbh_target[0], k=5)
    assert not again.extras["cache"]["hit"] and again.flops == fresh.flops > 0  # computed afresh
    assert "written by another hf_cads version" in caplog.text and old.name in caplog.text
    assert old.exists()  # left for the user to delete


def test_old_less_feature_folders_are_refused_with_a_clear_message(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"format": INDEX_FORMAT - 1, "fingerprint": "abc"}))
    with pytest.raises(ValueError, match="written by another hf_cads version.*not reused"):
        FeatureIndex(tmp_path, "abc", {})


def test_one_lora_default_and_a_peft_lora_config_accepted_where_lora_options_are_taken():
    from peft import LoraConfig

    from hf_cads.flops import LoraSpec
    from hf_cads.lora import DEFAULT_LORA_TARGET_MODULES, with_default_target_modules
    from hf_cads.pipeline import RunConfig
    from hf_cads.selectors.cads import CADSSelectorConfig
    from hf_cads.selectors.cads.backends import CausalLMBackend

    assert (
        tuple(RunConfig().lora_target_modules)
        == tuple(CADSSelectorConfig().lora_target_modules)
        == DEFAULT_LORA_TARGET_MODULES
    )
    assert LESSSelectorConfig().lora_target_modules == LoraSpec(8).target_modules == DEFAULT_LORA_TARGET_MODULES
    backend_default = {f.name: f.default for f in dataclasses.fields(CausalLMBackend)}["lora_target_modules"]
    assert tuple(backend_default) == DEFAULT_LORA_TARGET_MODULES
    # a LoraConfig naming no layers means the same layers everywhere (FLOP accounting included)
    assert set(LoraSpec.from_peft_config(LoraConfig(r=4)).target_modules) == set(DEFAULT_LORA_TARGET_MODULES)
    assert set(with_default_target_modules(LoraConfig(r=4)).target_modules) == set(DEFAULT_LORA_TARGET_MODULES)
    lora = LoraConfig(r=16, lora_alpha=8, lora_dropout=0.05, target_modules=["v_proj", "q_proj"])
    less = LESSSelectorConfig(lora_config=lora)
    assert (less.lora_r, less.lora_alpha, less.lora_dropout, less.lora_target_modules) == (
        16,
        8.0,
        0.05,
        ("q_proj", "v_proj"),
    )
    assert (
        less.result_options()
        == LESSSelectorConfig(
            lora_r=16, lora_alpha=8, lora_dropout=0.05, lora_target_modules=("q_proj", "v_proj")
        ).result_options()
    )
    cads = CADSSelectorConfig(lora_config=lora)
    assert (cads.lora_r, cads.lora_target_modules) == (16, ["q_proj", "v_proj"])
