"""Preemption: a budgeted run that gets SIGTERM finishes its step, saves a checkpoint with the ledger,
says where to resume and ends; resuming ends at the FLOPs and weights of an uninterrupted run."""

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
from transformers import TrainerCallback

from hf_cads.trainer.flop_budget import LEDGER_FILE

SCRIPT = Path(__file__).parents[1] / "scripts" / "preemptible_training.py"


def load_script():
    spec = importlib.util.spec_from_file_location("preemptible_training", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sigterm_saves_a_checkpoint_and_resuming_matches_an_uninterrupted_run(tmp_path):
    script = load_script()
    output_dir = tmp_path / "run"
    log = open(tmp_path / "stderr.txt", "w+")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, str(SCRIPT), "--output-dir", str(output_dir), "--result", str(tmp_path / "r.json")]
    process = subprocess.Popen(command + ["--pause", "0.5"], env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    deadline = time.time() + 180
    try:
        for line in process.stdout:
            assert time.time() < deadline, "the run did not reach step 2 within 180 s"
            if line.strip() == "STEP 2":
                process.send_signal(signal.SIGTERM)
                break
        else:
            pytest.fail(f"the run ended before step 2:\n{log.seek(0) or log.read()}")
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    log.seek(0)
    stderr = log.read()
    assert process.returncode == -signal.SIGTERM, stderr  # the signal ended it, after the checkpoint
    assert not (tmp_path / "r.json").exists()  # it did not run on to the end
    (checkpoint,) = output_dir.glob("checkpoint-*")
    assert (checkpoint / LEDGER_FILE).is_file() and (checkpoint / "trainer_state.json").is_file()
    stopped_at = int(checkpoint.name.split("-")[1])
    assert stopped_at in (2, 3)  # the step in which the signal came was finished, no later one begun
    assert f"Preempted at step {stopped_at}" in stderr and f"resume_from_checkpoint='{checkpoint}'" in stderr

    uninterrupted = script.build_trainer(str(tmp_path / "uninterrupted"))
    uninterrupted.train()
    resumed = script.build_trainer(str(output_dir))
    resumed.train(resume_from_checkpoint=True)

    assert resumed.state.global_step == uninterrupted.state.global_step > stopped_at
    ledger, expected = resumed.flop_ledger, uninterrupted.flop_ledger
    assert ledger.entries["train"] == pytest.approx(expected.entries["train"], rel=1e-12)
    assert ledger.training.tokens_trained == expected.training.tokens_trained
    assert ledger.spent <= ledger.budget and ledger.training.stopped_by_budget
    saved = json.loads((checkpoint / LEDGER_FILE).read_text())
    assert 0 < saved["entries"]["train"] < ledger.entries["train"]
    final, reference = resumed.model.state_dict(), uninterrupted.model.state_dict()
    for name, value in reference.items():
        torch.testing.assert_close(final[name], value, rtol=1e-5, atol=1e-5 * float(value.abs().max()))


class SignalAtStep(TrainerCallback):
    def __init__(self, step, number):
        self.step, self.number = step, number

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), self.number)


def test_sigint_saves_then_interrupts_and_handlers_are_restored(tmp_path):
    script = load_script()
    before = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    trainer = script.build_trainer(str(tmp_path / "run"))
    trainer.add_callback(SignalAtStep(2, signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert (tmp_path / "run" / "checkpoint-2" / LEDGER_FILE).is_file()
    assert {number: signal.getsignal(number) for number in before} == before

    finished = script.build_trainer(str(tmp_path / "plain"))
    finished.train()  # no signal: runs to the cap, handlers restored as well
    assert finished.flop_ledger.training.stopped_by_budget and not list((tmp_path / "plain").glob("checkpoint-*"))
    assert {number: signal.getsignal(number) for number in before} == before
