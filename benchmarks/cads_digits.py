"""Image classification at small budgets: CADS-E vs random vs full data at equal training FLOPs.

Data ships offline: ``sklearn.datasets.load_digits`` (1797 8x8 images). The pool (1200 images) has
label noise on one part: ``--noise`` of its rows get a wrong random label (``source`` = ``noisy``, the
rest ``clean``; CADS-E does not see this column). The target set (150 clean images) is CADS's validation
set; accuracy is measured on the other 447 clean images.

For every training budget ``C`` (FLOPs, expressed as passes over the pool) and seed, a fresh MLP is
trained for exactly ``C`` FLOPs on:

- ``full``: the whole pool;
- ``random``: a random subset of the size CADS-E chose;
- ``cads-e``: the subset ``get_selector("cads-e", backend=TensorBackend(...))`` selected for ``C``.

CADS-E's own FLOPs (pilots + outer loop) are reported separately as a multiple of ``C``.
Writes ``benchmarks/results/cads_digits.{png,json,md}``.

    nice python benchmarks/cads_digits.py            # ~10 min on one CPU core
    nice python benchmarks/cads_digits.py --quick
"""

from __future__ import annotations

import time

import numpy as np
from _common import RESULTS, make_parser, write_json, write_markdown
from cads_common import train_and_evaluate


