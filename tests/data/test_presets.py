"""Presets: the Hub path up to its offline error, a missing local folder, the local folder on the real
data, and quiet loading (no per-file progress bars unless ``--verbose``)."""

from __future__ import annotations

import logging

import pytest

from hf_cads.data import (
    DATA_DIR_ENV,
    HUB_DATASETS,
    build_multisource_pool,
    load_bbh_target,
    load_gsm8k,
    load_task_data,
    target_preset,
)


@pytest.fixture
def no_local_data(monkeypatch):
    """No ``HF_CADS_DATA_DIR``: presets go to the Hub, which the tests cannot reach (HF_HUB_OFFLINE=1)."""
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


@pytest.mark.parametrize(
    "load, preset, hub_id",
    [
        (
            lambda: load_task_data("bbh/boolean_expressions", max_per_source=5),
            "bbh/boolean_expressions",
            "lukaemon/bbh",
        ),
        (lambda: load_gsm8k("test"), "gsm8k", "openai/gsm8k"),
        (lambda: build_multisource_pool(sources=("code_alpaca",)), "shared-mix", "sahil2801/CodeAlpaca-20k"),
        (lambda: build_multisource_pool(sources=("alpaca_seed",)), "shared-mix", "HuggingFaceH4/self-instruct-seed"),
    ],
)
def test_offline_without_the_folder_names_the_preset_hub_id_and_the_variable(no_local_data, load, preset, hub_id):
    with pytest.raises(ConnectionError) as raised:
        load()
    message = str(raised.value)
    assert "\n" not in message
    assert f"preset {preset!r}" in message and hub_id in message and DATA_DIR_ENV in message


def test_the_hub_table_pins_every_preset_to_a_revision():
    assert set(HUB_DATASETS) == {"bbh", "bbh_cot_prompts", "gsm8k", "code_alpaca", "alpaca_seed"}
    assert all(len(spec.revision) == 40 and int(spec.revision, 16) >= 0 for spec in HUB_DATASETS.values())


def test_a_recognised_preset_without_its_folder_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "nowhere"))
    for target, folder in (("boolean_expressions", "bbh"), ("bbh/navigate", "bbh"), ("gsm8k", "gsm8k")):
        with pytest.raises(FileNotFoundError) as raised:
            load_task_data(target)
        message = str(raised.value)
        assert f"preset {target!r} is built in" in message and f"{folder}/" in message and DATA_DIR_ENV in message
        assert "neither" not in message
    with pytest.raises(ValueError, match="not a file, folder or Hub id, nor a built-in target"):
        target_preset("frobnicate")


def test_the_local_folder_serves_the_real_data(data_dir):
    validation, test = load_bbh_target("boolean_expressions", data_dir)
    assert len(validation) == 3 and len(test) == 250
    assert validation[0]["text"].startswith("Q: ") and "\nA: " in validation[0]["text"]
    assert len(load_gsm8k("train")) == 7473
    pool = build_multisource_pool("boolean_expressions", max_per_source=30, max_chars=None)
    assert {row["subtask"] for row in pool if row["source"] == "bbh"}.isdisjoint({"boolean_expressions"})
    assert sorted(set(pool["source"])) == ["alpaca_seed", "bbh", "code_alpaca", "gsm8k"]
    with pytest.raises(ValueError, match="a BBH task that the local folder"):
        target_preset("navigate")  # on the Hub, not in the local copy


def _load_bbh_pool_fresh(monkeypatch, tmp_path):
    """Build the BBH part of the pool from its 24 files with an empty ``datasets`` cache, so every file
    is generated (and would show its progress bars) again."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    return build_multisource_pool(None, sources=("bbh",), max_chars=None)


def test_loading_the_bbh_tasks_shows_no_progress_bars(monkeypatch, tmp_path, capfd):
    pool = _load_bbh_pool_fresh(monkeypatch, tmp_path)
    assert len(set(pool["subtask"])) == 24
    printed = capfd.readouterr()
    assert "Generating train split" not in printed.err and "formatting bbh/" not in printed.err
    assert "Generating train split" not in printed.out


def test_verbose_brings_the_progress_bars_back(monkeypatch, tmp_path, capfd, package_logger):
    from hf_cads.commands import main

    package_logger.setLevel(logging.NOTSET)
    assert main(["recipes", "--verbose"]) == 0
    assert package_logger.isEnabledFor(logging.DEBUG)
    capfd.readouterr()
    _load_bbh_pool_fresh(monkeypatch, tmp_path)
    assert "Generating train split" in capfd.readouterr().err
