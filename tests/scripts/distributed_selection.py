"""Selection with every built-in selector, then a FLOP-budgeted training run, in as many processes
as the script was launched with (used by tests/test_distributed.py and tests/test_determinism.py).

    accelerate launch --multi_gpu --num_processes 2 tests/scripts/distributed_selection.py --model DIR --out DIR
    python tests/scripts/distributed_selection.py --model DIR --out DIR          # one process

On a machine without GPUs accelerate's multi-process launcher starts CPU processes that talk over
gloo. Every process writes ``<out>/rank-<rank>.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARD_SIZE = 16
K = 20
TRAIN_BUDGET = 3e10
LESS_OPTIONS = dict(
    projection_dim=256,
    max_length=64,
    warmup_fraction=0.2,
    warmup_epochs=1,
    learning_rate=1e-3,
    lora_r=4,
    lora_target_modules=("q_proj", "v_proj"),
)
CADS_OPTIONS = dict(train_budget=2e10, max_length=64, outer_steps=3, num_sampling_points=3)


def load_inputs(model_dir: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_cads.data import build_multisource_pool, load_bbh_target

    pool = build_multisource_pool("boolean_expressions", max_per_source=25, max_chars=600, seed=0)
    target = load_bbh_target("boolean_expressions")[0]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return (
        pool,
        target,
        tokenizer,
        lambda: AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager"),
    )


def selector_cases(seed: int = 0) -> dict[str, dict]:
    """Name -> (registry name, options, needs a causal LM object)."""
    return {
        "random": ("random", {"seed": seed}, False),
        "bm25": ("bm25", {"aggregate": "max"}, False),
        "embedding": ("embedding", {"max_length": 64}, False),
        "perplexity": ("perplexity", {"max_length": 128}, True),
        "less": ("less", dict(LESS_OPTIONS, seed=seed), True),
        "cads-e": ("cads-e", dict(CADS_OPTIONS, seed=seed), True),
    }


def run_selections(
    model_dir: str, names: list[str] | None = None, seed: int = 0, cache_dir: str | None = None
) -> dict[str, dict]:
    """Each selector's chosen indices, all scores and FLOPs (plus how the scoring was sharded)."""
    from hf_cads import get_selector

    pool, target, tokenizer, new_model = load_inputs(model_dir)
    out = {}
    for name, (registry_name, options, uses_lm) in selector_cases(seed).items():
        if names is not None and name not in names:
            continue
        objects = {"model": new_model(), "tokenizer": tokenizer} if uses_lm else {}
        selector = get_selector(
            registry_name, shard_size=SHARD_SIZE, show_progress=False, cache_dir=cache_dir, **options, **objects
        )
        size = {} if registry_name.startswith("cads") else {"k": K}
        warmups: list[int] = []
        if registry_name == "less":  # count this process's warmup runs (the main process alone should train)
            warmup = selector.warmup
            selector.warmup = lambda *a, _warmup=warmup, _calls=warmups, **kw: _calls.append(1) or _warmup(*a, **kw)
        result = selector.select(pool, target=target, **size)
        out[name] = {
            "warmup_runs": len(warmups),
            "indices": result.indices.tolist(),
            "scores": result.all_scores.tolist(),
            "flops": result.flops,
            "sharding": result.extras.get("sharding"),
            "cache": result.extras.get("cache"),
        }
    return out


def run_training(model_dir: str, output_dir: str) -> dict:
    """A LoRA finetune with BM25 selection under a FLOP cap; records this process's own step costs."""
    from peft import LoraConfig

    from hf_cads import BudgetedTrainer, BudgetedTrainingArguments

    pool, target, tokenizer, new_model = load_inputs(model_dir)

    class RecordingTrainer(BudgetedTrainer):
        local_costs: list[float] = []

        local_batches: list[str] = []

        def training_step(self, model, inputs, num_items_in_batch=None):
            self.local_costs.append(self._micro_batch_flops(inputs["input_ids"]))
            self.local_batches.append(hashlib.sha1(inputs["input_ids"].numpy().tobytes()).hexdigest())
            return super().training_step(model, inputs, num_items_in_batch)

    args = BudgetedTrainingArguments(
        output_dir=output_dir,
        flop_budget=TRAIN_BUDGET,
        selector="bm25",
        selection_fraction=0.5,
        selector_kwargs={"shard_size": SHARD_SIZE, "show_progress": False},
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        max_length=96,
        seed=0,
        disable_tqdm=True,
    )
    trainer = RecordingTrainer(
        model=new_model(),
        args=args,
        train_dataset=pool,
        processing_class=tokenizer,
        selection_target=target,
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    trainer.local_costs, trainer.local_batches = [], []
    trainer.train()
    return {
        "ledger": trainer.flop_ledger.breakdown(),
        "training": trainer.flop_ledger.training.to_dict(),
        "local_costs": trainer.local_costs,
        "local_batches": trainer.local_batches,
        "steps": trainer.state.global_step,
        "selected": trainer.selection_result.indices.tolist(),
    }


def failures() -> dict[str, str]:
    """What each process sees when one process fails: its own error, or a ProcessFailedError."""
    import numpy as np
    from datasets import Dataset

    from hf_cads.distributed import current_processes
    from hf_cads.selectors import ScoreOutput, Selector

    rank = current_processes().rank
    pool = Dataset.from_dict({"text": [f"row {i}" for i in range(8)]})

    class FailsOnMain(Selector):
        requires_target = False

        def score(self, pool, target):
            raise ValueError("broken scorer")

        def estimate_flops(self, pool, target):
            return 0.0

    class FailsOnLastRank(Selector):
        requires_target = False
        shardable = True

        def score_rows(self, pool, target, rows, prepared, progress=None):
            if rank == current_processes().world_size - 1:
                raise ValueError("broken shard")
            return ScoreOutput(np.zeros(len(rows)), 0.0)

        def estimate_flops(self, pool, target):
            return 0.0

    seen = {}
    for name, selector in (("main", FailsOnMain()), ("shard", FailsOnLastRank(shard_size=2))):
        try:
            selector.select(pool, k=1)
            seen[name] = "no error"
        except Exception as err:
            seen[name] = f"{type(err).__name__}: {err}"
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--selectors", default=None, help="comma-separated subset of the selector cases")
    parser.add_argument("--no-training", action="store_true")
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()

    from hf_cads.distributed import current_processes

    processes = current_processes()
    names = args.selectors.split(",") if args.selectors else None
    selections = run_selections(args.model, names, cache_dir=args.cache_dir)
    report = {
        "rank": processes.rank,
        "world_size": processes.world_size,
        "selections": selections,
        "failures": failures(),
    }
    if not args.no_training:
        report["training"] = run_training(args.model, str(Path(args.out) / "trainer"))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"rank-{processes.rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
