"""Compute-optimal data selection at CPU scale: for a FLOP budget, which selector and how much data?

The central experiment of the compute-constrained data-selection analysis (Yin & Rush), on real
data. One shared training pool is built from the multi-source mix (GSM8K train, Code Alpaca,
Alpaca seeds, all BBH tasks; deduplicated) and decontaminated against the test rows of every
target (:mod:`hf_cads.decontamination`: a pool row equal to a test row after normalisation, or
holding most of its 13-grams, is dropped). For each training model, target (a BBH task:
validation = its cot-prompt exemplars, test = its examples; GSM8K), seed, selector and subset
fraction, the model gets a LoRA finetune of one epoch on the selected share of the pool. The
LM-based selectors (perplexity, LESS, CADS) score with the *selection model* (SmolLM2-135M in the
full design) whichever model is trained, so for Gemma-3-270M selection and training model differ in
size and tokenizer, as in practice. There is no FLOP cap, so a run's compute is
``C = c * k + C_select``, the quantity the planner's curves are a function of. Every run goes through
:func:`hf_cads.pipeline.run_budgeted_finetune` and appends a run record (FLOPs by phase, target test
loss and, where the answers are short, exact-match accuracy). The analysis
(:func:`analyse`, :mod:`hf_cads.planner`) fits ``P(C)`` per selector with bootstrap intervals over
seeds, draws the frontier, scores the planner's recommendations by their regret and extrapolates
to larger training models (the crossover ratios).

    python benchmarks/compute_optimal.py --quick        # < 15 min on 2 CPU cores, all 7 selectors
    python benchmarks/compute_optimal.py --threads 1    # the full design: tens of CPU hours, resumable
    python benchmarks/compute_optimal.py --train-models smollm2-135m-instruct --targets gsm8k --seeds 0
    python benchmarks/compute_optimal.py --report-only  # refit and redraw what is recorded

Resumable and runnable in parts: runs already in the records file are skipped (kill it any time;
at worst the run in progress is lost), and scores that do not depend on the subset size (bm25,
embedding, perplexity, LESS) are computed once per pool and reused from the score cache
(``$HF_CADS_CACHE``, default ``outputs/<name>/score_cache``); the record of a run that reused them
still carries their full cost. The grid runs in blocks of (target, seed, training model), each block
all selectors x fractions, so a partial run is usable early: seed 0 of every target for both
models, then seed 1 of every target, then seed 2. CADS is run per subset size, with
``train_budget`` = the training FLOPs of that size (it optimises the subset for that budget).

Writes ``benchmarks/results/<name>.{json,md}`` (``name`` = ``compute_optimal_full`` or
``compute_optimal_quick``), a frontier PNG per (training model, target, metric), the run records
``benchmarks/results/<name>_runs.jsonl`` (the planner's input) and one flat JSON object per run in
``benchmarks/results/<name>.jsonl``; per-run folders go to ``outputs/<name>/``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from _common import RESULTS, ROOT, make_parser, write_json, write_markdown  # noqa: E402

from hf_cads.planner.analysis import (  # noqa: E402
    CROSSOVER_RATIOS,
    bootstrap_fits,
    crossover_ratios,
    curve_band,
    fit_intervals,
    mean_frontier,
    regret_table,
    seed_means,
    untrained_point,
)

SELECTORS = ("random", "bm25", "embedding", "perplexity", "less", "cads-e", "cads-s", "rds", "rds-own", "embedding-rr")
LM_SELECTORS = ("perplexity", "less", "cads-e", "cads-s", "rds")
"""Selectors that score with a causal LM: the selection model."""
DESIGN_VARIANTS = {"embedding-rr": ("embedding", {"aggregate": "round_robin"}), "rds-own": ("rds", {})}
"""Design entries that run a registered selector with other options: ``name -> (selector, options)``."""
OWN_MODEL_SELECTORS = ("rds-own",)
"""Entries that score with the model being trained (named in their options, so their runs say which),
run only where that model is not the selection model (else they repeat the plain entry)."""
QUICK_GOAL_SECONDS = 15 * 60
METRIC_NAMES = {"target_loss": "target test loss", "exact_match": "exact-match accuracy"}
FLAT_FIELDS = (
    "selector",
    "fraction",
    "k",
    "seed",
    "target",
    "train_model",
    "selection_model",
    "selection_flops",
    "train_flops",
    "total_flops",
    "target_loss",
    "exact_match",
    "wall_seconds",
)


@dataclass(frozen=True)
class Setup:
    """One configuration of the experiment (the grid, the pool, the training and the selector options).

    ``model`` is the first training model; ``train_models`` (default: just ``model``) all of them.
    ``selection_model``: the causal LM the LM-based selectors score with (``None``: the trained model).
    ``selector_options`` holds the options of each selector (``selector_kwargs``); CADS additionally
    gets ``train_budget`` = the training FLOPs of the subset size it selects for.
    """

    name: str
    targets: tuple[str, ...]
    fractions: tuple[float, ...]
    seeds: tuple[int, ...]
    max_per_source: int
    max_seq_length: int
    eval_examples: int
    selectors: tuple[str, ...] = SELECTORS
    model: str = "smollm2-135m-instruct"
    train_models: tuple[str, ...] = ()
    selection_model: str | None = None
    max_pool_chars: int = 1200
    min_pool_size: int = 0
    decontamination_min_overlap: float = 0.5
    train_batch_size: int = 4
    eval_batch_size: int = 16
    learning_rate: float = 1e-3
    lora_r: int = 8
    exact_match_max_new_tokens: int = 8
    selector_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    results_dir: Path = RESULTS
    output_dir: Path = ROOT / "outputs"

    @property
    def models(self) -> tuple[str, ...]:
        return self.train_models or (self.model,)

    @property
    def records_path(self) -> Path:
        return self.results_dir / f"{self.name}_runs.jsonl"

    @property
    def flat_path(self) -> Path:
        return self.results_dir / f"{self.name}.jsonl"

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.name

    def entries_for(self, train_model: str) -> list[str]:
        """The design entries run for ``train_model``: an own-model entry only where that model is not
        the selection model (there it would repeat the plain entry)."""
        return [
            name
            for name in self.selectors
            if not (name in OWN_MODEL_SELECTORS and (self.selection_model or train_model) == train_model)
        ]

    def planned_runs(self) -> int:
        entries = sum(len(self.entries_for(model)) for model in self.models)
        return entries * len(self.targets) * len(self.seeds) * len(self.fractions)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(results_dir=str(self.results_dir), output_dir=str(self.output_dir))
        return out


def default_selector_options(max_seq_length: int, *, cheap: bool) -> dict[str, dict[str, Any]]:
    """Selector options sized for a CPU. ``cheap`` (the quick mode) shortens LESS and CADS further.

    LESS: one warmup epoch (one checkpoint) instead of the paper's 4, random projection to 1024
    (quick) / 2048 dimensions instead of 8192. CADS: few pilot points and outer steps with small mask
    blocks; pilots down-scaled ``A`` times with pilot batches of ``batch_size`` rows, where
    ``A * batch_size`` must stay below the smallest subset (a pilot needs one step's FLOPs): the
    quick mode's smallest subset has 6 rows, so ``A = 4`` with single-row steps; the full mode's has
    ~50, so ``A = 10`` with batches of 4.
    """
    scoring = {"max_length": max_seq_length, "show_progress": False}
    return {
        "random": {},
        "bm25": {"aggregate": "max"},
        "embedding": {"aggregate": "max", "show_progress": False},
        "perplexity": {**scoring, "batch_size": 8},
        "rds": {**scoring, "batch_size": 8},
        "less": {
            **scoring,
            "batch_size": 4,
            "warmup_epochs": 1,
            "warmup_fraction": 0.05,
            "projection_dim": 1024 if cheap else 2048,
        },
        "cads": {
            **scoring,
            "batch_size": 1 if cheap else 4,
            "A": 4.0 if cheap else 10.0,
            "num_sampling_points": 3 if cheap else 4,
            "min_sampling_fraction": 0.02,
            "outer_steps": 2 if cheap else 8,
            "samples_per_step": 2 if cheap else 4,
            "block_size": 4 if cheap else 16,
            "target_batch_size": 3,
            "learning_rate": 1e-3,
        },
    }


QUICK = Setup(
    name="compute_optimal_quick",
    targets=("boolean_expressions",),
    fractions=(0.05, 0.1, 0.2),
    seeds=(0,),
    max_per_source=30,
    max_seq_length=128,
    eval_examples=24,
    selectors=("random", "bm25", "embedding", "perplexity", "less", "cads-e", "cads-s"),
    selector_options=default_selector_options(128, cheap=True),
)
FULL = Setup(
    name="compute_optimal_full",
    targets=("boolean_expressions", "logical_deduction_three_objects", "gsm8k"),
    fractions=(0.05, 0.1, 0.25),
    seeds=(0, 1, 2),
    max_per_source=300,
    max_pool_chars=1000,
    min_pool_size=1000,
    max_seq_length=256,
    eval_examples=100,
    selectors=("random", "bm25", "embedding", "perplexity", "less", "rds", "rds-own", "embedding-rr"),
    # Gemma's 262k-token vocabulary: a batch of 16 GSM8K rows would hold ~4 GB of float32 logits.
    eval_batch_size=4,
    train_models=("smollm2-135m-instruct", "gemma3-270m"),
    selection_model="smollm2-135m-instruct",
    selector_options=default_selector_options(256, cheap=False),
)


# -- the pool ------------------------------------------------------------------------------------
def target_test_rows(target: str) -> Any:
    """Every test row of a target (all of them, not only the evaluated ones): what the pool must not hold."""
    from hf_cads.data import load_bbh_examples, load_gsm8k

    return load_gsm8k("test") if target == "gsm8k" else load_bbh_examples(target)


def shared_pool(setup: Setup) -> tuple[Any, Any]:
    """``(pool, contamination report)``: the multi-source mix (all sources, every BBH task, exact
    repeats dropped), without the rows that overlap any target's test rows. One pool for every
    target, seed and model, so that selection scores and curves are comparable across them."""
    from hf_cads.data import build_multisource_pool
    from hf_cads.decontamination import decontaminate

    pool = build_multisource_pool(None, max_per_source=setup.max_per_source, max_chars=setup.max_pool_chars, seed=0)
    tests = {target: target_test_rows(target) for target in setup.targets}
    clean, report = decontaminate(pool, tests, min_overlap=setup.decontamination_min_overlap)
    print(report.format(), flush=True)
    if len(clean) < setup.min_pool_size:
        raise ValueError(
            f"The decontaminated pool has {len(clean)} rows, fewer than min_pool_size={setup.min_pool_size}; "
            "raise max_per_source or max_pool_chars."
        )
    return clean, report


# -- building the grid ---------------------------------------------------------------------------
def base_recipe(setup: Setup, target: str, train_model: str) -> dict[str, Any]:
    """The flat recipe (RunConfig + BudgetedTrainingArguments) every run of ``target`` shares."""
    return {
        "model_name_or_path": train_model,
        "target": target,
        "max_per_source": setup.max_per_source,
        "max_pool_chars": setup.max_pool_chars,
        "eval_examples": setup.eval_examples,
        "exact_match_max_new_tokens": setup.exact_match_max_new_tokens,
        "lora_r": setup.lora_r,
        "lora_alpha": 2 * setup.lora_r,
        "flop_budget": None,
        "num_train_epochs": 1,
        "max_length": setup.max_seq_length,
        "per_device_train_batch_size": setup.train_batch_size,
        "per_device_eval_batch_size": setup.eval_batch_size,
        "learning_rate": setup.learning_rate,
        "lr_scheduler_type": "constant",
        "logging_steps": 50,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "run_records": str(setup.records_path),
    }


def selector_options(setup: Setup, name: str, train_model: str | None = None) -> dict[str, Any]:
    selector, variant = DESIGN_VARIANTS.get(name, (name, {}))
    key = "cads" if selector.startswith("cads") else selector
    options = {**setup.selector_options.get(key, {}), **variant}
    if name in LM_SELECTORS and setup.selection_model:
        options["model_name_or_path"] = setup.selection_model
    if name in OWN_MODEL_SELECTORS and train_model is not None:
        options["model_name_or_path"] = train_model
    return options


def selection_model_name(
    setup: Setup, selector: str, train_model: str, config: dict[str, Any] | None = None
) -> str | None:
    """What a selector scored with: the selection model (LM selectors), the encoder, or nothing."""
    if selector in LM_SELECTORS:
        return (config or {}).get("model_name_or_path") or setup.selection_model or train_model
    if selector == "embedding":
        return str(setup.selector_options.get("embedding", {}).get("model_name_or_path", "all-minilm-l6-v2"))
    return None


def short_name(model: str) -> str:
    return Path(model).name


def training_flops_per_row(setup: Setup, pool: Any, seed: int, model_and_tokenizer: tuple[Any, Any]) -> float:
    """FLOPs of training one pool row for one epoch: the expected cost of shuffled, padded batches of
    the pool (LoRA-aware), per row."""
    from hf_cads.flops import FlopProfile, LoraSpec
    from hf_cads.pipeline import RunConfig
    from hf_cads.trainer import mean_step_flops, tokenize_for_causal_lm

    model, tokenizer = model_and_tokenizer
    lengths = [len(ids) for ids in tokenize_for_causal_lm(pool, tokenizer, setup.max_seq_length)["input_ids"]]
    profile = FlopProfile.from_config(
        model.config, lora=LoraSpec(setup.lora_r, tuple(RunConfig().lora_target_modules))
    )
    steps = math.ceil(len(lengths) / setup.train_batch_size)
    return mean_step_flops(profile, lengths, setup.train_batch_size, seed=seed) * steps / len(lengths)


def grid_blocks(
    setup: Setup,
    *,
    targets: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    train_models: Sequence[str] | None = None,
) -> list[tuple[str, int, str]]:
    """``(target, seed, training model)`` blocks in run order: seed by seed, every target, every
    training model, so the first blocks already compare all selectors on both models and every
    target (one seed), and each further seed adds power to all of them."""
    unknown = sorted(set(train_models or ()) - set(setup.models))
    if unknown:
        raise ValueError(f"Unknown training model(s) {unknown}; this setup trains {list(setup.models)}.")
    return [
        (target, seed, model)
        for seed in seeds or setup.seeds
        for target in targets or setup.targets
        for model in train_models or setup.models
    ]


def block_runs(
    setup: Setup,
    target: str,
    seed: int,
    train_model: str,
    pool: Any,
    *,
    selectors: Sequence[str] | None = None,
    fractions: Sequence[float] | None = None,
    per_row: Any = None,
) -> tuple[list[Any], dict[str, float]]:
    """The :class:`~hf_cads.sweep_grid.SweepRun` s of one block (selector by selector, fractions ascending)
    and the CADS training budgets used. ``per_row()`` gives the training FLOPs per pool row (only
    called when CADS is in the grid)."""
    from hf_cads.records import selector_config_dict
    from hf_cads.selectors import resolve_k
    from hf_cads.sweep_grid import SelectorSpec, sweep_run

    base = base_recipe(setup, target, train_model)
    runs, cads_budgets = [], {}
    for name in [n for n in selectors or setup.selectors if n in setup.entries_for(train_model)]:
        for fraction in sorted(fractions or setup.fractions):
            kwargs = selector_options(setup, name, train_model)
            if name.startswith("cads"):
                budget = float(f"{per_row() * resolve_k(len(pool), None, fraction):.4g}")
                kwargs["train_budget"] = budget
                cads_budgets[f"{short_name(train_model)}/{target}/seed{seed}/f{fraction:g}"] = budget
            registered = DESIGN_VARIANTS.get(name, (name,))[0]
            selector_config_dict(registered, kwargs, seed)  # bad options fail here, before any run
            runs.append(
                sweep_run(
                    base,
                    SelectorSpec(registered, kwargs),
                    ("selection_fraction", fraction),
                    seed,
                    setup.run_dir / short_name(train_model) / target,
                    source=setup.name,
                )
            )
    return runs, cads_budgets


# -- running -------------------------------------------------------------------------------------
def cpu_seconds() -> float:
    """CPU time of this process and its children, all threads (user + system)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class ModelCache:
    """Loaded ``(model, tokenizer)`` by name, each loaded once per process."""

    def __init__(self) -> None:
        self.loaded: dict[str, tuple[Any, Any]] = {}

    def get(self, name: str) -> tuple[Any, Any]:
        if name not in self.loaded:
            from hf_cads.models import load_causal_lm

            started = time.time()
            self.loaded[name] = load_causal_lm(name)
            print(f"loaded {name} in {time.time() - started:.0f} s", flush=True)
        return self.loaded[name]


def run_grid(
    setup: Setup,
    *,
    targets: Sequence[str] | None = None,
    selectors: Sequence[str] | None = None,
    fractions: Sequence[float] | None = None,
    seeds: Sequence[int] | None = None,
    train_models: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run every not-yet-recorded run of the (selected part of the) grid, block by block; a failed
    run is reported, not raised. Returns counts, failures, the CADS budgets and the pool's report."""
    from hf_cads.data import load_preset_target
    from hf_cads.pipeline import RunInputs, run_budgeted_finetune
    from hf_cads.records import read_records

    unknown = sorted(set(selectors or ()) - set(SELECTORS))
    if unknown:
        raise ValueError(f"Unknown selector(s) {unknown}; this benchmark runs {list(SELECTORS)}.")
    blocks = grid_blocks(setup, targets=targets, seeds=seeds, train_models=train_models)
    pool, contamination = shared_pool(setup)
    models = ModelCache()
    # A record of the same key from another pool (an earlier version of this benchmark) is another experiment.
    done = (
        {r.key for r in read_records(setup.records_path) if r.pool_size == len(pool)}
        if setup.records_path.is_file()
        else set()
    )
    outcome: dict[str, Any] = {
        "grid_runs": 0,
        "ran": 0,
        "skipped": 0,
        "failed": {},
        "cads_budgets": {},
        "pool_size": len(pool),
        "decontamination": contamination.summary(),
        "decontamination_examples": contamination.examples(5),
    }
    print(
        f"[{setup.name}] {len(blocks)} blocks of "
        f"{len(selectors or setup.selectors) * len(fractions or setup.fractions)} "
        f"runs; pool {len(pool)} rows; records: {setup.records_path}",
        flush=True,
    )
    for target, seed, train_model in blocks:
        per_row = lambda seed=seed, model=train_model: training_flops_per_row(setup, pool, seed, models.get(model))  # noqa: E731
        runs, budgets = block_runs(
            setup, target, seed, train_model, pool, selectors=selectors, fractions=fractions, per_row=per_row
        )
        outcome["cads_budgets"].update(budgets)
        outcome["grid_runs"] += len(runs)
        todo = [r for r in runs if r.key not in done]
        outcome["skipped"] += len(runs) - len(todo)
        if not todo:
            continue
        model, tokenizer = models.get(train_model)
        validation, test = load_preset_target(todo[0].run.target, todo[0].run.data_dir)
        inputs = RunInputs(validation, test.select(range(min(setup.eval_examples, len(test)))), pool, model, tokenizer)
        for position, item in enumerate(todo, start=1):
            print(
                f"[{short_name(train_model)} {target} seed {seed}: {position}/{len(todo)}] {item.description}",
                flush=True,
            )
            # An LM selector's named model is one already loaded: the selection model or the trained one.
            scorer = item.selector.kwargs.get("model_name_or_path")
            inputs.selector_model = (
                models.get(scorer)[0]
                if scorer is not None and scorer in (setup.selection_model, train_model)
                else None
            )
            try:
                report = run_budgeted_finetune(item.run, item.args, inputs)
            except (ValueError, TypeError, RuntimeError, OSError) as err:
                outcome["failed"][f"{short_name(train_model)} {target} {item.description}"] = str(err)
                print(f"    FAILED: {err}", flush=True)
                continue
            outcome["ran"] += 1
            done.add(item.key)
            sync_flat_rows(setup, {item.key: {"cpu_seconds": report["cpu_seconds"]}})
            print(
                f"    k={report['k']}  total FLOPs {report['ledger']['total']:.4g}  target loss "
                f"{report['target_loss_before']:.4f} -> {report['target_loss_after']:.4f}  ({report['seconds']:.0f} "
                "s)",
                flush=True,
            )
    return outcome


def flat_row(setup: Setup, record: Any) -> dict[str, Any]:
    """One run as a flat JSON object (the ``<name>.jsonl`` schema: :data:`FLAT_FIELDS`, then extras)."""
    return {
        "selector": record.selector,
        "fraction": record.selection_fraction,
        "k": record.k,
        "seed": record.seed,
        "target": record.target,
        "train_model": record.model,
        "selection_model": selection_model_name(setup, record.selector, record.model, record.selector_config),
        "selection_flops": record.selection_flops,
        "train_flops": record.train_flops,
        "total_flops": record.total_flops,
        "target_loss": record.metrics.get("target_loss"),
        "exact_match": record.metrics.get("exact_match"),
        "wall_seconds": record.seconds,
        "pool_size": record.pool_size,
        "eval_flops": record.eval_flops,
        "baseline_target_loss": record.baseline_metrics.get("target_loss"),
        "baseline_exact_match": record.baseline_metrics.get("exact_match"),
        "model_params": record.model_params,
        "selection_model_params": record.selection_model_params,
        "time": record.time,
        "key": record.key,
    }


def sync_flat_rows(setup: Setup, extras: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Append to ``<name>.jsonl`` a flat row for every run record it lacks (``extras`` by run key,
    e.g. CPU seconds), and return all rows. The run records stay the source of truth."""
    from hf_cads.records import read_records

    if not setup.records_path.is_file():
        return []
    lines = setup.flat_path.read_text().splitlines() if setup.flat_path.is_file() else []
    records = [r for r in read_records(setup.records_path) if r.model in setup.models]
    recorded = {r.key for r in records}
    # A report written while a run appends could add a row twice: the first one counts, and a row
    # without a run record (the records are the truth) is dropped.
    rows, have = [], set()
    for row in (json.loads(line) for line in lines if line.strip()):
        if row["key"] not in have and row["key"] in recorded:
            rows.append(row)
            have.add(row["key"])
    new = [{**flat_row(setup, r), **(extras or {}).get(r.key, {})} for r in records if r.key not in have]
    if new or len(rows) < sum(1 for line in lines if line.strip()):
        # Rewritten whole and renamed into place, so the file holds one row per run even after a race.
        scratch = setup.flat_path.with_name(f"{setup.flat_path.name}.{os.getpid()}.tmp")
        scratch.write_text("".join(json.dumps(row, sort_keys=False) + "\n" for row in rows + new), encoding="utf-8")
        os.replace(scratch, setup.flat_path)
    return rows + new


def run_benchmark(
    setup: Setup,
    *,
    targets: Sequence[str] | None = None,
    selectors: Sequence[str] | None = None,
    fractions: Sequence[float] | None = None,
    seeds: Sequence[int] | None = None,
    train_models: Sequence[str] | None = None,
    run: bool = True,
    started: tuple[float, float] | None = None,
    resamples: int = 100,
) -> dict[str, Any]:
    """Run the (selected part of the) grid, then summarise every record of ``setup`` and write the
    results. ``started`` = ``(wall, CPU)`` clock readings of the process start (default: now)."""
    wall0, cpu0 = started or (time.time(), cpu_seconds())
    load_before = os.getloadavg()
    outcome: dict[str, Any] = {"grid_runs": 0, "ran": 0, "skipped": 0, "failed": {}, "cads_budgets": {}}
    if run:
        outcome = run_grid(
            setup, targets=targets, selectors=selectors, fractions=fractions, seeds=seeds, train_models=train_models
        )
    timing = {
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "grid_runs": outcome["grid_runs"],
        "wall_seconds": round(time.time() - wall0, 1),
        "cpu_seconds": round(cpu_seconds() - cpu0, 1),
        "cores": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "ran": outcome["ran"],
        "skipped": outcome["skipped"],
        "failed": outcome["failed"],
    }
    timing["cpu_seconds_per_core"] = round(timing["cpu_seconds"] / max(1, os.cpu_count() or 1), 1)
    pool_info = {k: outcome[k] for k in ("pool_size", "decontamination", "decontamination_examples") if k in outcome}
    if not pool_info and not previous_pool_info(setup):
        pool, report = shared_pool(setup)  # a report-only call after a killed run: describe the pool once
        pool_info = {
            "pool_size": len(pool),
            "decontamination": report.summary(),
            "decontamination_examples": report.examples(5),
        }
    summary = summarise(setup, timing, outcome["cads_budgets"], pool_info, resamples=resamples)
    write_results(setup, summary)
    return summary


# -- analysis ------------------------------------------------------------------------------------
def design_entry(setup: Setup, record: Any) -> str:
    """The design entry a run record belongs to (``embedding-rr``, ``rds-own``, or the selector's own
    name): of the entries running its selector for its model, the one whose options the record's
    configuration holds, the most specific first. A record of no entry keeps its selector name."""
    config = record.selector_config or {}
    matches = []
    for name in setup.entries_for(record.model):
        if DESIGN_VARIANTS.get(name, (name,))[0] != record.selector:
            continue
        options = selector_options(setup, name, record.model)
        if all(config.get(key, value) == value for key, value in options.items()):
            matches.append((-len(options), setup.selectors.index(name), name))
    return min(matches)[2] if matches else str(record.selector)


def labelled_records(setup: Setup, pool_size: int | None = None) -> list[Any]:
    """This setup's run records (of the pool of ``pool_size`` rows, when given), each labelled by its
    design entry (:func:`design_entry`): an entry's runs at all fractions form one curve (CADS's
    ``train_budget`` option differs per fraction by design)."""
    from hf_cads.records import read_records

    if not setup.records_path.is_file():
        return []
    return [
        dataclasses.replace(r, label=design_entry(setup, r))
        for r in read_records(setup.records_path)
        if r.model in setup.models and (pool_size is None or r.pool_size == pool_size)
    ]


def run_costs(setup: Setup) -> list[dict[str, Any]]:
    """Wall and CPU seconds of every run, from the reports in the run folders."""
    costs = []
    for report_path in sorted(setup.run_dir.glob("*/*/*/report.json")):
        report = json.loads(report_path.read_text())
        costs.append(
            {key: report.get(key) for key in ("model", "target", "selector", "k", "seed", "seconds", "cpu_seconds")}
        )
    return costs


def plot_frontier(
    path: Path,
    records: Sequence[Any],
    points: Sequence[dict[str, Any]],
    frontier: Sequence[dict[str, Any]],
    fits: dict[str, Any],
    samples: Sequence[dict[str, Any]],
    metric: str,
    higher_is_better: bool,
    title: str,
) -> Path:
    """Seed means with 95% intervals (error bars), single runs (faint), fitted curves with 95% bootstrap
    bands, the frontier of the means (dashed) and the untrained model (dotted)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5.2), dpi=130)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    palette = {
        "random": "#7f7f7f",
        "bm25": "#1f77b4",
        "embedding": "#2ca02c",
        "perplexity": "#ff7f0e",
        "less": "#d62728",
        "cads-e": "#9467bd",
        "cads-s": "#8c564b",
    }
    flops = np.array([r.total_flops for r in records if r.total_flops > 0])
    left, right = flops.min() / 1.6, flops.max() * 1.6
    grid = np.geomspace(left, right, 160)
    shown = [p["value"] for p in points]
    for label in sorted({p["selector"] for p in points}):
        colour = palette.get(label, "#17becf")
        mine = [p for p in points if p["selector"] == label]
        axes.scatter(
            [r.total_flops for r in records if r.label == label],
            [r.metrics[metric] for r in records if r.label == label],
            s=10,
            color=colour,
            alpha=0.3,
            edgecolors="none",
        )
        axes.errorbar(
            [p["total_flops"] for p in mine],
            [p["value"] for p in mine],
            yerr=[[p["value"] - p["low"] for p in mine], [p["high"] - p["value"] for p in mine]],
            fmt="o",
            color=colour,
            markersize=5,
            capsize=3,
            label=label,
            zorder=3,
        )
        fit = fits.get(label)
        if fit is None:
            continue
        xs = grid[(grid >= max(fit.selection_flops, left)) & (grid <= float(fit.flops_for_k(fit.pool_size)))]
        if len(xs) < 2:
            continue
        axes.plot(xs, fit.predict(xs), color=colour, linewidth=1.5, zorder=2)
        band = curve_band(label, samples, xs)
        if band is not None:
            axes.fill_between(xs, band[0], band[1], color=colour, alpha=0.12, linewidth=0)
    if frontier:
        xs = [max(p["total_flops"], left) for p in frontier] + [right]  # the untrained model sits at 0 FLOPs
        ys = [p["value"] for p in frontier] + [frontier[-1]["value"]]
        axes.plot(
            xs,
            ys,
            linestyle="--",
            color="black",
            linewidth=1.1,
            drawstyle="steps-post",
            label="frontier (seed means)",
            zorder=4,
        )
    baselines = [r.baseline_metrics[metric] for r in records if metric in r.baseline_metrics]
    if baselines:
        axes.axhline(float(np.mean(baselines)), color="grey", linestyle=":", linewidth=1.0, label="before finetuning")
        shown.append(float(np.mean(baselines)))
    low, high = min(shown), max(shown)
    pad = 0.15 * (high - low) or 0.05 * max(abs(high), 1e-12)
    axes.set_ylim(low - pad, high + pad)
    axes.set_xscale("log")
    axes.set_xlim(left, right)
    axes.set_xlabel("total FLOPs (selection + training)")
    axes.set_ylabel(metric + ("  (higher is better)" if higher_is_better else "  (lower is better)"))
    axes.set_title(title, fontsize=10)
    axes.grid(True, which="both", alpha=0.25)
    axes.legend(fontsize=8, loc="best", framealpha=0.85)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def analyse(
    setup: Setup, records: Sequence[Any], target: str, metric: str, model: str | None = None, *, resamples: int = 100
) -> dict[str, Any]:
    """One (training model, target, metric): the planner's fits with 95% bootstrap intervals over
    seeds, the frontier of the seed means, the regret of the planner's recommendation at
    :data:`BUDGET_MULTIPLES`, the extrapolated crossover ratios, and the frontier PNG."""
    from hf_cads.planner import lower_is_better, make_plan

    model = model or setup.models[0]
    chosen = [r for r in records if r.target == target and r.model == model and metric in r.metrics]
    higher = not lower_is_better(metric)
    plan = make_plan(chosen, metric=metric, target=target, model=model)
    fits, skipped, samples, unit = bootstrap_fits(chosen, metric, resamples=resamples)
    points = seed_means(chosen, metric)
    base = untrained_point(chosen, metric)
    frontier = mean_frontier(([base] if base else []) + points, higher)
    c_full = (
        next(iter(fits.values())).c_full
        if fits
        else float(np.median([r.train_flops / r.k for r in chosen])) * chosen[0].pool_size
    )
    first = (model, target, metric) == (setup.models[0], setup.targets[0], "target_loss")
    suffix = (
        ""
        if first
        else (f"_{target}_{metric}" if model == setup.models[0] else f"_{short_name(model)}_{target}_{metric}")
    )
    png = setup.results_dir / f"{setup.name}{suffix}.png"
    seeds = sorted({r.seed for r in chosen})
    plot_frontier(
        png,
        chosen,
        points,
        frontier,
        fits,
        samples,
        metric,
        higher,
        f"{target}: {METRIC_NAMES.get(metric, metric)}, {short_name(model)} + LoRA\n({len(chosen)} runs, "
        f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''}; bands: 95% bootstrap over {unit})",
    )
    return {
        "model": model,
        "target": target,
        "metric": metric,
        "higher_is_better": higher,
        "png": str(png.relative_to(ROOT)) if png.is_relative_to(ROOT) else str(png),
        "runs": len(chosen),
        "seeds": seeds,
        "bootstrap_unit": unit,
        "bootstrap_resamples": resamples,
        "c_full": c_full,
        "fits": fit_intervals(fits, samples),
        "no_fit": skipped,
        "points": points,
        "frontier": frontier,
        "untrained": base,
        "regret": regret_table(fits, ([base] if base else []) + points, higher, c_full),
        "crossover": crossover_ratios(fits, samples),
        "plan_text": plan.format(),
    }


