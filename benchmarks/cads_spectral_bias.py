"""Spectral-bias study: does CADS-S's learned mixture move toward high-frequency data as the budget grows?

A 1-D regression pool with two sources on the same inputs ``x ~ U[-1, 1]``:

- ``low``:  labels ``sin(pi x)`` (the low-frequency part only),
- ``high``: labels ``sin(pi x) + amp * sin(k pi x)`` (the full target, with its high-frequency part).

The target (validation and test) is the full function. Networks learn low frequencies first (spectral
bias), so under a small budget the high-frequency part cannot be learned and only adds label variance,
while a large budget can learn it and needs the ``high`` source. For each budget the script

1. measures the ground truth: trains the MLP on fixed mixtures (share of ``high`` in 0, .25, ..., 1) for
   the budget and records the test loss (3 seeds), and
2. runs CADS-S (``get_selector("cads-s", backend=TensorBackend(...))``) and records its learned share of
   ``high`` (3 seeds), then trains on the subset it selects and on a uniform subset at the same FLOPs.
   Each ``--variants`` entry is a ``penalty/policy_reward`` setting: ``one_sided/validation`` scores
   masks by the validation loss after theta's step on them, the ``*/objective`` ones by the whole
   penalised objective (the default), which also rewards masks for their own training-loss level.

Writes ``benchmarks/results/cads_spectral_bias.{png,json,md}``.

    nice python benchmarks/cads_spectral_bias.py            # ~15 min on one CPU core
    nice python benchmarks/cads_spectral_bias.py --quick    # 2 budgets, 1 seed
"""

from __future__ import annotations

import json
import time

import numpy as np
from _common import RESULTS, make_parser, write_markdown
from cads_common import train_and_evaluate

# penalty / policy_reward pairs; see CADSSelectorConfig.
VARIANTS = {
    "one_sided/validation": {"penalty": "one_sided", "policy_reward": "validation"},
    "one_sided/objective": {"penalty": "one_sided", "policy_reward": "objective"},
    "squared/objective": {"penalty": "squared", "policy_reward": "objective"},
}


def make_data(rows_per_source: int, frequency: float, amplitude: float, seed: int = 0):
    from datasets import Dataset

    rng = np.random.default_rng(seed)

    def low(x):
        return np.sin(np.pi * x)

    def full(x):
        return low(x) + amplitude * np.sin(frequency * np.pi * x)

    x_low, x_high = rng.uniform(-1, 1, rows_per_source), rng.uniform(-1, 1, rows_per_source)
    pool = Dataset.from_dict(
        {
            "x": np.concatenate([x_low, x_high]).tolist(),
            "y": np.concatenate([low(x_low), full(x_high)]).tolist(),
            "source": ["low"] * rows_per_source + ["high"] * rows_per_source,
        }
    )
    x_val, x_test = rng.uniform(-1, 1, 400), np.linspace(-1, 1, 2000)
    validation = Dataset.from_dict({"x": x_val.tolist(), "y": full(x_val).tolist()})
    test = Dataset.from_dict({"x": x_test.tolist(), "y": full(x_test).tolist()})
    return pool, validation, test


def mlp():
    import torch

    return torch.nn.Sequential(
        torch.nn.Linear(1, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)
    )


def train_and_test(pool, test, rows, budget, seed, lr, batch_size):
    """Test MSE of a fresh MLP (seeded) trained on ``rows`` of the pool for ``budget`` FLOPs."""
    return train_and_evaluate(mlp, "mse", pool, test, rows, budget, seed, lr, batch_size)["test_loss"]


