"""QLoRA vs LoRA on SmolLM2-135M-Instruct (CPU): memory, seconds per step, loss, FLOPs charged and
the share of the FLOP budget used.

Both runs: the offline model, BM25 selection (25%) from the same seeded shared-data pool for BBH
boolean_expressions, LoRA r8 on q/k/v/o, BudgetedTrainer under the same budget. QLoRA loads the
weights as nf4 (double quantisation, bf16 compute) through bitsandbytes' CPU backend. Each mode runs
in its own process so peak RSS is its own.

    python benchmarks/qlora_vs_lora.py [--budget 2e12] [--threads 1]

Writes benchmarks/results/qlora_vs_lora.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from _common import RESULTS, write_markdown

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL = "smollm2-135m-instruct"


def run_mode(mode: str, budget: float, seed: int) -> dict:
    from peft import LoraConfig, prepare_model_for_kbit_training

    from hf_cads import BudgetedTrainer, BudgetedTrainingArguments
    from hf_cads.data import build_multisource_pool, load_bbh_target
    from hf_cads.models import load_causal_lm
    from hf_cads.pipeline import RunConfig, model_load_options

    run = RunConfig(model_name_or_path=MODEL, attn_implementation="eager", load_in_4bit=mode == "qlora")
    started = time.time()
    model, tokenizer = load_causal_lm(MODEL, **model_load_options(run))
    load_seconds = time.time() - started
    footprint = model.get_memory_footprint()
    if mode == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    validation, _ = load_bbh_target("boolean_expressions")
    pool = build_multisource_pool("boolean_expressions", max_per_source=40, max_chars=800, seed=seed)
    with tempfile.TemporaryDirectory() as out:
        args = BudgetedTrainingArguments(
            output_dir=out,
            flop_budget=budget,
            selector="bm25",
            selection_fraction=0.25,
            max_length=192,
            per_device_train_batch_size=2,
            learning_rate=5e-4,
            lr_scheduler_type="constant",
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            seed=seed,
        )
        trainer = BudgetedTrainer(
            model=model,
            args=args,
            train_dataset=pool,
            processing_class=tokenizer,
            selection_target=validation,
            peft_config=LoraConfig(
                r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM"
            ),
        )
        started = time.time()
        output = trainer.train()
        seconds = time.time() - started
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    ledger = trainer.flop_ledger
    steps = trainer.state.global_step
    return {
        "mode": mode,
        "model_footprint_mb": round(footprint / 2**20, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "load_seconds": round(load_seconds, 1),
        "steps": steps,
        "seconds_per_step": round(seconds / max(steps, 1), 2),
        "first_loss": round(losses[0], 4) if losses else None,
        "last_loss": round(losses[-1], 4) if losses else None,
        "train_loss": round(float(output.training_loss), 4),
        "flops_selection": ledger.entries["selection"],
        "flops_train": ledger.entries["train"],
        "budget": budget,
        "budget_used": round(ledger.spent / budget, 4),
        "stopped_by_budget": bool(ledger.training.stopped_by_budget),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=2e12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--mode", choices=["lora", "qlora"], help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.mode:
        import torch

        torch.set_num_threads(options.threads)
        print(json.dumps(run_mode(options.mode, options.budget, options.seed)))
        return
    rows = []
    for mode in ("lora", "qlora"):
        command = [
            sys.executable,
            __file__,
            "--mode",
            mode,
            "--budget",
            str(options.budget),
            "--seed",
            str(options.seed),
            "--threads",
            str(options.threads),
        ]
        print(f"running {mode} ...", flush=True)
        done = subprocess.run(
            command,
            check=True,
            capture_output=True,
            text=True,
            env=dict(os.environ, OMP_NUM_THREADS=str(options.threads)),
        )
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "qlora_vs_lora.json").write_text(
        json.dumps({"model": MODEL, "threads": options.threads, "runs": rows}, indent=2)
    )
    keys = [
        "mode",
        "model_footprint_mb",
        "peak_rss_mb",
        "load_seconds",
        "steps",
        "seconds_per_step",
        "first_loss",
        "last_loss",
        "flops_train",
        "budget_used",
        "stopped_by_budget",
    ]
    lines = [
        f"# QLoRA vs LoRA, {MODEL}, CPU ({options.threads} thread(s), machine shared with other jobs: times are "
        "indicative)",
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "---|" * len(keys),
        *(
            "| "
            + " | ".join(
                f"{row[k]:.4g}" if isinstance(row[k], float) and k.startswith("flops") else str(row[k]) for k in keys
            )
            + " |"
            for row in rows
        ),
    ]
    write_markdown("qlora_vs_lora", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