def summarise(
    setup: Setup,
    timing: dict[str, Any],
    cads_budgets: dict[str, Any],
    pool_info: dict[str, Any] | None = None,
    *,
    resamples: int = 100,
) -> dict[str, Any]:
    pool_info = pool_info or previous_pool_info(setup)
    records = labelled_records(setup, pool_info.get("pool_size"))
    rows = []
    for r in records:
        rows.append(
            {
                "model": r.model,
                "target": r.target,
                "selector": r.label,
                "fraction": r.selection_fraction,
                "k": r.k,
                "pool_size": r.pool_size,
                "seed": r.seed,
                "selection_flops": r.selection_flops,
                "train_flops": r.train_flops,
                "total_flops": r.total_flops,
                "eval_flops": r.eval_flops,
                "train_steps": r.train_steps,
                "tokens_trained": r.tokens_trained,
                "metrics": r.metrics,
                "baseline_metrics": r.baseline_metrics,
                "seconds": r.seconds,
                "selector_config": {k: v for k, v in r.selector_config.items() if k != "show_progress"},
            }
        )
    by_selector: dict[str, dict[str, float]] = {}
    for cost in run_costs(setup):
        entry = by_selector.setdefault(cost["selector"], {"runs": 0, "seconds": 0.0, "cpu_seconds": 0.0})
        entry["runs"] += 1
        entry["seconds"] += cost["seconds"] or 0.0
        entry["cpu_seconds"] += cost["cpu_seconds"] or 0.0
    analyses = []
    for model in [m for m in setup.models if any(r.model == m for r in records)]:
        for target in sorted({r.target for r in records}, key=lambda t: (t not in setup.targets, t)):
            for metric in ("target_loss", "exact_match"):
                if any(r.target == target and r.model == model and metric in r.metrics for r in records):
                    try:
                        analyses.append(analyse(setup, records, target, metric, model, resamples=resamples))
                    except ValueError as err:
                        analyses.append({"model": model, "target": target, "metric": metric, "error": str(err)})
    invocations = previous_invocations(setup) + ([timing] if timing["ran"] or timing["failed"] else [])
    flat = sync_flat_rows(setup)
    per_model: dict[str, int] = {}
    for r in records:
        per_model[r.model] = per_model.get(r.model, 0) + 1
    progress = {
        "planned": setup.planned_runs(),
        "done": len(records),
        "per_model": per_model,
        "cpu_hours": sum(row.get("cpu_seconds") or 0.0 for row in flat) / 3600,
        "wall_hours": sum(row.get("wall_seconds") or 0.0 for row in flat) / 3600,
    }
    return {
        "setup": setup.to_dict(),
        "machine": machine(),
        "timing": timing,
        "invocations": invocations,
        "per_selector_cost": by_selector,
        "cads_train_budgets": cads_budgets,
        "runs": rows,
        "analyses": analyses,
        "pool": pool_info,
        "progress": progress,
    }


