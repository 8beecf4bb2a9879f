"""The mixture landscape on a real LM: train on fixed source mixtures, and see where CADS-S's mixture ranks.

SmolLM2-135M-Instruct + LoRA (r=8, q/k/v/o), pool = the shared 4-source mix (60 rows per source, the
target task itself excluded), targets = GSM8K test questions and a BBH task. For each target, budget
``C`` (training steps of 8 rows, as in ``cads_lm_easy.py``) and seed:

- every fixed mixture of the grid (the 4 pure sources, uniform, and the target's own source paired 50/50
  with each other source) is trained for ``C`` with AdamW (lr 1e-3, the learning rate CADS trains
  ``theta`` with) and scored by its mean token loss on 64 held-out target test rows (never seen by CADS,
  which validates on the 32 rows before them): the ground truth;
- CADS-S (language-model defaults, 10 outer steps) learns a mixture at budget ``C`` from the same pool; that
  mixture is trained the same way. Its total cost is ``C`` plus its overhead (pilots + outer loop).
  GSM8K's CADS-S mixtures at ``C = 30`` are taken from ``cads_lm_easy.jsonl`` when present (same setting).

Resumable: one JSON line per finished run in ``benchmarks/results/cads_lm_grid.jsonl``; finished runs
are skipped. ``--report`` rewrites ``cads_lm_grid.md`` and ``cads_lm_grid.png`` from it.

    nice python benchmarks/cads_lm_grid.py --targets gsm8k --seeds 0 1 --budgets 20 40
    nice python benchmarks/cads_lm_grid.py --targets logical_deduction_three_objects --seeds 0 1 --budgets 20 40
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from _common import RESULTS, make_parser, write_markdown

LOG = RESULTS / "cads_lm_grid.jsonl"
EASY_LOG = RESULTS / "cads_lm_easy.jsonl"
LEARNING_RATE = 1e-3
BATCH_SIZE = 8
MAX_LENGTH = 64
CADS_OUTER_STEPS = 10


def target_source(target: str) -> str:
    return "gsm8k" if target == "gsm8k" else "bbh"


def grid_mixtures(sources: list[str], own: str) -> dict[str, dict[str, float]]:
    """The fixed mixtures: each pure source, uniform, and the target's own source 50/50 with each other."""
    mixtures = {f"pure {s}": {t: float(t == s) for t in sources} for s in sources}
    mixtures["uniform"] = {s: 1.0 / len(sources) for s in sources}
    for other in sources:
        if other != own:
            mixtures[f"{own}+{other}"] = {s: 0.5 if s in (own, other) else 0.0 for s in sources}
    return mixtures


def training_rows(
    pool_sources: np.ndarray, mixture: dict[str, float], count: int, rng: np.random.Generator
) -> np.ndarray:
    """``count`` pool rows in the mixture's proportions (``allocate_by_mixture``, uncapped: rows may repeat);
    a source smaller than its share is cycled through in a fresh random order each pass, so rows repeat
    as evenly as possible."""
    from hf_cads.selectors.cads.bilevel import allocate_by_mixture

    names = sorted(mixture)
    weights = np.array([max(mixture[n], 0.0) for n in names])
    counts = allocate_by_mixture(count, weights, np.full(len(names), count))
    rows = []
    for name, n in zip(names, counts):
        members = np.flatnonzero(pool_sources == name)
        passes = [rng.permutation(members) for _ in range(int(np.ceil(n / len(members))) if n else 0)]
        rows.append(np.concatenate(passes)[:n] if passes else np.array([], dtype=int))
    return np.concatenate(rows).astype(int)


def train_and_score(setting, mixture: dict[str, float], budget_steps: float, seed: int) -> dict:
    """Fresh LoRA adapters (seeded), AdamW on the mixture's rows until ``C`` FLOPs, then the test loss."""
    from hf_cads.selectors.cads.backends import CausalLMBackend
    from hf_cads.selectors.cads.outer_loop import train_for_budget

    config = SimpleNamespace(seed=seed, batch_size=BATCH_SIZE, max_length=MAX_LENGTH)
    task = CausalLMBackend(setting.model, setting.tokenizer).prepare(setting.pool, setting.test, config)
    rng = np.random.default_rng(seed)
    rows = training_rows(
        np.asarray(setting.pool["source"]), mixture, max(int(round(budget_steps * BATCH_SIZE)), BATCH_SIZE), rng
    )
    steps, flops = (0, 0.0)
    if budget_steps > 0:
        steps, flops = train_for_budget(task, rows, setting.budget(budget_steps), LEARNING_RATE, BATCH_SIZE, rng)
    test_loss, _, _ = task.loss(np.arange(len(setting.test)), "target", False)
    return {"train_steps": steps, "train_flops": flops, "test_loss": float(test_loss)}


