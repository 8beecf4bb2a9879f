"""The easy case on a real LM: for a GSM8K target, does CADS prefer the pool's gsm8k source?

SmolLM2-135M-Instruct + LoRA, pool = the shared 4-source mix (``--per-source`` rows each), target =
GSM8K test questions (the first 32 are CADS's validation set). For each seed, budget ``C`` (in training
steps of 8 rows) and variant (granularity x policy_reward x penalty x lookahead), runs the CADS selector
and records CADS-S's learned mixture, or CADS-E's mean keep-probability of gsm8k rows vs the other rows.

Resumable: one JSON line per finished run is appended to ``benchmarks/results/cads_lm_easy.jsonl``
and finished runs are skipped; ``--report`` only rewrites ``cads_lm_easy.md`` from that file.

    nice python benchmarks/cads_lm_easy.py --variants s-val-fo e-val-fo --seeds 0 1 2 --budgets 30 90
"""

from __future__ import annotations

import json
import time

import numpy as np
from _common import RESULTS, make_parser, write_markdown

LOG = RESULTS / "cads_lm_easy.jsonl"

# name -> (granularity, policy_reward, penalty, lookahead)
VARIANTS = {
    "s-val-fo": ("source", "validation", "one_sided", "first_order"),
    "s-tr-fo": ("source", "transfer", "one_sided", "first_order"),
    "e-tr-fo": ("example", "transfer", "one_sided", "first_order"),
    "s-obj-fo": ("source", "objective", "one_sided", "first_order"),
    "s-val-sq-fo": ("source", "validation", "squared", "first_order"),
    "s-obj-sq-fo": ("source", "objective", "squared", "first_order"),
    "s-val-exact": ("source", "validation", "one_sided", "exact"),
    "s-obj-exact": ("source", "objective", "one_sided", "exact"),
    "e-val-fo": ("example", "validation", "one_sided", "first_order"),
    "e-obj-fo": ("example", "objective", "one_sided", "first_order"),
}


def finished() -> set[tuple]:
    if not LOG.exists():
        return set()
    return {
        (r["variant"], r["seed"], r["budget_steps"], r.get("outer_steps"))
        for r in map(json.loads, LOG.read_text().splitlines())
        if r
    }


def options_for(variant: str, budget: float, seed: int, outer_steps: int, lr_s: float) -> dict:
    granularity, reward, penalty, lookahead = VARIANTS[variant]
    return dict(
        granularity=granularity,
        policy_reward=reward,
        penalty=penalty,
        lookahead=lookahead,
        train_budget=budget,
        seed=seed,
        batch_size=8,
        block_size=8,
        target_batch_size=8,
        max_length=64,
        baseline="step",
        warmup_fraction=0.1,
        samples_per_step=32 if lookahead == "first_order" else 4,
        outer_steps=outer_steps,
        lr_s=lr_s,
        A=40,
        sigma_end=0.1,
        learning_rate=1e-3,
        show_progress=False,
    )


def run(args) -> None:
    import torch
    from cads_lm_common import load_setting

    from hf_cads import get_selector

    torch.set_num_threads(1)
    setting = load_setting("gsm8k", per_source=args.per_source, max_length=64)
    sources = np.asarray(setting.pool["source"])
    pool_share = float(np.mean(sources == "gsm8k"))
    done = finished()
    for budget_steps in args.budgets:
        for seed in args.seeds:
            for variant in args.variants:
                if (variant, seed, budget_steps, args.outer_steps) in done:
                    continue
                started = time.time()
                options = options_for(variant, setting.budget(budget_steps), seed, args.outer_steps, args.lr_s)
                selector = get_selector("cads", model=setting.model, tokenizer=setting.tokenizer, **options)
                result = selector.select(setting.pool, target=setting.validation)
                extras = result.extras
                record = {
                    "variant": variant,
                    "seed": seed,
                    "budget_steps": budget_steps,
                    "outer_steps": args.outer_steps,
                    "budget_flops": setting.budget(budget_steps),
                    "options": {k: v for k, v in options.items() if k != "train_budget"},
                    "pool_share_gsm8k": pool_share,
                    "overhead_multiple_of_budget": extras["overhead_multiple_of_budget"],
                    "loss_predictor_loo_mse": extras["loss_predictor_loo_mse"],
                    "seconds": time.time() - started,
                    "pilot_losses": extras["loss_predictor"]["losses"],
                }
                if extras["granularity"] == "source":
                    record["mixture"] = extras["mixture"]
                    record["gsm8k_share"] = extras["mixture"]["gsm8k"]
                    record["mixture_history"] = [h["mixture"] for h in extras["history"]]
                else:
                    probs = np.asarray(extras["probabilities"])
                    record["keep_probability"] = {s: float(probs[sources == s].mean()) for s in setting.sources}
                    record["gsm8k_minus_others"] = float(
                        probs[sources == "gsm8k"].mean() - probs[sources != "gsm8k"].mean()
                    )
                    record["selected_gsm8k_share"] = float(np.mean(sources[result.indices] == "gsm8k"))
                record["val_loss_first_last"] = [extras["history"][0]["val_loss"], extras["history"][-1]["val_loss"]]
                with LOG.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")
                summary = record.get("mixture") or record.get("keep_probability")
                print(
                    f"{variant} seed {seed} C={budget_steps}: "
                    + ", ".join(f"{k} {v:.3f}" for k, v in summary.items())
                    + f" | overhead {record['overhead_multiple_of_budget']:.2f} x C [{record['seconds']:.0f}s]",
                    flush=True,
                )
    report()


def report() -> None:
    if not LOG.exists():
        return
    records = [json.loads(line) for line in LOG.read_text().splitlines() if line.strip()]
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["variant"], r["budget_steps"], r["outer_steps"]), []).append(r)
    lines = [
        "CADS on SmolLM2-135M + LoRA, GSM8K target, shared 4-source pool (gsm8k's pool share "
        f"{records[0]['pool_share_gsm8k']:.3f}). CADS-S: learned gsm8k share per seed; CADS-E: mean keep-probability "
        "of gsm8k rows minus the other rows per seed.",
        "",
        "| variant (granularity-reward-[penalty]-lookahead) | C (steps of 8 rows) | outer steps | per seed | mean | "
        "overhead x C |",
        "|---|---|---|---|---|---|",
    ]
    for (variant, budget, outer), rs in sorted(groups.items()):
        key = "gsm8k_share" if "gsm8k_share" in rs[0] else "gsm8k_minus_others"
        values = [r[key] for r in sorted(rs, key=lambda r: r["seed"])]
        lines.append(
            f"| {variant} | {budget} | {outer} | "
            + " / ".join(f"{v:.3f}" for v in values)
            + f" | {np.mean(values):.3f} | "
            f"{np.mean([r['overhead_multiple_of_budget'] for r in rs]):.2f} |"
        )
    write_markdown("cads_lm_easy", lines)
    print("\n".join(lines))


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--variants", nargs="+", default=["s-tr-fo", "e-tr-fo"], choices=sorted(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budgets", type=int, nargs="+", default=[30, 90], help="C in training steps of 8 rows")
    parser.add_argument("--outer-steps", type=int, default=10)
    parser.add_argument("--lr-s", type=float, default=1.0)
    parser.add_argument("--per-source", type=int, default=60)
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    if args.report:
        report()
    else:
        run(args)


if __name__ == "__main__":
    main()
