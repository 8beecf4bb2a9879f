"""Resuming: a killed scoring process resumes from its last finished shard, and a budgeted training
run resumed from a checkpoint ends with exactly the ledger of an uninterrupted run."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from peft import LoraConfig
from transformers import TrainerCallback

from hf_cads import BudgetedTrainer, BudgetedTrainingArguments
from hf_cads.cache import ScoreCache
from hf_cads.testing import assert_close_at_scale, tiny_causal_lm

SCRIPTS = Path(__file__).parents[1] / "scripts"


# -- scoring: kill a real process mid-run, rerun, compare -------------------------------------------
@pytest.fixture(scope="module")
def scoring_model_dir(tmp_path_factory, tokenizer):
    """A tiny Llama saved to disk, big enough that a shard of 8 rows takes a visible moment."""
    folder = tmp_path_factory.mktemp("scoring_model")
    tiny_causal_lm(tokenizer, hidden_size=128, intermediate_size=256, num_hidden_layers=4).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_scoring(model_dir, cache_dir, out=None):
    command = [
        sys.executable,
        str(SCRIPTS / "score_pool.py"),
        "--model",
        str(model_dir),
        "--cache-dir",
        str(cache_dir),
    ]
    if out is not None:
        command += ["--out", str(out)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_killed_scoring_resumes_from_its_last_shard(scoring_model_dir, tmp_path):
    cache = tmp_path / "cache"
    process = run_scoring(scoring_model_dir, cache)
    deadline = time.time() + 120
    try:
        while not list(cache.glob("*/shard-*.npz")):
            assert process.poll() is None, f"scoring exited before writing a shard:\n{process.stdout.read()}"
            assert time.time() < deadline, "no shard written within 120 s"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    (folder,) = cache.iterdir()
    manifest = ScoreCache(folder).manifest()
    done = ScoreCache(folder).stored_shards()
    assert not manifest["complete"] and 1 <= len(done) < len(manifest["shards"]), (len(done), len(manifest["shards"]))

    rerun = run_scoring(scoring_model_dir, cache, out=tmp_path / "resumed.json")
    assert rerun.wait() == 0, rerun.stdout.read()
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    fresh = load_script("score_pool").score(str(scoring_model_dir), str(tmp_path / "fresh_cache"))  # uninterrupted

    assert resumed["cache"]["resumed_shards"] == len(done) and fresh["cache"]["resumed_shards"] == 0
    assert resumed["indices"] == fresh["indices"]
    assert_close_at_scale(resumed["scores"], fresh["scores"], rel=1e-6, what="perplexity scores")
    # the shards scored before the kill are charged by the run that completes the selection
    assert resumed["flops"] == pytest.approx(fresh["flops"], rel=1e-12) and fresh["flops"] > 0
    assert ScoreCache(folder).is_complete()


# -- training: interrupt after a checkpoint, resume, compare with an uninterrupted run ----------------
class Crash(Exception):
    pass


class CrashAfterStep(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Crash(f"simulated crash after step {self.step}")


def budgeted_trainer(output_dir, cache_dir, small_pool, bbh_target, tokenizer, budget, callbacks=None, rng_draws=0):
    model = tiny_causal_lm(tokenizer)
    torch.rand(rng_draws)  # a fresh process has another global RNG state when it wraps the model in LoRA
    args = BudgetedTrainingArguments(
        output_dir=str(output_dir),
        flop_budget=budget,
        selector="perplexity",
        selection_fraction=0.5,
        selector_kwargs={"cache_dir": str(cache_dir), "show_progress": False, "max_length": 96},
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="steps",
        save_steps=3,
        report_to="none",
        use_cpu=True,
        max_length=96,
        seed=0,
        disable_tqdm=True,
    )
    return BudgetedTrainer(
        model=model,
        args=args,
        train_dataset=small_pool,
        processing_class=tokenizer,
        selection_target=bbh_target[0],
        callbacks=callbacks,
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )


def test_resumed_training_keeps_the_ledger_and_stops_at_the_same_cap(tmp_path, small_pool, bbh_target, tokenizer):
    budget = 4e10
    reference = budgeted_trainer(
        tmp_path / "reference", tmp_path / "cache_a", small_pool, bbh_target, tokenizer, budget
    )
    reference.train()
    steps = reference.state.global_step
    assert steps > 7 and reference.flop_ledger.training.stopped_by_budget

    crashed = budgeted_trainer(
        tmp_path / "run", tmp_path / "cache_b", small_pool, bbh_target, tokenizer, budget, [CrashAfterStep(7)]
    )
    with pytest.raises(Crash):
        crashed.train()
    checkpoint = tmp_path / "run" / "checkpoint-6"
    saved = json.loads((checkpoint / "flop_ledger.json").read_text())
    # the checkpoint holds the FLOPs of exactly the 6 steps it contains, not of step 7
    assert saved["entries"]["train"] < crashed.flop_ledger.entries["train"]

    # A fresh process would rebuild the trainer: its selection now comes from the cache (0 FLOPs).
    resumed = budgeted_trainer(
        tmp_path / "run", tmp_path / "cache_b", small_pool, bbh_target, tokenizer, budget, rng_draws=5
    )
    assert resumed.flop_ledger.entries["selection"] == 0 and resumed.selection_result.extras["cache"]["hit"]
    resumed.train(resume_from_checkpoint=str(checkpoint))

    ledger, expected = resumed.flop_ledger, reference.flop_ledger
    assert resumed.state.global_step == steps
    assert ledger.entries["selection"] == expected.entries["selection"] > 0  # restored, not 0 and not twice
    assert ledger.entries["train"] == pytest.approx(expected.entries["train"], rel=1e-12)
    assert ledger.spent <= budget and ledger.training.stopped_by_budget

    # same schedule and same data order as the uninterrupted run
    def per_step(trainer, key):
        return {e["step"]: e[key] for e in trainer.state.log_history if key in e and "train_runtime" not in e}

    assert per_step(resumed, "learning_rate") == pytest.approx(per_step(reference, "learning_rate"))
    later = {s: v for s, v in per_step(reference, "loss").items() if s > 6}
    assert {s: per_step(resumed, "loss")[s] for s in later} == pytest.approx(later, rel=1e-4)
    # the checkpoint written after resuming carries the full ledger again
    last = max((tmp_path / "run").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert json.loads((last / "flop_ledger.json").read_text())["entries"]["train"] <= ledger.entries["train"]


def test_resume_from_a_checkpoint_without_ledger_is_refused(tmp_path, small_pool, bbh_target, tokenizer):
    trainer = budgeted_trainer(tmp_path / "run", tmp_path / "cache", small_pool, bbh_target, tokenizer, 4e10)
    foreign = tmp_path / "foreign-checkpoint"
    foreign.mkdir()
    with pytest.raises(FileNotFoundError, match="not written by BudgetedTrainer"):
        trainer.train(resume_from_checkpoint=str(foreign))
