"""The run's evaluation (hf_cads.pipeline.finetune.evaluate_target): a short test set evaluates
quietly, one that runs for long shows its bars, ``--verbose`` shows them always."""

from __future__ import annotations

import logging

import pytest

from hf_cads import _quiet
from hf_cads.pipeline import evaluate_target
from hf_cads.pipeline.recipe import RunConfig
from hf_cads.trainer import BudgetedTrainingArguments

EVALUATION_BARS = ("target loss", "exact match")


@pytest.mark.parametrize(
    ("verbose", "bar_seconds", "bars_shown"),
    [(False, _quiet.LATE_BAR_SECONDS, False), (False, 0.0, True), (True, _quiet.LATE_BAR_SECONDS, True)],
    ids=["short-quiet", "long-shows-bars", "verbose"],
)
def test_evaluation_shows_its_bars_only_once_it_runs_long(
    tiny_lm, tokenizer, bbh_target, tmp_path, capfd, package_logger, monkeypatch, verbose, bar_seconds, bars_shown
):
    # bar_seconds=0 stands for a test set large enough to outlast the delay.
    monkeypatch.setattr(_quiet, "LATE_BAR_SECONDS", bar_seconds)
    package_logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    args = BudgetedTrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=4, max_length=64)
    capfd.readouterr()
    metrics, flops = evaluate_target(tiny_lm, tokenizer, bbh_target[1].select(range(12)), RunConfig(), args)
    err = capfd.readouterr().err
    assert set(metrics) == {"target_loss", "exact_match"} and flops > 0
    for bar in EVALUATION_BARS:
        assert (f"{bar}: 100%" in err) == bars_shown, (bar, err)
