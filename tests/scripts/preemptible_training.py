"""A small budgeted training run for tests/trainer/test_preemption.py, which sends it SIGTERM mid-run.

Run as a script it prints ``STEP <n>`` after every optimizer step (pausing ``--pause`` seconds there,
so the test can signal it in the middle of the run) and, when it finishes, saves the final weights
and the ledger to ``--result``. The test imports :func:`build_trainer` to run the same training in
its own process (uninterrupted, and resumed from the checkpoint the signalled process left).
"""

import argparse
import json
import sys
import time

import torch
from datasets import Dataset
from transformers import TrainerCallback

from hf_cads import BudgetedTrainer, BudgetedTrainingArguments
from hf_cads.flops import FlopProfile
from hf_cads.testing import tiny_causal_lm, tiny_llama_config, tiny_tokenizer

TEXTS = [
    "the cat sat on the mat and looked at the door",
    "a dog ran in the park after a red ball",
    "one two three four five six seven eight",
    "rain fell on the roof all night long",
    "she read the letter twice before she answered",
]
BATCH = 4
STEPS_IN_BUDGET = 9


class AnnounceSteps(TrainerCallback):
    """Prints every finished optimizer step and pauses, so a signal can land in the middle of the run."""

    def __init__(self, pause: float) -> None:
        self.pause = pause

    def on_step_end(self, args, state, control, **kwargs):
        print(f"STEP {state.global_step}", flush=True)
        time.sleep(self.pause)


def build_trainer(output_dir: str, pause: float = 0.0) -> BudgetedTrainer:
    tokenizer = tiny_tokenizer(TEXTS * 4, vocab_size=300)
    rows = Dataset.from_dict({"text": TEXTS * 8})
    longest = max(len(tokenizer(t)["input_ids"]) for t in TEXTS) + 1
    budget = STEPS_IN_BUDGET * FlopProfile.from_config(tiny_llama_config(len(tokenizer))).train_step_flops(
        BATCH, longest
    )
    args = BudgetedTrainingArguments(
        output_dir,
        flop_budget=budget,
        per_device_train_batch_size=BATCH,
        learning_rate=3e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        max_length=32,
        seed=0,
        disable_tqdm=True,
    )
    callbacks = [AnnounceSteps(pause)] if pause else None
    return BudgetedTrainer(
        model=tiny_causal_lm(tokenizer), args=args, train_dataset=rows, processing_class=tokenizer, callbacks=callbacks
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--pause", type=float, default=0.0)
    options = parser.parse_args()
    trainer = build_trainer(options.output_dir, options.pause)
    trainer.train()
    torch.save(trainer.model.state_dict(), options.result + ".pt")
    with open(options.result, "w") as handle:
        json.dump({"steps": trainer.state.global_step, "ledger": trainer.flop_ledger.to_dict()}, handle)
    print("DONE", flush=True)


if __name__ == "__main__":
    sys.exit(main())