def previous_invocations(setup: Setup) -> list[dict[str, Any]]:
    """Timings of the earlier invocations that ran something (kept in the results JSON, so a grid run
    in parts keeps the cost of every part)."""
    path = setup.results_dir / f"{setup.name}.json"
    if not path.is_file():
        return []
    return list(json.loads(path.read_text()).get("invocations", []))


def previous_pool_info(setup: Setup) -> dict[str, Any]:
    """The pool's size and decontamination report from the last results JSON (a report-only call
    does not rebuild the pool)."""
    path = setup.results_dir / f"{setup.name}.json"
    return dict(json.loads(path.read_text()).get("pool") or {}) if path.is_file() else {}


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        names = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "gpu": torch.cuda.is_available(),
    }


# -- writing -------------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value + 0.0:.{digits}g}"  # + 0.0: -0.0 prints as 0
    return str(value)


def _interval(pair: Any, digits: int = 3) -> str:
    return f"[{pair[0]:.{digits}g}, {pair[1]:.{digits}g}]" if pair else "-"


def _ratio(value: float) -> str:
    return "never (< 1e9x)" if math.isinf(value) else f"{value:.3g}x"


def glance_table(summary: dict[str, Any]) -> list[str]:
    """Every selector's seed-mean target loss (and exact match) at each subset fraction, one row per
    (training model, target, selector), with the seeds each mean is over and the selection FLOPs."""
    by_cell: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for a in summary["analyses"]:
        if a.get("points"):
            by_cell.setdefault((a["model"], a["target"]), {})[a["metric"]] = a
    fractions = sorted({p["fraction"] for a in summary["analyses"] for p in a.get("points", [])})
    lines = [
        "## Seed means at a glance",
        "",
        "Target test loss / exact match (where the target has it), mean over the seeds recorded (n: the "
        "fewest seeds of the row's fractions), per subset fraction; selection FLOPs are the selector's on the "
        "whole pool for the target.",
        "",
        "| model | target | selector | "
        + " | ".join(f"{f:g} of the pool" for f in fractions)
        + " | n | selection FLOPs |",
        "|---|---|---|" + "---|" * (len(fractions) + 2),
    ]
    for (model, target), metrics in by_cell.items():
        loss = metrics.get("target_loss") or next(iter(metrics.values()))
        accuracy = metrics.get("exact_match") if loss["metric"] == "target_loss" else None
        for label in sorted({p["selector"] for p in loss["points"]}):
            mine = {p["fraction"]: p for p in loss["points"] if p["selector"] == label}
            hits = {p["fraction"]: p for p in (accuracy or {}).get("points", []) if p["selector"] == label}
            cells = []
            for fraction in fractions:
                point = mine.get(fraction)
                cell = f"{point['value']:.3f}" if point else "-"
                if point and fraction in hits:
                    cell += f" / {hits[fraction]['value']:.2f}"
                cells.append(cell)
            seeds = min(p["seeds"] for p in mine.values())
            flops = max(p["selection_flops"] for p in mine.values())
            lines.append(
                f"| {short_name(model)} | {target} | {label} | " + " | ".join(cells) + f" | {seeds} | {flops:.2g} |"
            )
    return lines + [""]