def easy_case_mixture(seed: int, budget_steps: int) -> dict | None:
    """CADS-S's GSM8K mixture from the easy-case benchmark (same pool, model and options), if it ran."""
    for r in read_records(EASY_LOG):
        if (r["variant"], r["seed"], r["budget_steps"], r["outer_steps"]) == (
            "s-tr-fo",
            seed,
            budget_steps,
            CADS_OUTER_STEPS,
        ):
            return {
                "mixture": r["mixture"],
                "overhead_multiple_of_budget": r["overhead_multiple_of_budget"],
                "cads_seconds": r["seconds"],
                "from": "cads_lm_easy.jsonl",
            }
    return None


def learn_cads_mixture(setting, budget_steps: int, seed: int) -> dict:
    from cads_lm_easy import options_for

    from hf_cads import get_selector

    started = time.time()
    options = options_for("s-tr-fo", setting.budget(budget_steps), seed, CADS_OUTER_STEPS, 1.0)
    result = get_selector("cads", model=setting.model, tokenizer=setting.tokenizer, **options).select(
        setting.pool, target=setting.validation
    )
    return {
        "mixture": result.extras["mixture"],
        "overhead_multiple_of_budget": result.extras["overhead_multiple_of_budget"],
        "cads_seconds": time.time() - started,
        "from": "this run",
    }


