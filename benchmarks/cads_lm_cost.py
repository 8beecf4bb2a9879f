"""Cost of CADS's outer loop on SmolLM2-135M + LoRA: seconds and FLOPs per outer step, exact vs first-order.

The issue-20 case: pool = the shared 4-source mix (60 rows per source), target = GSM8K test questions,
``C`` = 60 training steps of 8 rows, ``block_size=8, target_batch_size=8, max_length=128``. Times
``--steps`` outer steps of each variant directly (after the pilot runs, which both share) and
computes each variant's planned overhead (pilots + outer loop, as charged) as a multiple of ``C``:

- ``exact`` (``lookahead="exact"``, 4 masks/step, the issue's ``outer_steps=40``);
- ``first_order`` (``lookahead="first_order"``, 16 masks/step, outer steps sized by ``gamma``: the
  paper's rule ``(5/A + 2 gamma) C``).

Writes ``benchmarks/results/cads_lm_cost.{json,md}``.

    nice python benchmarks/cads_lm_cost.py      # ~5 min on one busy CPU core
"""

from __future__ import annotations

import json
import time

import numpy as np
from _common import RESULTS, make_parser, write_json, write_markdown


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--steps", type=int, default=2, help="outer steps timed per variant")
    parser.add_argument("--budget-steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch
    from cads_lm_common import load_setting

    from hf_cads import get_selector
    from hf_cads.selectors.cads.algorithm import AdamTheta, plan_cads
    from hf_cads.selectors.cads.loss_predictor import LossPredictor
    from hf_cads.selectors.cads.outer_loop import SourceMasks, step_masks

    torch.set_num_threads(args.threads)
    setting = load_setting("gsm8k", per_source=60, max_length=128)
    budget = setting.budget(args.budget_steps)
    common = dict(
        granularity="source",
        train_budget=budget,
        batch_size=8,
        block_size=8,
        target_batch_size=8,
        max_length=128,
        learning_rate=1e-3,
        show_progress=False,
        seed=0,
    )
    variants = {
        "exact": dict(common, lookahead="exact", samples_per_step=4, outer_steps=40),
        "first_order": dict(common, lookahead="first_order", samples_per_step=16),
    }
    rows = []
    for name, options in variants.items():
        selector = get_selector("cads-s", model=setting.model, tokenizer=setting.tokenizer, **options)
        task = selector._task(setting.pool, setting.validation)
        codes, names = selector._source_codes(setting.pool)
        plan = plan_cads(task, selector.config, len(names))
        # A flat stand-in predictor: the timing does not depend on its values.
        predictor = LossPredictor.fit([10, 100], [1.0, 1.0])
        masks = SourceMasks(codes, len(names), selector.config)
        theta = AdamTheta(task.parameters(), selector.config.learning_rate)
        rng = np.random.default_rng(0)
        seconds, flops = [], []
        for step in range(args.steps):
            masks.start_step(rng, step, 0.3)
            val_rows = rng.choice(task.num_target_rows, 8, replace=False)
            started = time.perf_counter()
            scored = step_masks(task, masks, theta, predictor, val_rows, selector.config, rng)
            theta.step(scored.mean_grads)
            seconds.append(time.perf_counter() - started)
            flops.append(scored.flops)
        row = {
            "variant": name,
            "samples_per_step": options["samples_per_step"],
            "outer_steps": plan.outer_steps,
            "seconds_per_outer_step": float(np.mean(seconds)),
            "seconds_each": seconds,
            "flops_per_outer_step": float(np.mean(flops)),
            "estimated_flops_per_outer_step": plan.outer_step_flops,
            "pilot_flops": plan.pilot_flops,
            "outer_flops": plan.outer_flops,
            "overhead_multiple_of_C": plan.estimated_flops / budget,
            "paper_rule_multiple_of_C": plan.paper_overhead_flops / budget,
            "outer_loop_seconds": float(np.mean(seconds)) * plan.outer_steps,
        }
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "seconds_each"}), flush=True)
        del task, selector
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "settings": vars(args),
        "budget_flops": budget,
        "train_step_flops": setting.step_flops,
        "pool_size": len(setting.pool),
        "rows": rows,
    }
    write_json("cads_lm_cost", payload)
    lines = [
        f"CADS-S outer loop on SmolLM2-135M + LoRA, GSM8K target, pool {len(setting.pool)} rows, C = "
        f"{args.budget_steps} steps "
        f"of 8 rows = {budget:.3g} FLOPs, torch threads {args.threads} (shared 2-core CPU).",
        "",
        "| lookahead | masks/step | s / outer step | FLOPs / outer step (charged / estimated) | outer steps | outer "
        "loop (s) | overhead x C (pilots + outer) | paper rule x C |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['samples_per_step']} | {r['seconds_per_outer_step']:.1f} | "
            f"{r['flops_per_outer_step']:.3g} / "
            f"{r['estimated_flops_per_outer_step']:.3g} | {r['outer_steps']} | {r['outer_loop_seconds']:.0f} | "
            f"{r['overhead_multiple_of_C']:.2f} | {r['paper_rule_multiple_of_C']:.2f} |"
        )
    write_markdown("cads_lm_cost", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