def summary_tables(summary: dict[str, Any]) -> list[str]:
    """The headline tables: frontier selector and planner regret per budget, crossover ratios, and
    the seed means at a glance."""
    from hf_cads.planner import BENT_SHARE, EXTRAPOLATION_WARNING

    lines = [
        "## Frontier selectors per budget, and the planner's regret",
        "",
        "Budgets are multiples of C_full, the FLOPs of training the model on the whole pool once. 'Frontier' is "
        "the best measured configuration within the budget (mean over seeds, 95% t-interval; 'untrained' = "
        "not finetuning at all beats every finetune within the budget); 'planner' is "
        "the planner's recommendation from the fitted curves; regret = frontier value - the best affordable "
        "measured value of the recommended selector (metric units, 0 = the planner picked the frontier's "
        f"selector or one as good). A k more than {EXTRAPOLATION_WARNING:g}x the largest measured k of its selector "
        "is marked: there the recommendation extrapolates the fitted curve.",
        "",
        "| model | target | metric | budget (x C_full) | FLOPs | frontier: selector | k | value [95%] | planner: "
        "selector | k | regret |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in summary["analyses"]:
        if "error" in a:
            continue
        for row in a["regret"]:
            planner = f"{row['planner_selector']} | {row['planner_k']}" if row.get("planner_selector") else "- | -"
            spread = (
                "(1 seed)"
                if row.get("best_seeds") == 1 and not row["best_interval"]
                else _interval(row["best_interval"])
            )
            if (row.get("planner_extrapolation") or 0) > EXTRAPOLATION_WARNING:
                planner += f" ({row['planner_extrapolation']:.1f}x the largest measured k)"
            lines.append(
                f"| {short_name(a['model'])} | {a['target']} | {a['metric']} | {row['budget_multiple']:g} | "
                f"{row['budget']:.3g} | {_fmt(row['best_selector'])} | {_fmt(row['best_k'])} | "
                f"{_fmt(row['best_value'])} {spread} | {planner} | "
                f"{_fmt(row.get('regret'), 3)} |"
            )
    lines += [
        "",
        "## Extrapolated crossover: from which train / selection model size ratio does an LM-based selector "
        "join the frontier?",
        "",
        "From each (model, target) curve set, training costs are scaled with the training model while the "
        "selection model (SmolLM2-135M) stays; an LM-based selector joins the frontier at the smallest ratio at "
        "which, at some budget between 0.02 and 1 x C_full, its fitted curve beats every cheap selector's "
        "(random, bm25, embedding). The measured ratio is 1 for SmolLM2 training and ~2 for Gemma-3-270M. "
        "Reference paper (Yin & Rush): perplexity ~5x, LESS ~10x. 'Fit measured' is the share of the "
        "selector's fitted change P0 -> P_max that its largest run reached. A crossover counts only where the "
        f"runs bent the curve (>= {BENT_SHARE:g} measured, and an asymptote off the fit's bounds: not a loss "
        "falling to 0, not an exact match rising to 1; hf_cads.planner.unbent_fit_reason). Otherwise the curve is "
        "a line through points that have not bent yet, which beats any saturating cheap curve far enough out: "
        "such ratios are marked 'unsaturated fit' and are not findings.",
        "",
        "| model | target | metric | selector | crossover ratio | 95% bootstrap | joins at 1 / 2 / 5 / 10 / 20x | "
        "fit measured | paper |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for a in summary["analyses"]:
        if "error" in a:
            continue
        for label, c in a["crossover"].items():
            joins = " / ".join("yes" if c["joins"][f"{r:g}"] else "no" for r in CROSSOVER_RATIOS)
            ratio = _ratio(c["ratio"])
            paper = "-" if c["paper_ratio"] is None else f"{_fmt(c['paper_ratio'])}x"
            measured = f"{c['gain_measured']:.2f}" if "gain_measured" in c else "-"
            if "saturated" in c and not c["saturated"]:
                ratio += " (unsaturated fit)"
                measured += f" (P_max {c['asymptote']:.3g})"
            lines.append(
                f"| {short_name(a['model'])} | {a['target']} | {a['metric']} | {label} | {ratio} | "
                f"{_interval(c.get('ratio_95'))} | {joins} | {measured} | {paper} |"
            )
    return lines + ([""] + glance_table(summary) if any(a.get("points") for a in summary["analyses"]) else [])


def markdown(setup: Setup, summary: dict[str, Any]) -> str:
    t, m, progress = summary["timing"], summary["machine"], summary["progress"]
    quick = setup.name.endswith("quick")
    pool = summary.get("pool") or {}
    lines = [f"# Compute-optimal data selection — `{setup.name}`", ""]
    lines += [
        f"Training models {list(setup.models)} with LoRA r={setup.lora_r} (q/k/v/o), one epoch on the selected rows, "
        f"batch {setup.train_batch_size}, lr {setup.learning_rate} constant, sequences <= {setup.max_seq_length} "
        "tokens. "
        f"LM-based selectors score with {setup.selection_model or 'the trained model'}. Pool: the shared "
        "multi-source mix "
        f"(gsm8k, code_alpaca, alpaca_seed, every BBH task; <= {setup.max_per_source} rows per source, <= "
        f"{setup.max_pool_chars} characters, deduplicated) decontaminated against every target's test rows: "
        f"{pool.get('pool_size', '?')} rows. Targets {list(setup.targets)}; selectors {list(setup.selectors)}; "
        "fractions "
        f"{list(setup.fractions)}; seeds {list(setup.seeds)}; {setup.eval_examples} test rows per target (exact match "
        f"where every answer is < {setup.exact_match_max_new_tokens} tokens).",
        "",
        f"**Progress: {progress['done']} of {progress['planned']} planned runs recorded** "
        f"({', '.join(f'{short_name(k)}: {v}' for k, v in progress['per_model'].items()) or 'none'}); "
        f"{progress['cpu_hours']:.2f} CPU hours in the recorded runs (model loading and analysis excluded).",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), GPU: "
        f"{m['gpu']}. "
        "Other engineers shared the machine (load averages below).",
    ]
    if pool.get("decontamination"):
        d = pool["decontamination"]
        lines += [
            "",
            f"Decontamination ({d['ngram_size']}-grams, min overlap {setup.decontamination_min_overlap}): dropped "
            f"{d['dropped']} of {d['pool_size']} pool rows ({d['exact']} exact, {d['ngram']} n-gram; per test set "
            f"{d['dropped_per_test_set']}). Examples: "
            + "; ".join(
                f"pool row {e['pool_row']} = {e['test_set']}[{e['test_row']}] ({e['kind']})"
                for e in pool.get("decontamination_examples", [])[:3]
            ),
        ]
    lines += [""] + summary_tables(summary)
    lines += [
        "",
        "## Time",
        "",
        "| finished | grid runs | ran | already recorded | failed | wall s | CPU s | CPU s per core | "
        "load average before -> after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for inv in summary["invocations"]:
        lines.append(
            f"| {inv['finished']} | {inv['grid_runs']} | {inv['ran']} | {inv['skipped']} | {len(inv['failed'])} | "
            f"{inv['wall_seconds']:.0f} | {inv['cpu_seconds']:.0f} | {inv['cpu_seconds_per_core']:.0f} | "
            f"{inv['load_average_before'][0]} -> {inv['load_average_after'][0]} |"
        )
    lines += [
        "",
        "Wall time includes loading the model, the data and the encoder. CPU seconds count every thread "
        "of the process; CPU seconds per core approximate the wall time on an idle machine with this many cores. "
        "An invocation stopped by a signal records no row here; its runs' CPU time is in the progress line.",
    ]
    fresh = [inv for inv in summary["invocations"] if inv["skipped"] == 0 and inv["ran"] == inv["grid_runs"] > 0]
    if quick and fresh:
        inv = fresh[-1]
        met = inv["wall_seconds"] < QUICK_GOAL_SECONDS
        idle = inv["cpu_seconds_per_core"] < QUICK_GOAL_SECONDS
        lines.append(
            f"Goal (quick mode < 15 min, whole grid in one invocation): wall {'met' if met else 'NOT met'} "
            f"({inv['wall_seconds'] / 60:.1f} min on the shared machine); CPU per core "
            f"{'met' if idle else 'NOT met'} ({inv['cpu_seconds_per_core'] / 60:.1f} min)."
        )
    for description, error in t["failed"].items():
        lines.append(f"- FAILED {description}: {error}")
    lines += [
        "",
        "## Cost of each selector's runs (this machine)",
        "",
        "| selector | runs | wall s | CPU s |",
        "|---|---|---|---|",
    ]
    for name, cost in sorted(summary["per_selector_cost"].items()):
        lines.append(f"| {name} | {cost['runs']} | {cost['seconds']:.0f} | {cost['cpu_seconds']:.0f} |")
    for analysis in summary["analyses"]:
        metric = METRIC_NAMES.get(analysis["metric"], analysis["metric"])
        lines += ["", f"## {short_name(analysis.get('model', setup.model))}, {analysis['target']}: {metric}", ""]
        if "error" in analysis:
            lines.append(f"No analysis: {analysis['error']}")
            continue
        lines += [
            f"![{analysis['target']} {metric}]({Path(analysis['png']).name})",
            "",
            f"{analysis['runs']} runs, seeds {analysis['seeds']}. Fits: the planner's P(C) per selector (the "
            "untrained "
            f"model at 0 FLOPs anchors P0); 95% intervals from {analysis['bootstrap_resamples']} bootstrap resamples "
            f"of the {analysis['bootstrap_unit']}.",
            "",
            "| selector | points | P0 [95%] | P_max [95%] | lambda [95%] | rmse | C_select |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, fit in analysis["fits"].items():
            lines.append(
                f"| {label} | {fit['points']} | {fit['p0']:.4g} {_interval(fit['p0_95'])} | {fit['p_max']:.4g} "
                f"{_interval(fit['p_max_95'])} | {fit['lambda']:.3g} {_interval(fit['lambda_95'])} | "
                f"{fit['rmse']:.3g} | "
                f"{fit['selection_flops']:.3g} |"
            )
        for label, reason in analysis["no_fit"].items():
            lines.append(f"| {label} | - | no fit: {reason} | | | | |")
        lines += [
            "",
            "Frontier of the seed means:",
            "",
            "| selector | fraction | k | seeds | total FLOPs | value [95%] |",
            "|---|---|---|---|---|---|",
        ]
        for p in analysis["frontier"]:
            lines.append(
                f"| {p['selector']} | {p['fraction']:g} | {p['k']} | {p['seeds']} | {p['total_flops']:.3g} | "
                f"{p['value']:.4g} {_interval([p['low'], p['high']], 4)} |"
            )
        lines += [
            "",
            "All seed means:",
            "",
            "| selector | fraction | k | seeds | selection FLOPs | total FLOPs | value [95%] |",
            "|---|---|---|---|---|---|---|",
        ]
        for p in analysis["points"]:
            lines.append(
                f"| {p['selector']} | {p['fraction']:g} | {p['k']} | {p['seeds']} | {p['selection_flops']:.3g} | "
                f"{p['total_flops']:.3g} | {p['value']:.4g} {_interval([p['low'], p['high']], 4)} |"
            )
    lines += [
        "",
        "## Runs",
        "",
        "| model | target | selector | fraction | k | seed | selection FLOPs | train FLOPs | total FLOPs | "
        "target loss (before) | exact match (before) | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(
        summary["runs"], key=lambda r: (r["model"], r["target"], r["selector"], r["fraction"] or 0, r["seed"])
    ):
        em = r["metrics"].get("exact_match")
        lines.append(
            f"| {short_name(r['model'])} | {r['target']} | {r['selector']} | {_fmt(r['fraction'])} | {r['k']} | "
            f"{r['seed']} | "
            f"{r['selection_flops']:.3g} | {r['train_flops']:.3g} | {r['total_flops']:.3g} | "
            f"{r['metrics']['target_loss']:.4f} "
            f"({r['baseline_metrics'].get('target_loss', float('nan')):.4f}) | "
            + (f"{em:.3f} ({r['baseline_metrics'].get('exact_match', float('nan')):.3f})" if em is not None else "-")
            + f" | {_fmt(r['seconds'], 3)} |"
        )
    lines += [
        "",
        "## Settings",
        "",
        "Selector options (CADS also gets `train_budget` = the training FLOPs of the subset size it selects for):",
        "",
        "```json",
        json.dumps(setup.selector_options, indent=1),
        "```",
    ]
    if summary["cads_train_budgets"]:
        lines += [
            "",
            "CADS training budgets: " + ", ".join(f"{k}: {v:.3g}" for k, v in summary["cads_train_budgets"].items()),
        ]
    return "\n".join(lines) + "\n"


def write_results(setup: Setup, summary: dict[str, Any]) -> None:
    write_json(setup.name, summary, setup.results_dir, indent=1)
    text = markdown(setup, summary)
    write_markdown(setup.name, text, setup.results_dir)
    print(text)


# -- command line --------------------------------------------------------------------------------
def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    started = (time.time(), cpu_seconds())
    parser = make_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="the < 15 min CPU mode (its own records and results)")
    parser.add_argument("--selectors", type=_names, help=f"run only these (comma-separated, of {','.join(SELECTORS)})")
    parser.add_argument("--fractions", type=_floats, help="run only these subset fractions, e.g. 0.05,0.1")
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in _names(s)], help="run only these seeds, e.g. 0,1")
    parser.add_argument("--targets", type=_names, help="run only these targets, e.g. boolean_expressions,gsm8k")
    parser.add_argument("--train-models", type=_names, help="train only these models, e.g. gemma3-270m")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's; 1 on a shared machine)")
    parser.add_argument("--bootstrap", type=int, default=100, help="bootstrap resamples of the analysis (default 100)")
    parser.add_argument("--report-only", action="store_true", help="run nothing; refit and redraw from the records")
    options = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    setup = QUICK if options.quick else FULL
    if options.threads:
        import torch

        torch.set_num_threads(options.threads)
    from hf_cads.cache import CACHE_ENV

    os.environ.setdefault(CACHE_ENV, str(setup.run_dir / "score_cache"))
    run_benchmark(
        setup,
        targets=options.targets,
        selectors=options.selectors,
        fractions=options.fractions,
        seeds=options.seeds,
        train_models=options.train_models,
        run=not options.report_only,
        started=started,
        resamples=options.bootstrap,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