def read_records(path: Path = LOG) -> list[dict]:
    """One dict per non-blank line of a JSON-lines results log (none if it does not exist yet)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def finished() -> set[tuple]:
    return {(r["target"], r["budget_steps"], r["seed"], r["mixture_name"]) for r in read_records()}


def jobs(seeds: list[int], budgets: list[int], mixtures: dict[str, dict[str, float]]) -> list[tuple[int, int, str]]:
    """Most telling evidence first (a stop keeps what finished): the untrained model; CADS-S, the pure
    sources and uniform for the first seed at every budget, then for the other seeds at the smallest
    budget; uniform and the grid's best at CADS-S's total FLOPs (overhead included) at the smallest
    budget; the other seeds at the larger budgets; the rest of the equal-total runs; then the pairs."""
    core = ["CADS-S", *(name for name in mixtures if name.startswith("pure") or name == "uniform")]
    pairs = [name for name in mixtures if name not in core]
    first, rest = seeds[:1], seeds[1:]
    smallest, larger = budgets[:1], budgets[1:]
    order = [(0, 0, "untrained")]
    order += [(seed, c, name) for seed in first for c in budgets for name in core]
    order += [(seed, c, name) for seed in rest for c in smallest for name in core]
    order += [(seed, c, name) for c in smallest for seed in seeds for name in EQUAL_TOTAL]
    order += [(seed, c, name) for seed in rest for c in larger for name in core]
    order += [(seed, c, name) for c in larger for seed in seeds for name in EQUAL_TOTAL]
    order += [(seed, c, name) for seed in seeds for c in budgets for name in pairs]
    return order


EQUAL_TOTAL = ("uniform, CADS-S's total FLOPs", "grid's best, CADS-S's total FLOPs")


def equal_total_run(target: str, budget_steps: int, seed: int, name: str) -> tuple[dict[str, float], float] | None:
    """The mixture and training steps of an equal-total-FLOPs run: uniform, or the mixture with the lowest
    mean test loss at ``budget_steps`` so far, trained for CADS-S's C plus overhead (this seed's CADS-S run)."""
    records = read_records()
    cads = [
        r
        for r in records
        if (r["target"], r["budget_steps"], r["seed"], r["mixture_name"]) == (target, budget_steps, seed, "CADS-S")
    ]
    if not cads:
        return None
    total_steps = cads[0]["total_flops"] / cads[0]["step_flops"]
    grid = {
        n: m
        for (t, b, n), m in _mean_losses(records).items()
        if t == target and b == budget_steps and n not in ("CADS-S", *EQUAL_TOTAL)
    }
    chosen = "uniform" if name == EQUAL_TOTAL[0] else min(grid, key=lambda n: grid[n]["mean"], default=None)
    mixture = grid[chosen]["records"][0]["mixture"] if chosen in grid else None
    return (mixture, total_steps) if mixture else None


def run(args) -> None:
    import torch
    from cads_lm_common import load_setting

    torch.set_num_threads(1)
    for target in args.targets:
        setting = load_setting(target, per_source=60, max_length=MAX_LENGTH)
        own = target_source(target)
        mixtures = grid_mixtures(setting.sources, own)
        done = finished()
        for seed, budget_steps, name in jobs(args.seeds, args.budgets, mixtures):
            if (target, budget_steps, seed, name) in done:
                continue
            started = time.time()
            record = {
                "target": target,
                "budget_steps": budget_steps,
                "seed": seed,
                "mixture_name": name,
                "step_flops": setting.step_flops,
                "pool_rows": len(setting.pool),
                "test_rows": len(setting.test),
            }
            train_steps = budget_steps
            if name == "CADS-S":
                cads = (easy_case_mixture(seed, budget_steps) if target == "gsm8k" else None) or learn_cads_mixture(
                    setting, budget_steps, seed
                )
                record.update(cads)
                mixture = cads["mixture"]
            elif name in EQUAL_TOTAL:
                planned = equal_total_run(target, budget_steps, seed, name)
                if planned is None:
                    continue
                mixture, train_steps = planned
                record["equal_total_of"] = "CADS-S"
            else:
                mixture = mixtures.get(name, {s: 1.0 for s in setting.sources})
            record["mixture"] = mixture
            record.update(train_and_score(setting, mixture, train_steps, seed))
            overhead = record.get("overhead_multiple_of_budget", 0.0) * setting.budget(budget_steps)
            record["total_flops"] = record["train_flops"] + overhead
            record["seconds"] = time.time() - started
            with LOG.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            print(
                f"{target} C={budget_steps} seed {seed} {name}: test loss {record['test_loss']:.4f} "
                f"({record['train_steps']} steps, {record['seconds']:.0f}s)",
                flush=True,
            )
    report()


def _mean_losses(records: list[dict]) -> dict[tuple, dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["target"], r["budget_steps"], r["mixture_name"]), []).append(r)
    return {
        key: {
            "losses": [r["test_loss"] for r in sorted(rs, key=lambda r: r["seed"])],
            "seeds": sorted(r["seed"] for r in rs),
            "mean": float(np.mean([r["test_loss"] for r in rs])),
            "total_steps": float(np.mean([r["total_flops"] / r["step_flops"] for r in rs])),
            "records": rs,
        }
        for key, rs in groups.items()
    }


def _mixture_text(mixture: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in sorted(mixture.items()) if v >= 0.005)


def report() -> None:
    records = read_records()
    if not records:
        return
    means = _mean_losses(records)
    targets = sorted({r["target"] for r in records})
    lines = [
        "Mixture landscape on SmolLM2-135M-Instruct + LoRA (r=8): test loss (mean token loss on 64 held-out target "
        "rows) after training on a fixed source mixture for C steps of 8 rows (AdamW, lr 1e-3), per seed, and "
        "CADS-S's "
        "learned mixture trained the same way. 'total' counts CADS-S's overhead (pilots + outer loop) in training "
        "steps of the same FLOPs. Lower is better; ranks are by the mean over the seeds that finished.",
        "",
    ]
    for target in targets:
        untrained = means.get((target, 0, "untrained"))
        lines.append(f"## {target}" + (f" (untrained: {untrained['mean']:.4f})" if untrained else ""))
        budgets = sorted({b for (t, b, _) in means if t == target and b > 0})
        for budget in budgets:
            rows = sorted(
                (
                    (name, m)
                    for (t, b, name), m in means.items()
                    if t == target and b == budget and name not in EQUAL_TOTAL
                ),
                key=lambda x: x[1]["mean"],
            )
            lines += [
                "",
                f"C = {budget} steps",
                "",
                "| rank | mixture | test loss per seed | mean | total (steps) |",
                "|---|---|---|---|---|",
            ]
            for rank, (name, m) in enumerate(rows, start=1):
                label = (
                    name
                    if name != "CADS-S"
                    else "**CADS-S** (" + "; ".join(_mixture_text(r["mixture"]) for r in m["records"]) + ")"
                )
                lines.append(
                    f"| {rank} | {label} | "
                    + " / ".join(f"{v:.4f}" for v in m["losses"])
                    + f" | {m['mean']:.4f} | {m['total_steps']:.1f} |"
                )
            for name in EQUAL_TOTAL:
                m = means.get((target, budget, name))
                if m:
                    mixtures = "; ".join(dict.fromkeys(_mixture_text(r["mixture"]) for r in m["records"]))
                    lines.append(
                        f"| - | {name} ({mixtures}) | "
                        + " / ".join(f"{v:.4f}" for v in m["losses"])
                        + f" | {m['mean']:.4f} | {m['total_steps']:.1f} |"
                    )
        lines += ["", *comparison_lines(means, target, budgets), ""]
    write_markdown("cads_lm_grid", lines)
    print("\n".join(lines))
    plot(means, targets)


def comparison_lines(means: dict[tuple, dict], target: str, budgets: list[int]) -> list[str]:
    """CADS-S vs uniform and vs the grid's best, at equal training FLOPs and at equal total FLOPs."""
    out = []
    for budget in budgets:
        cads = means.get((target, budget, "CADS-S"))
        grid = {
            name: m
            for (t, b, name), m in means.items()
            if t == target and b == budget and name not in ("CADS-S", *EQUAL_TOTAL)
        }
        if not cads or "uniform" not in grid:
            continue
        best_name = min(grid, key=lambda n: grid[n]["mean"])
        rank = 1 + sum(m["mean"] < cads["mean"] for m in grid.values())
        out.append(
            f"- C = {budget}, equal training FLOPs: CADS-S ranks {rank} of {len(grid) + 1}; its test loss "
            f"{cads['mean']:.4f} vs uniform {grid['uniform']['mean']:.4f} "
            f"({cads['mean'] - grid['uniform']['mean']:+.4f}) "
            f"and the grid's best, {best_name}, {grid[best_name]['mean']:.4f} "
            f"({cads['mean'] - grid[best_name]['mean']:+.4f})."
        )
        # Equal total FLOPs: trained for CADS-S's C plus its overhead, on the same seeds.
        equal = [means.get((target, budget, name)) for name in EQUAL_TOTAL]
        if all(equal):
            uniform, best = equal
            seeds = sorted(set(uniform["seeds"]) & set(best["seeds"]))
            same = float(np.mean([r["test_loss"] for r in cads["records"] if r["seed"] in seeds]))
            mean = {
                name: float(np.mean([r["test_loss"] for r in m["records"] if r["seed"] in seeds]))
                for name, m in zip(EQUAL_TOTAL, equal)
            }
            out.append(
                f"- C = {budget}, equal total FLOPs ({cads['total_steps']:.1f} steps: CADS-S's C + overhead; seeds "
                f"{seeds}): "
                f"CADS-S {same:.4f} vs uniform {mean[EQUAL_TOTAL[0]]:.4f} ({same - mean[EQUAL_TOTAL[0]]:+.4f}) and "
                "the "
                f"grid's best mixture trained as long, {mean[EQUAL_TOTAL[1]]:.4f} "
                f"({same - mean[EQUAL_TOTAL[1]]:+.4f})."
            )
        else:
            out.append(
                f"- C = {budget}: CADS-S costs {cads['total_steps']:.1f} steps in total; the equal-total runs did "
                "not run."
            )
    return out