def make_data(noise: float, seed: int = 0):
    from datasets import Dataset
    from sklearn.datasets import load_digits

    digits = load_digits()
    features = (digits.data / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    pool_idx, val_idx, test_idx = order[:1200], order[1200:1350], order[1350:]
    pool_labels = labels[pool_idx].copy()
    noisy = rng.random(len(pool_idx)) < noise
    pool_labels[noisy] = (pool_labels[noisy] + rng.integers(1, 10, noisy.sum())) % 10  # always a wrong label
    pool = Dataset.from_dict(
        {
            "x": features[pool_idx].tolist(),
            "y": pool_labels.tolist(),
            "source": np.where(noisy, "noisy", "clean").tolist(),
        }
    )
    validation = Dataset.from_dict({"x": features[val_idx].tolist(), "y": labels[val_idx].tolist()})
    test = Dataset.from_dict({"x": features[test_idx].tolist(), "y": labels[test_idx].tolist()})
    return pool, validation, test


def mlp():
    import torch

    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--passes", type=float, nargs="*", default=[0.5, 2.0, 8.0, 32.0], help="budgets, in passes over the pool"
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--outer-steps", type=int, default=1000)
    parser.add_argument(
        "--gamma",
        type=float,
        default=None,
        help="size the outer loop by gamma (the paper's 2*gamma*C) instead of --outer-steps",
    )
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--penalty", default="one_sided", choices=["squared", "one_sided"])
    parser.add_argument("--policy-reward", default="objective", choices=["objective", "validation"])
    parser.add_argument("--lr-s", type=float, default=0.5)
    parser.add_argument("--tag", default="cads_digits")
    args = parser.parse_args()
    import datasets
    import torch

    from hf_cads import get_selector
    from hf_cads.selectors.cads.backends import TensorBackend, linear_stack_profile

    torch.set_num_threads(1)
    datasets.disable_progress_bars()
    passes_list = [2.0] if args.quick else args.passes
    seeds = list(range(1 if args.quick else args.seeds))
    lr, batch_size = 3e-3, 32
    pool, validation, test = make_data(args.noise)
    noisy = np.asarray(pool["source"]) == "noisy"
    row_flops = linear_stack_profile(mlp()).train_step_flops(1, 1)
    records = []
    started = time.time()
    for passes in passes_list:
        budget = passes * len(pool) * row_flops
        runs: dict[str, list[dict]] = {"full": [], "random": [], "cads-e": []}
        chosen_sizes, noisy_share, overheads, loo = [], [], [], []
        for seed in seeds:
            selector = get_selector(
                "cads-e",
                backend=TensorBackend(mlp, loss="cross_entropy"),
                train_budget=budget,
                seed=seed,
                batch_size=batch_size,
                learning_rate=lr,
                block_size=64,
                target_batch_size=150,
                outer_steps=None if args.gamma is not None else args.outer_steps,
                gamma=args.gamma or 0.1,
                alpha=args.alpha,
                penalty=args.penalty,
                policy_reward=args.policy_reward,
                lr_s=args.lr_s,
                A=10,
                show_progress=False,
            )
            result = selector.select(pool, target=validation)
            chosen = result.indices
            chosen_sizes.append(len(chosen))
            noisy_share.append(float(noisy[chosen].mean()))
            overheads.append(result.extras["overhead_multiple_of_budget"])
            loo.append(result.extras["loss_predictor_loo_mse"])
            random_rows = np.random.default_rng(seed).choice(len(pool), len(chosen), replace=False)
            for name, rows in (("full", np.arange(len(pool))), ("random", random_rows), ("cads-e", chosen)):
                runs[name].append(
                    train_and_evaluate(mlp, "cross_entropy", pool, test, rows, budget, seed, lr, batch_size)
                )
        record = {
            "passes": passes,
            "budget_flops": budget,
            "accuracy": {name: [r["test_accuracy"] for r in rs] for name, rs in runs.items()},
            "train_flops": {name: float(np.mean([r["train_flops"] for r in rs])) for name, rs in runs.items()},
            "cads_subset_size": chosen_sizes,
            "cads_noisy_share": noisy_share,
            "pool_noisy_share": float(noisy.mean()),
            "overhead_multiple_of_budget": float(np.mean(overheads)),
            "loss_predictor_loo_mse": float(np.mean(loo)),
        }
        records.append(record)
        accuracy = {name: np.mean(values) for name, values in record["accuracy"].items()}
        print(
            f"budget {passes:>5} passes ({budget:.3g} FLOPs): accuracy full {accuracy['full']:.3f} | random "
            f"{accuracy['random']:.3f} | CADS-E {accuracy['cads-e']:.3f} (kept {np.mean(chosen_sizes):.0f} rows, "
            "noisy share "
            f"{np.mean(noisy_share):.2f} vs pool {noisy.mean():.2f}) | overhead {np.mean(overheads):.2f} x C | LOO "
            "MSE "
            f"{np.mean(loo):.2e} [{time.time() - started:.0f}s]",
            flush=True,
        )
    write_outputs(records, args)


def write_outputs(records, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(parents=True, exist_ok=True)
    budgets = [r["budget_flops"] for r in records]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, marker in (("full", "s"), ("random", "^"), ("cads-e", "o")):
        means = [np.mean(r["accuracy"][name]) for r in records]
        spread = [np.std(r["accuracy"][name]) for r in records]
        left.errorbar(budgets, means, yerr=spread, marker=marker, capsize=3, label=name)
    left.set_xscale("log")
    left.set_xlabel("training budget C (FLOPs)")
    left.set_ylabel("test accuracy (mean, std over seeds)")
    left.set_title(f"digits, {args.noise:.0%} label noise in the pool")
    left.legend()
    right.plot(budgets, [np.mean(r["cads_noisy_share"]) for r in records], "o-", label="noisy share in CADS-E subset")
    right.axhline(records[0]["pool_noisy_share"], color="gray", ls="--", label="noisy share in pool")
    right.plot(
        budgets, [np.mean(r["cads_subset_size"]) / 1200 for r in records], "^-", label="CADS-E subset size / pool"
    )
    right.set_xscale("log")
    right.set_ylim(0, 1.05)
    right.set_xlabel("training budget C (FLOPs)")
    right.set_title("What CADS-E kept")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{args.tag}.png", dpi=120)
    write_json(args.tag, {"settings": vars(args), "records": records})
    lines = [
        "| budget (passes) | budget (FLOPs) | acc. full | acc. random | acc. CADS-E | CADS-E rows | noisy share "
        f"(pool {records[0]['pool_noisy_share']:.2f}) | CADS-E overhead (x C) | predictor LOO MSE |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        acc = {name: f"{np.mean(v):.3f} ± {np.std(v):.3f}" for name, v in r["accuracy"].items()}
        lines.append(
            f"| {r['passes']:g} | {r['budget_flops']:.3g} | {acc['full']} | {acc['random']} | {acc['cads-e']} | "
            f"{np.mean(r['cads_subset_size']):.0f} | {np.mean(r['cads_noisy_share']):.2f} | "
            f"{r['overhead_multiple_of_budget']:.2f} | "
            f"{r['loss_predictor_loo_mse']:.2e} |"
        )
    write_markdown(args.tag, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
