"""The compute-optimal analysis of a set of run records: seed-mean points and their frontier,
bootstrap intervals of the fitted curves, the regret of following the planner, and the extrapolated
crossover model-size ratios of the LM-based selectors.

``benchmarks/compute_optimal.py`` reports these for its 270 recorded runs; they apply to any
records of one (model, target) with several selectors, fractions and seeds.

Example:
    >>> from hf_cads.planner.analysis import bootstrap_fits, regret_table, seed_means
    >>> from hf_cads.planner.synthetic import synthetic_records
    >>> records = synthetic_records()
    >>> points = seed_means(records, "target_loss")
    >>> fits, skipped, samples, unit = bootstrap_fits(records, "target_loss", resamples=5)
    >>> unit, sorted(fits)
    ('seeds', ['bm25', 'perplexity', 'random'])
    >>> rows = regret_table(fits, points, False, next(iter(fits.values())).c_full)
    >>> all(row["regret"] >= 0 for row in rows if row.get("regret") is not None)
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .fit import EXPENSIVE_SELECTORS, fit_selectors, lower_is_better, unbent_fit_reason
from .frontier import pareto_frontier
from .recommend import break_even_ratios, recommend

# The reference result (Yin & Rush, "Compute-Constrained Data Selection"): the train / selection model
# size ratio from which each LM-based selector becomes compute-optimal.
PAPER_CROSSOVER = {"perplexity": 5.0, "less": 10.0}
CROSSOVER_RATIOS = (1.0, 2.0, 5.0, 10.0, 20.0)
UNTRAINED = "untrained"
"""The frontier's 0-FLOP option: the model before finetuning."""
BUDGET_MULTIPLES = (0.1, 0.3, 1.5)
"""Budgets of the regret table, as multiples of C_full (the FLOPs of training on the whole pool once)."""
CROSSOVER_BUDGETS = tuple(np.geomspace(0.02, 1.0, 12).tolist())
"""Budgets (multiples of C_full) at which a selector may join the extrapolated frontier: up to C_full,
where a cheap selector can train on the whole pool (beyond it selection has nothing left to decide)."""


def fit_saturation(fit: Any) -> dict[str, Any]:
    """How much of its fitted curve a selector's runs measured: ``gain_measured`` (the share of the
    predicted change ``P0 -> P_max`` reached at its largest run), the fitted ``asymptote``, and
    ``unbent``, the planner's reason why the curve is a line rather than a measured bend
    (:func:`hf_cads.planner.unbent_fit_reason`; ``None``: ``saturated``). A line fitted to an expensive
    selector beats every saturating cheap curve far enough out, so its crossover ratio is the fit's,
    not the data's."""
    reason = unbent_fit_reason(fit)
    return {
        "gain_measured": fit.measured_share,
        "asymptote": float(fit.p_max),
        "unbent": reason,
        "saturated": reason is None,
    }


