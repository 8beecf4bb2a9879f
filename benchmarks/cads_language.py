"""Language: CADS-S on the shared multi-source pool vs uniform mixing at equal total FLOPs.

Pool: GSM8K, Code Alpaca, Alpaca seeds and the BBH tasks other than the target (``--per-source`` rows
each, so the whole pool is a uniform mixture). Target: a BBH task; CADS's validation set is the first
16 of its examples and the target loss is measured on the next ``--test`` ones.

The model is a tiny Llama (``hf_cads.testing``: 2 layers, width 64, a BPE tokenizer trained on the pool)
trained from scratch, because the default SmolLM2-135M costs ~1e12 FLOPs per training step and the CADS
outer loop needs hundreds of them, too slow on a shared CPU. Everything runs through ``BudgetedTrainer``:

- ``cads-s``: ``selector="cads-s"`` with ``train_budget=C`` and ``flop_budget = C + CADS's estimated
  overhead``: the ledger charges the selection, the rest (~C) trains on the selected subset;
- ``uniform (equal total)``: no selection, the whole pool, ``flop_budget`` = what the CADS-S run spent;
- ``uniform (equal train)``: no selection, the whole pool, ``flop_budget = C``.

Writes ``benchmarks/results/cads_language.{png,json,md}``.

    nice python benchmarks/cads_language.py            # ~20 min on one CPU core
    nice python benchmarks/cads_language.py --quick
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
from _common import RESULTS, make_parser, write_json, write_markdown


def train(model_factory, tokenizer, pool, validation, flop_budget, seed, selector=None, selector_kwargs=None):
    """One BudgetedTrainer run; returns (trained model, ledger breakdown, selection result)."""
    from hf_cads import BudgetedTrainer, BudgetedTrainingArguments

    with tempfile.TemporaryDirectory() as output_dir:
        args = BudgetedTrainingArguments(
            output_dir=output_dir,
            flop_budget=flop_budget,
            selector=selector,
            selector_kwargs=selector_kwargs,
            per_device_train_batch_size=8,
            learning_rate=3e-3,
            max_length=128,
            lr_scheduler_type="constant",
            report_to="none",
            use_cpu=True,
            save_strategy="no",
            disable_tqdm=True,
            logging_steps=10_000,
            seed=seed,
        )
        trainer = BudgetedTrainer(
            model=model_factory(),
            args=args,
            train_dataset=pool,
            processing_class=tokenizer,
            selection_target=validation,
        )
        trainer.train()
        return trainer.model, trainer.flop_ledger.breakdown(), trainer.selection_result


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--target", default="boolean_expressions")
    parser.add_argument("--per-source", type=int, default=150)
    parser.add_argument("--test", type=int, default=64)
    parser.add_argument(
        "--steps", type=int, nargs="*", default=[100, 300, 1000], help="budgets C, in training steps of 8 rows"
    )
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--outer-steps", type=int, default=60)
    parser.add_argument("--lr-s", type=float, default=0.1)
    parser.add_argument("--tag", default="cads_language")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets
    import torch
    import transformers

    from hf_cads import get_selector
    from hf_cads.data import build_multisource_pool, load_bbh_examples
    from hf_cads.flops import FlopLedger, FlopProfile
    from hf_cads.pipeline import target_loss
    from hf_cads.testing import tiny_causal_lm, tiny_tokenizer
    from hf_cads.trainer import tokenize_for_causal_lm

    torch.set_num_threads(1)
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    steps_list = [100] if args.quick else args.steps
    seeds = list(range(1 if args.quick else args.seeds))
    pool = build_multisource_pool(args.target, max_per_source=args.per_source, max_chars=600, seed=0)
    examples = load_bbh_examples(args.target)
    validation, test = examples.select(range(16)), examples.select(range(16, 16 + args.test))
    tokenizer = tiny_tokenizer(list(pool["text"]) + list(examples["text"]), vocab_size=1000)
    sources = sorted(set(pool["source"]))

    def model_factory():
        return tiny_causal_lm(tokenizer, seed=0)

    # C is counted in steps of 8 rows of the pool's mean padded length.
    profile = FlopProfile.from_model(model_factory())
    lengths = [len(ids) for ids in tokenize_for_causal_lm(pool, tokenizer, 128)["input_ids"]]
    step_flops = profile.train_step_flops(8, int(np.percentile(lengths, 90)))
    cads_options = dict(
        granularity="source",
        batch_size=8,
        learning_rate=3e-3,
        max_length=128,
        lora_r=0,
        block_size=16,
        target_batch_size=8,
        outer_steps=args.outer_steps,
        lr_s=args.lr_s,
        A=10,
        show_progress=False,
    )
    test_texts = list(test["text"])
    records = []
    started = time.time()
    for steps in steps_list:
        budget = steps * step_flops
        per_seed = []
        for seed in seeds:
            options = dict(cads_options, train_budget=budget, seed=seed)
            overhead = get_selector("cads-s", model=model_factory(), tokenizer=tokenizer, **options).estimate_flops(
                pool, validation
            )
            model, ledger, selection = train(
                model_factory, tokenizer, pool, validation, budget + overhead, seed, "cads-s", options
            )
            cads = target_loss(model, tokenizer, test_texts, FlopLedger(), 16, 128)
            spent = ledger["total"]
            model, uniform_total_ledger, _ = train(model_factory, tokenizer, pool, validation, spent, seed)
            uniform_total = target_loss(model, tokenizer, test_texts, FlopLedger(), 16, 128)
            model, _, _ = train(model_factory, tokenizer, pool, validation, budget, seed)
            uniform_train = target_loss(model, tokenizer, test_texts, FlopLedger(), 16, 128)
            per_seed.append(
                {
                    "seed": seed,
                    "mixture": selection.extras["mixture"],
                    "selected_rows": len(selection),
                    "selection_flops": ledger["selection"],
                    "cads_train_flops": ledger["train"],
                    "cads_total_flops": spent,
                    "uniform_total_train_flops": uniform_total_ledger["train"],
                    "overhead_multiple_of_budget": selection.extras["overhead_multiple_of_budget"],
                    "loss_predictor_loo_mse": selection.extras["loss_predictor_loo_mse"],
                    "target_loss": {
                        "cads-s": cads,
                        "uniform (equal total)": uniform_total,
                        "uniform (equal train)": uniform_train,
                    },
                }
            )
            print(
                f"C={steps} steps ({budget:.3g} FLOPs) seed {seed}: mixture "
                + ", ".join(f"{s} {selection.extras['mixture'][s]:.2f}" for s in sources)
                + f" | target loss CADS-S {cads:.4f}, uniform equal-total {uniform_total:.4f}, uniform equal-train "
                f"{uniform_train:.4f} | overhead {selection.extras['overhead_multiple_of_budget']:.2f} x C "
                f"[{time.time() - started:.0f}s]",
                flush=True,
            )
        records.append(
            {
                "steps": steps,
                "budget_flops": budget,
                "runs": per_seed,
                "mixture_mean": {s: float(np.mean([r["mixture"][s] for r in per_seed])) for s in sources},
                "target_loss_mean": {
                    k: float(np.mean([r["target_loss"][k] for r in per_seed])) for k in per_seed[0]["target_loss"]
                },
                "overhead_multiple_of_budget": float(np.mean([r["overhead_multiple_of_budget"] for r in per_seed])),
                "loss_predictor_loo_mse": float(np.mean([r["loss_predictor_loo_mse"] for r in per_seed])),
            }
        )
    write_outputs(records, sources, args, step_flops, len(pool))


def write_outputs(records, sources, args, step_flops, pool_size) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(parents=True, exist_ok=True)
    budgets = [r["budget_flops"] for r in records]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    bottom = np.zeros(len(records))
    for source in sources:
        share = np.array([r["mixture_mean"][source] for r in records])
        left.bar([str(r["steps"]) for r in records], share, bottom=bottom, label=source)
        bottom += share
    left.axhline(0.25, color="k", lw=0.5, ls=":")
    left.set_xlabel("training budget C (steps of 8 rows)")
    left.set_ylabel("share in CADS-S mixture")
    left.set_title(f"CADS-S mixture for BBH {args.target}")
    left.legend(fontsize=8)
    for name, marker in (("cads-s", "o"), ("uniform (equal total)", "s"), ("uniform (equal train)", "^")):
        right.plot(budgets, [r["target_loss_mean"][name] for r in records], marker=marker, label=name)
    right.set_xscale("log")
    right.set_xlabel("training budget C (FLOPs)")
    right.set_ylabel("target test loss (mean over seeds)")
    right.set_title("Target loss")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{args.tag}.png", dpi=120)
    payload = {"settings": vars(args), "train_step_flops": step_flops, "pool_size": pool_size, "records": records}
    write_json(args.tag, payload)
    lines = [
        "| budget C (steps) | C (FLOPs) | CADS-S mixture ("
        + ", ".join(sources)
        + ") | target loss CADS-S | uniform, equal total FLOPs | uniform, equal train FLOPs | overhead (x C) | "
        "predictor LOO MSE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        mix = " / ".join(f"{r['mixture_mean'][s]:.2f}" for s in sources)
        loss = r["target_loss_mean"]
        lines.append(
            f"| {r['steps']} | {r['budget_flops']:.3g} | {mix} | {loss['cads-s']:.4f} | "
            f"{loss['uniform (equal total)']:.4f} | "
            f"{loss['uniform (equal train)']:.4f} | {r['overhead_multiple_of_budget']:.2f} | "
            f"{r['loss_predictor_loo_mse']:.2e} |"
        )
    write_markdown(args.tag, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