def plot(means: dict[tuple, dict], targets: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(targets), figsize=(6.5 * len(targets), 4.5), squeeze=False)
    for ax, target in zip(axes[0], targets):
        names = sorted(
            {name for (t, b, name) in means if t == target and b > 0 and name not in ("CADS-S", *EQUAL_TOTAL)}
        )
        for name in names:
            points = sorted(
                (m["total_steps"], m["mean"]) for (t, b, n), m in means.items() if t == target and n == name and b > 0
            )
            ax.plot(
                *zip(*points),
                marker="o",
                lw=1.5 if name == "uniform" else 1,
                ls="--" if name == "uniform" else "-",
                label=name,
                alpha=0.85,
            )
        for budget in sorted({b for (t, b, n) in means if t == target and n == "CADS-S"}):
            cads = means[(target, budget, "CADS-S")]
            trained = float(np.mean([r["train_flops"] / r["step_flops"] for r in cads["records"]]))
            ax.annotate(
                "",
                xy=(cads["total_steps"], cads["mean"]),
                xytext=(trained, cads["mean"]),
                arrowprops=dict(arrowstyle="->", color="black", lw=0.8),
            )
            ax.scatter([trained], [cads["mean"]], marker="*", s=180, color="black", zorder=5)
            ax.scatter(
                [cads["total_steps"]],
                [cads["mean"]],
                marker="*",
                s=180,
                facecolor="white",
                edgecolor="black",
                zorder=5,
            )
            for name, marker in zip(EQUAL_TOTAL, ("x", "P")):
                m = means.get((target, budget, name))
                if m:
                    ax.scatter([m["total_steps"]], [m["mean"]], marker=marker, s=70, color="tab:red", zorder=4)
        ax.scatter([], [], marker="*", s=120, color="black", label="CADS-S at its training FLOPs (hollow: + overhead)")
        ax.scatter([], [], marker="x", s=50, color="tab:red", label="uniform at CADS-S's total FLOPs")
        ax.scatter([], [], marker="P", s=50, color="tab:red", label="grid's best at CADS-S's total FLOPs")
        untrained = means.get((target, 0, "untrained"))
        if untrained:
            ax.axhline(untrained["mean"], color="grey", lw=0.8, ls=":", label="untrained")
        ax.set_title(f"target: {target}")
        ax.set_xlabel("FLOPs spent, in training steps of 8 rows (grid: training only)")
        ax.set_ylabel("target test loss (lower is better)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "cads_lm_grid.png", dpi=120)


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--targets", nargs="+", default=["gsm8k", "logical_deduction_three_objects"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--budgets", type=int, nargs="+", default=[20, 40], help="C in training steps of 8 rows")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    if args.report:
        report()
    else:
        run(args)


if __name__ == "__main__":
    main()