def seed_means(records: Sequence[Any], metric: str) -> list[dict[str, Any]]:
    """One point per (label, fraction): the mean over seeds of FLOPs and metric, with the seeds' spread
    (a 95% t-interval of the mean when there are >= 2 seeds, else the single value)."""
    from scipy.stats import t as student

    groups: dict[tuple[str, float], list[Any]] = {}
    for r in records:
        if metric in r.metrics:
            groups.setdefault((r.label, float(r.selection_fraction or r.fraction)), []).append(r)
    points = []
    for (label, fraction), group in sorted(groups.items()):
        values = np.array([r.metrics[metric] for r in group])
        half = (
            float(student.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
            if len(values) > 1
            else 0.0
        )
        points.append(
            {
                "selector": label,
                "fraction": fraction,
                "k": int(round(np.mean([r.k for r in group]))),
                "seeds": len(values),
                "total_flops": float(np.mean([r.total_flops for r in group])),
                "selection_flops": float(np.mean([r.selection_flops for r in group])),
                "value": float(values.mean()),
                "low": float(values.mean() - half),
                "high": float(values.mean() + half),
            }
        )
    return points


def untrained_point(records: Sequence[Any], metric: str) -> dict[str, Any] | None:
    """Not finetuning at all, as a configuration at 0 FLOPs: the untrained model's metric (the same in
    every run of a (model, target); ``None`` when not measured)."""
    values = [r.baseline_metrics[metric] for r in records if metric in r.baseline_metrics]
    if not values:
        return None
    value = float(np.mean(values))
    return {
        "selector": UNTRAINED,
        "fraction": 0.0,
        "k": 0,
        "seeds": len({r.seed for r in records}),
        "total_flops": 0.0,
        "selection_flops": 0.0,
        "value": value,
        "low": value,
        "high": value,
    }


def mean_frontier(points: Sequence[dict[str, Any]], higher_is_better: bool) -> list[dict[str, Any]]:
    """The Pareto frontier of the seed-mean points, by increasing FLOPs."""
    if not points:
        return []
    indices = pareto_frontier([p["total_flops"] for p in points], [p["value"] for p in points], higher_is_better)
    return [points[i] for i in indices]


def _resample(records: Sequence[Any], rng: np.random.Generator) -> list[Any]:
    """One bootstrap sample: seeds drawn with replacement (all runs of a drawn seed, per selector),
    or single runs when a selector has one seed only."""
    out: list[Any] = []
    for label in sorted({r.label for r in records}):
        group = [r for r in records if r.label == label]
        seeds = sorted({r.seed for r in group})
        if len(seeds) > 1:
            for seed in rng.choice(seeds, size=len(seeds), replace=True):
                out += [r for r in group if r.seed == seed]
        else:
            out += [group[i] for i in rng.integers(0, len(group), size=len(group))]
    return out


def bootstrap_fits(
    records: Sequence[Any], metric: str, *, resamples: int = 100, seed: int = 0
) -> tuple[dict[str, Any], dict[str, str], list[dict[str, Any]], str]:
    """``(fits, skipped, bootstrap fit sets, unit)``: the planner's curve per selector on all runs, and
    the same fits on ``resamples`` bootstrap samples (seeds drawn with replacement: ``unit = "seeds"``;
    with one seed, runs: ``unit = "runs"``). A sample whose fit fails is left out of that selector's set."""
    higher = not lower_is_better(metric)
    fits, skipped = fit_selectors(records, metric, higher_is_better=higher)
    unit = "seeds" if len({r.seed for r in records}) > 1 else "runs"
    rng = np.random.default_rng(seed)
    samples = []
    # A resample's curve can be undetermined (a step, a line); only its predictions are used, so the
    # planner's warning about its parameter intervals would be noise here.
    for _ in range(resamples):
        sample_fits, _ = fit_selectors(
            _resample(records, rng), metric, higher_is_better=higher, warn_undetermined=False
        )
        samples.append(sample_fits)
    return fits, skipped, samples, unit


def curve_band(
    label: str, samples: Sequence[dict[str, Any]], flops: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """2.5% and 97.5% quantiles of the bootstrap curves of ``label`` at ``flops`` (``None``: < 10 fits)."""
    curves = [fits[label].predict(flops) for fits in samples if label in fits]
    if len(curves) < 10:
        return None
    stacked = np.vstack(curves)
    return np.quantile(stacked, 0.025, axis=0), np.quantile(stacked, 0.975, axis=0)


def fit_intervals(fits: dict[str, Any], samples: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per selector: the fitted parameters and their 95% bootstrap intervals."""
    out = {}
    for label, fit in fits.items():
        boot = [s[label] for s in samples if label in s]
        entry: dict[str, Any] = {
            "p0": fit.p0,
            "p_max": fit.p_max,
            "lambda": fit.lam,
            "rmse": fit.rmse,
            "points": fit.num_points,
            "cost_per_example": fit.cost_per_example,
            "selection_flops": fit.selection_flops,
            "c_full": fit.c_full,
            "model_params": fit.model_params,
            "selection_model_params": fit.selection_model_params,
            "bootstrap_fits": len(boot),
        }
        for name, attr in (("p0", "p0"), ("p_max", "p_max"), ("lambda", "lam")):
            values = np.array([getattr(b, attr) for b in boot])
            entry[f"{name}_95"] = (
                [float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))] if len(values) >= 10 else None
            )
        out[label] = entry
    return out


def regret_table(
    fits: dict[str, Any],
    points: Sequence[dict[str, Any]],
    higher_is_better: bool,
    c_full: float,
    multiples: Sequence[float] = BUDGET_MULTIPLES,
) -> list[dict[str, Any]]:
    """For each budget (a multiple of ``c_full``): the planner's recommendation, the best measured
    configuration within the budget (seed means) and the regret of following the planner, measured:
    the best affordable mean minus the best affordable mean of the recommended selector (>= 0, in
    metric units; ``None`` when the recommended selector has no affordable run)."""
    sign = 1.0 if higher_is_better else -1.0
    rows = []
    for multiple in multiples:
        budget = multiple * c_full
        affordable = [p for p in points if p["total_flops"] <= budget]
        best = max(affordable, key=lambda p: sign * p["value"], default=None)
        row: dict[str, Any] = {
            "budget_multiple": multiple,
            "budget": budget,
            "best_selector": best["selector"] if best else None,
            "best_k": best["k"] if best else None,
            "best_value": best["value"] if best else None,
            # One seed has no interval; the untrained model's value is exact.
            "best_interval": (
                [best["low"], best["high"]] if best and (best["seeds"] > 1 or best["selector"] == UNTRAINED) else None
            ),
            "best_seeds": best["seeds"] if best else None,
        }
        try:
            rec = recommend(budget, fits, confidence=0.95) if fits else None
        except ValueError as err:
            rec, row["note"] = None, str(err)
        if rec is not None:
            mine = [p for p in affordable if p["selector"] == rec.selector]
            followed = max(mine, key=lambda p: sign * p["value"], default=None)
            row.update(
                planner_selector=rec.selector,
                planner_k=rec.k,
                planner_predicted=rec.predicted,
                planner_interval=list(rec.interval),
                planner_extrapolation=rec.chosen.extrapolation,
                followed_value=followed["value"] if followed else None,
                regret=(sign * (best["value"] - followed["value"])) if (best and followed) else None,
            )
        rows.append(row)
    return rows


def crossover_ratios(
    fits: dict[str, Any],
    samples: Sequence[dict[str, Any]] = (),
    *,
    ratios: Sequence[float] = CROSSOVER_RATIOS,
    budget_multiples: Sequence[float] = CROSSOVER_BUDGETS,
    max_samples: int = 50,
) -> dict[str, dict[str, Any]]:
    """Extrapolated train / selection model size ratio from which each LM-based selector joins the
    frontier: the smallest ratio at which, at some budget (``budget_multiples`` x C_full, training
    costs scaled with the training model while selection costs stay), its predicted metric beats
    every cheap selector's (:func:`hf_cads.planner.break_even_ratios`). ``samples`` give a 95%
    interval. Per selector: ``ratio`` (``inf``: never within 10^9 x), ``measured_ratio``, the
    ``joins`` flag at each of ``ratios``, the budget multiple where it first joins, and the selector's
    :func:`fit_saturation` (a ratio from an unsaturated fit is not a finding)."""

    def first_join(fit_set: dict[str, Any], label: str) -> tuple[float, float | None]:
        # Against the cheap selectors only (the reference paper's comparison), not the other LM selectors.
        versus = {
            name: fit
            for name, fit in fit_set.items()
            if name == label or (fit.selector or name) not in EXPENSIVE_SELECTORS
        }
        c_full = next(iter(versus.values())).c_full
        best, where = math.inf, None
        for multiple in budget_multiples:
            for b in break_even_ratios(versus, multiple * c_full, expensive=[label]):
                # break_even_ratios: 'scale' x the measured sizes; ratio = scale x measured N_t / N_s.
                ratio = b.ratio if b.ratio == b.ratio else b.scale
                if ratio < best:
                    best, where = ratio, multiple
        return best, where

    out: dict[str, dict[str, Any]] = {}
    lm_labels = [label for label, fit in fits.items() if (fit.selector or label) in EXPENSIVE_SELECTORS]
    if not lm_labels or len(lm_labels) == len(fits):
        return out
    for label in lm_labels:
        ratio, where = first_join(fits, label)
        fit = fits[label]
        measured = fit.model_params / fit.selection_model_params if fit.selection_model_params else float("nan")
        boot = []
        for fit_set in list(samples)[:max_samples]:
            if label in fit_set and any((f.selector or n) not in EXPENSIVE_SELECTORS for n, f in fit_set.items()):
                boot.append(first_join(fit_set, label)[0])
        entry: dict[str, Any] = {
            "ratio": ratio,
            "measured_ratio": measured,
            "budget_multiple": where,
            "joins": {f"{r:g}": bool(ratio <= r) for r in ratios},
            "paper_ratio": PAPER_CROSSOVER.get(label),
            **fit_saturation(fit),
        }
        if len(boot) >= 10:
            entry["ratio_95"] = [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))]
            entry["joins_share"] = {f"{r:g}": float(np.mean([b <= r for b in boot])) for r in ratios}
        out[label] = entry
    return out
