"""Quiet by default (hf_cads._quiet): no library progress bars for short steps (selecting and
writing a subset, loading a GGUF model), the long phases keep theirs, ``--verbose`` brings the rest
back; the 4-bit kernel warning that importing transformers prints is held until 4-bit is asked for."""

from __future__ import annotations

import importlib.util
import logging
import sys
from types import SimpleNamespace

import pytest

from hf_cads import _quiet, get_selector
from hf_cads.hub import push_selection

SUBSET_BARS = ("Flattening the indices", "Creating parquet from Arrow format")
MODEL_BARS = ("Converting and de-quantizing GGUF tensors", "Loading weights")


def select_and_write(pool, target, folder):
    result = get_selector("bm25", show_progress=True).select(pool, target=target, fraction=0.5)
    push_selection(result, "me/quiet", parent=pool, target=target, local_dir=folder)


@pytest.mark.parametrize("verbose", [False, True])
def test_selecting_and_writing_a_subset_shows_only_the_scoring_bar(
    small_pool, bbh_target, tmp_path, capfd, package_logger, verbose
):
    package_logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    capfd.readouterr()
    select_and_write(small_pool, bbh_target[0], tmp_path / "subset")
    err = capfd.readouterr().err
    assert err.count("bm25 scoring:   0%") == 1  # the long phase keeps its one bar
    for bar in SUBSET_BARS:
        assert (bar in err) == verbose, bar


def fake_from_pretrained(path, **options):
    """What transformers' GGUF loading prints, without the weights: its two bars."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as transformers_logging

    assert options["gguf_file"]
    list(gguf_utils.tqdm(range(3), desc=MODEL_BARS[0]))  # plain tqdm.auto, no library switch
    list(transformers_logging.tqdm(range(3), desc=MODEL_BARS[1]))
    return SimpleNamespace(config=SimpleNamespace(pad_token_id=0, quantization_config=None, _name_or_path=""))


needs_gguf = pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="needs hf_cads[offline-models]")


@needs_gguf
@pytest.mark.parametrize("verbose", [False, True])
def test_loading_a_gguf_model_shows_no_bars_unless_verbose(monkeypatch, capfd, package_logger, verbose):
    import transformers
    from transformers.utils import logging as transformers_logging

    from hf_cads import models

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_from_pretrained)
    monkeypatch.setattr(models, "load_tokenizer", lambda name: SimpleNamespace(pad_token_id=0))
    package_logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    capfd.readouterr()
    models.load_causal_lm(models.DEFAULT_CAUSAL_LM)
    err = capfd.readouterr().err
    for bar in MODEL_BARS:
        assert (bar in err) == verbose, bar
    # The switches are put back: later phases (training, evaluation) still show their bars.
    assert transformers_logging.is_progress_bar_enabled()
    assert not hasattr(sys.modules["transformers.modeling_gguf_pytorch_utils"].tqdm, "keywords")
    list(transformers_logging.tqdm(range(3), desc="training"))
    assert "training" in capfd.readouterr().err


@needs_gguf
@pytest.mark.slow
def test_loading_the_default_model_shows_no_bars(capfd):
    from hf_cads.models import DEFAULT_CAUSAL_LM, load_causal_lm

    capfd.readouterr()
    load_causal_lm(DEFAULT_CAUSAL_LM)
    err = capfd.readouterr().err
    assert not [bar for bar in MODEL_BARS if bar in err], err[-2000:]


@pytest.fixture
def fresh_kernel_filters():
    """The kernel-warning filters as a new process has them, restored afterwards."""
    loggers = [logging.getLogger(name) for name, _ in _quiet.KERNEL_WARNINGS]
    saved = [list(logger.filters) for logger in loggers]
    for logger in loggers:
        logger.filters = [f for f in logger.filters if not isinstance(f, _quiet._HoldKernelWarnings)]
    _quiet.hold_kernel_warnings()
    yield loggers[0]
    for logger, filters in zip(loggers, saved):
        logger.filters = filters


def test_the_kernel_warning_is_held_until_4bit_is_asked_for(fresh_kernel_filters, caplog):
    from hf_cads.models import check_bitsandbytes

    message = "Failed to load CPU gemm_4bit_forward from kernels-community: %s."
    with caplog.at_level(logging.WARNING):
        fresh_kernel_filters.warning(message, "not in the local cache")
        fresh_kernel_filters.warning("another bitsandbytes warning")
    assert "gemm_4bit_forward" not in caplog.text and "another bitsandbytes warning" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        try:
            check_bitsandbytes()  # load_in_4bit: the held warning is news now
        except ImportError:
            pass  # bitsandbytes missing or too old: the warning is printed all the same
        fresh_kernel_filters.warning(message, "again")
    assert caplog.text.count("gemm_4bit_forward") == 2


def test_import_hf_cads_holds_the_kernel_warnings_it_knows():
    for name, prefix in _quiet.KERNEL_WARNINGS:
        assert any(isinstance(f, _quiet._HoldKernelWarnings) for f in logging.getLogger(name).filters), name
        # The held message is the one the installed library logs (a reworded one would slip through).
        spec = importlib.util.find_spec(name.split(".")[0]) and importlib.util.find_spec(name)  # installed?
        if spec is not None and spec.origin:
            source = open(spec.origin, encoding="utf-8").read()
            assert prefix.split("'")[0] in source, name  # the kernels one is an f-string


def test_the_command_line_hides_the_two_warnings_peft_prints_on_every_lora_run(package_logger, capsys):
    import warnings

    from hf_cads.cli import main

    upstream = (
        ("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning),
        (
            "Could not find a config file in google/gemma-3-270m - will assume that the vocabulary was not modified.",
            UserWarning,
        ),
    )
    for argv, shown in ((["selectors", "--verbose"], 3), (["selectors"], 1)):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            assert main(argv) == 0
            for message, category in (*upstream, ("a config the user must fix", UserWarning)):
                warnings.warn(message, category, stacklevel=1)
        assert len(seen) == shown and str(seen[-1].message) == "a config the user must fix"
    capsys.readouterr()