def mixture_rows(pool, share_high, seed):
    """All ``len(pool) / 2`` rows of a subset with ``share_high`` of them from the high source."""
    rng = np.random.default_rng(seed)
    sources = np.asarray(pool["source"])
    high, low = np.flatnonzero(sources == "high"), np.flatnonzero(sources == "low")
    total = len(high)
    n_high = int(round(share_high * total))
    return np.concatenate([rng.choice(high, n_high, replace=False), rng.choice(low, total - n_high, replace=False)])


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--steps", type=int, nargs="*", default=[30, 100, 300, 1000, 3000], help="budgets, in training steps"
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--frequency", type=float, default=8.0)
    parser.add_argument("--amplitude", type=float, default=1.0)
    parser.add_argument("--outer-steps", type=int, default=3000)
    parser.add_argument("--alpha", type=float, default=30.0)
    parser.add_argument("--lr-s", type=float, default=0.1)
    parser.add_argument(
        "--variants",
        nargs="*",
        default=list(VARIANTS),
        choices=list(VARIANTS),
        help="CADS-S settings to run, as penalty/policy_reward",
    )
    parser.add_argument("--tag", default="cads_spectral_bias")
    args = parser.parse_args()
    import datasets
    import torch

    from hf_cads import get_selector
    from hf_cads.selectors.cads.backends import TensorBackend, linear_stack_profile

    torch.set_num_threads(1)
    datasets.disable_progress_bars()
    steps_list = [30, 3000] if args.quick else args.steps
    seeds = list(range(1 if args.quick else args.seeds))
    lr, batch_size = 1e-2, 32
    pool, validation, test = make_data(400, args.frequency, args.amplitude)
    step_flops = linear_stack_profile(mlp()).train_step_flops(batch_size, 1)
    shares = [0.0, 0.25, 0.5, 0.75, 1.0]
    records = []
    started = time.time()
    for steps in steps_list:
        budget = steps * step_flops
        truth = {
            share: float(
                np.mean(
                    [
                        train_and_test(pool, test, mixture_rows(pool, share, s), budget, s, lr, batch_size)
                        for s in seeds
                    ]
                )
            )
            for share in shares
        }
        record = {
            "steps": steps,
            "budget_flops": budget,
            "truth_test_loss_by_share": truth,
            "best_share_high": min(truth, key=truth.get),
            "cads": {},
        }
        for variant in args.variants:
            learned, cads_loss, uniform_loss, overheads, loo = [], [], [], [], []
            for seed in seeds:
                selector = get_selector(
                    "cads-s",
                    backend=TensorBackend(mlp),
                    train_budget=budget,
                    seed=seed,
                    batch_size=batch_size,
                    learning_rate=lr,
                    block_size=64,
                    target_batch_size=128,
                    outer_steps=args.outer_steps,
                    alpha=args.alpha,
                    lr_s=args.lr_s,
                    A=10,
                    show_progress=False,
                    **VARIANTS[variant],
                )
                result = selector.select(pool, target=validation)
                learned.append(result.extras["mixture"]["high"])
                overheads.append(result.extras["overhead_multiple_of_budget"])
                loo.append(result.extras["loss_predictor_loo_mse"])
                cads_loss.append(train_and_test(pool, test, result.indices, budget, seed, lr, batch_size))
                uniform = np.random.default_rng(seed).choice(len(pool), len(result.indices), replace=False)
                uniform_loss.append(train_and_test(pool, test, uniform, budget, seed, lr, batch_size))
            record["cads"][variant] = {
                "share_high": learned,
                "share_high_mean": float(np.mean(learned)),
                "subset_test_loss": float(np.mean(cads_loss)),
                "uniform_subset_test_loss": float(np.mean(uniform_loss)),
                "overhead_multiple_of_budget": float(np.mean(overheads)),
                "loss_predictor_loo_mse": float(np.mean(loo)),
            }
            print(
                f"budget {steps:>5} steps ({budget:.3g} FLOPs): best share(high) {record['best_share_high']:.2f} | "
                "CADS-S "
                f"[{variant}] share(high) {np.mean(learned):.3f} +- {np.std(learned):.3f} | test loss CADS "
                f"{np.mean(cads_loss):.4f} "
                f"vs uniform {np.mean(uniform_loss):.4f} | overhead {np.mean(overheads):.1f} x C | LOO MSE "
                f"{np.mean(loo):.2e} "
                f"[{time.time() - started:.0f}s]",
                flush=True,
            )
        records.append(record)
    write_outputs(records, args, step_flops)


def write_outputs(records, args, step_flops) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(parents=True, exist_ok=True)
    budgets = [r["budget_flops"] for r in records]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for variant in args.variants:
        means = [r["cads"][variant]["share_high_mean"] for r in records]
        spread = [np.std(r["cads"][variant]["share_high"]) for r in records]
        penalty, reward = variant.split("/")
        label = f"CADS-S, {penalty} penalty, reward {reward}"
        left.errorbar(budgets, means, yerr=spread, marker="o", capsize=3, label=label)
    left.plot(
        budgets, [r["best_share_high"] for r in records], "s--", color="gray", label="best fixed share (ground truth)"
    )
    left.set_xscale("log")
    left.set_ylim(-0.05, 1.05)
    left.set_xlabel("training budget C (FLOPs)")
    left.set_ylabel("share of high-frequency source")
    left.set_title("Mixture vs budget")
    left.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    for record in records:
        shares = sorted(record["truth_test_loss_by_share"], key=float)
        right.plot(
            [float(s) for s in shares],
            [record["truth_test_loss_by_share"][s] for s in shares],
            marker="o",
            label=f"{record['steps']} steps",
        )
    right.set_xlabel("share of high-frequency source")
    right.set_ylabel("test MSE after budget-C training")
    right.set_yscale("log")
    right.set_title("Ground truth: test loss by fixed mixture")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{args.tag}.png", dpi=120, bbox_inches="tight")
    payload = {"settings": vars(args), "train_step_flops": step_flops, "records": records}
    (RESULTS / f"{args.tag}.json").write_text(json.dumps(payload, indent=2, default=str))
    lines = [
        "| budget (steps) | budget (FLOPs) | best fixed share(high) | CADS-S penalty / policy_reward | CADS-S "
        "share(high) | test MSE CADS-S subset | test MSE uniform subset | overhead (x C) | predictor LOO MSE |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        for variant, c in r["cads"].items():
            lines.append(
                f"| {r['steps']} | {r['budget_flops']:.3g} | {r['best_share_high']:.2f} | {variant} | "
                f"{c['share_high_mean']:.3f} "
                f"(± {np.std(c['share_high']):.3f}) | {c['subset_test_loss']:.4f} | "
                f"{c['uniform_subset_test_loss']:.4f} | "
                f"{c['overhead_multiple_of_budget']:.1f} | {c['loss_predictor_loo_mse']:.2e} |"
            )
    write_markdown(args.tag, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
