"""``hf-cads sweep``: run selectors x subset sizes x seeds and record each run for the planner.

A sweep file is a recipe (the flat ``RunConfig`` + ``BudgetedTrainingArguments`` options of
``hf-cads run``) plus a ``sweep:`` section::

    model_name_or_path: smollm2-135m-instruct    # alias, Hub id or a local folder
    flop_budget: null                            # no cap: fixed epochs, so C = c*k + C_select
    num_train_epochs: 1
    output_dir: outputs/sweep                    # run i writes <output_dir>/<label>-<size>-seed<s>/
    sweep:
      selectors: [random, {name: bm25, kwargs: {aggregate: max}}, perplexity]
      fractions: [0.05, 0.1, 0.2, 0.4]           # or ks: [20, 50, 100]
      seeds: [0, 1]
      plot: outputs/sweep/planner.png            # default: <records>_planner.png

Every run goes through :func:`hf_cads.pipeline.run_budgeted_finetune`, which appends its record to
``run_records`` (default ``<output_dir>/runs.jsonl``). Runs whose key is already in that file are
skipped, so an interrupted sweep resumes where it stopped. The data and the model are loaded once
per seed and copied per run. Under ``accelerate launch`` every process trains, only the main
process writes records and the plot.

Example:
    >>> from hf_cads.sweep_grid import run_sweep  # doctest: +SKIP
    >>> summary = run_sweep(find_recipe("sweep"))  # doctest: +SKIP
    >>> summary.records_path, summary.ran, summary.skipped  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SWEEP_SECTION = "sweep"
_SIZE_OPTIONS = ("selection_fraction", "selection_k", "selector", "selector_kwargs", "seed", "output_dir")


@dataclass(frozen=True)
class SelectorSpec:
    """One selector of a sweep: its registry name and options (``selector_kwargs``)."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: Any, source: str) -> SelectorSpec:
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, dict) and "name" in value and set(value) <= {"name", "kwargs"}:
            kwargs = value.get("kwargs") or {}
            if not isinstance(kwargs, dict):
                raise ValueError(f"{source}: kwargs of selector {value['name']!r} must be a mapping, got {kwargs!r}.")
            return cls(str(value["name"]), dict(kwargs))
        raise ValueError(
            f"{source}: a sweep selector is a name (bm25) or {{name: bm25, kwargs: {{aggregate: max}}}}, "
            f"got {value!r}."
        )


@dataclass
class SweepSpec:
    """The ``sweep:`` section: which selectors, subset sizes (fractions or ks) and seeds to run."""

    selectors: list[SelectorSpec]
    seeds: list[int]
    fractions: list[float] = field(default_factory=list)
    ks: list[int] = field(default_factory=list)
    plot: str | None = None
    metric: str = "target_loss"

    @classmethod
    def from_dict(cls, data: Any, source: str) -> SweepSpec:
        if not isinstance(data, dict):
            raise ValueError(
                f"{source}: the '{SWEEP_SECTION}:' section must be a mapping (selectors, fractions, seeds)."
            )
        known = {"selectors", "fractions", "ks", "seeds", "plot", "metric"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown sweep option(s) {unknown}; valid: {sorted(known)}.")
        selectors = data.get("selectors")
        if not isinstance(selectors, list) or not selectors:
            raise ValueError(f"{source}: sweep.selectors must be a non-empty list, e.g. [random, bm25].")
        fractions, ks = data.get("fractions") or [], data.get("ks") or []
        if bool(fractions) == bool(ks):
            raise ValueError(
                f"{source}: give sweep.fractions (shares of the pool) or sweep.ks (row counts), one of them."
            )
        if any(not isinstance(f, (int, float)) or isinstance(f, bool) or not 0 < f <= 1 for f in fractions):
            raise ValueError(f"{source}: sweep.fractions must be numbers in (0, 1], got {fractions}.")
        if any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in ks):
            raise ValueError(f"{source}: sweep.ks must be integers >= 1, got {ks}.")
        seeds = data.get("seeds", [42])
        if (
            not isinstance(seeds, list)
            or not seeds
            or any(not isinstance(s, int) or isinstance(s, bool) for s in seeds)
        ):
            raise ValueError(f"{source}: sweep.seeds must be a non-empty list of integers, got {seeds!r}.")
        from .selectors import get_selector_class

        specs = [SelectorSpec.parse(value, source) for value in selectors]
        for spec in specs:
            get_selector_class(spec.name)  # unknown names fail here, listing the registered ones
        return cls(
            specs,
            list(seeds),
            [float(f) for f in fractions],
            list(ks),
            data.get("plot"),
            data.get("metric", "target_loss"),
        )

    def sizes(self) -> list[tuple[str, float | int]]:
        """``("selection_fraction", f)`` or ``("selection_k", k)`` for each subset size."""
        return [("selection_fraction", f) for f in self.fractions] or [("selection_k", k) for k in self.ks]


@dataclass
class SweepRun:
    """One point of the grid, parsed into the pipeline's two config objects."""

    selector: SelectorSpec
    size: tuple[str, float | int]
    seed: int
    run: Any
    args: Any
    key: str

    @property
    def description(self) -> str:
        from .records import run_label

        name, value = self.size
        size = f"fraction={value:g}" if name == "selection_fraction" else f"k={value}"
        return f"{run_label(self.selector.name, self.selector.kwargs)} {size} seed={self.seed}"


@dataclass
class SweepSummary:
    """What a sweep did: where the records are, how many runs ran / were skipped / failed, the plot."""

    records_path: Path
    ran: int
    skipped: int
    failed: dict[str, str]
    plot_path: Path | None
    report: str = ""


def load_sweep(
    path: str | os.PathLike, overrides: Sequence[str] | None = None
) -> tuple[list[SweepRun], SweepSpec, Path]:
    """Read a sweep file into its runs (in order: seed, selector, size), the spec and the records path."""
    from .pipeline import read_yaml_file, recipe_from_dict, run_records_path

    path = Path(path)
    data = read_yaml_file(path, "Sweep file", "pass a sweep YAML (see hf-cads recipes --path sweep).")
    if not isinstance(data, dict) or SWEEP_SECTION not in data:
        raise ValueError(f"Sweep file {str(path)!r} must be a recipe mapping with a '{SWEEP_SECTION}:' section.")
    spec = SweepSpec.from_dict(data.pop(SWEEP_SECTION), str(path))
    base = {key: value for key, value in data.items() if key not in _SIZE_OPTIONS}
    ignored = sorted(set(data) & set(_SIZE_OPTIONS) - {"output_dir"})
    if ignored:
        logger.warning("%s: %s are set by the sweep section and ignored at the top level.", path, ignored)
    output_dir = Path(str(data.get("output_dir") or "outputs/sweep"))
    base_run, base_args = recipe_from_dict({**base, "output_dir": str(output_dir)}, list(overrides or []), str(path))
    records = Path(run_records_path(base_run, base_args))
    base["run_records"] = str(records)
    runs = [
        sweep_run(base, selector, size, seed, output_dir, overrides, str(path))
        for seed in spec.seeds
        for selector in spec.selectors
        for size in spec.sizes()
    ]
    return runs, spec, records


def sweep_run(
    base: dict[str, Any],
    selector: SelectorSpec,
    size: tuple[str, float | int],
    seed: int,
    output_dir: str | os.PathLike,
    overrides: Sequence[str] | None = None,
    source: str = "<dict>",
) -> SweepRun:
    """One point of a grid: the recipe options ``base`` (which should name ``run_records``) with this
    selector, subset size (``("selection_fraction", 0.1)`` or ``("selection_k", 50)``) and seed, writing
    to ``<output_dir>/<label>-<size>-seed<seed>/``. Build your own grids (e.g. options that depend on
    the size) from these and run them with :func:`run_sweep_runs`."""
    from .pipeline import expected_run_key, recipe_from_dict

    name, value = size
    label = f"{selector.name}-{'_'.join(f'{k}-{v}' for k, v in sorted(selector.kwargs.items()))}"
    folder = _safe_name(f"{label.rstrip('-')}-{'f' if name == 'selection_fraction' else 'k'}{value:g}-seed{seed}")
    options = {
        **base,
        "selector": selector.name,
        "selector_kwargs": selector.kwargs or None,
        name: value,
        "seed": seed,
        "output_dir": str(Path(output_dir) / folder),
    }
    run, args = recipe_from_dict(options, list(overrides or []), source)
    return SweepRun(selector, size, seed, run, args, expected_run_key(run, args))


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text)


def run_sweep(
    path: str | os.PathLike, overrides: Sequence[str] | None = None, *, budget: float | None = None
) -> SweepSummary:
    """Run every not-yet-recorded point of the sweep, then fit and plot all records of its file.

    ``budget`` (optional) adds the planner's recommendation for that many FLOPs to the report.
    """
    from accelerate import PartialState

    runs, spec, records_path = load_sweep(path, overrides)
    logger.info("Sweep %s", path)
    summary = run_sweep_runs(runs, records_path)
    if PartialState().is_main_process and records_path.is_file():
        summary.plot_path, summary.report = _plan_and_plot(records_path, spec, runs, budget)
    return summary


def run_sweep_runs(
    runs: Sequence[SweepRun],
    records_path: str | os.PathLike,
    *,
    models: dict[tuple[str, str | None], tuple[Any, Any]] | None = None,
) -> SweepSummary:
    """Run each of ``runs`` whose key is not yet in ``records_path`` (their records go there), loading
    the data once per seed and target and the model once; a failed run is reported, not raised.

    ``models`` maps ``(model_name_or_path, attn_implementation)`` to a loaded ``(model, tokenizer)``:
    pass a dict to reuse models loaded earlier (it is filled with the ones loaded here)."""
    from accelerate import PartialState

    from .pipeline import load_run_inputs, run_budgeted_finetune
    from .records import recorded_keys

    records_path = Path(records_path)
    state = PartialState()
    done = recorded_keys(records_path)
    todo = [r for r in runs if r.key not in done]
    # Every process must agree on the list before the main one starts appending to the file.
    state.wait_for_everyone()
    logger.info("%d runs, %d already recorded in %s", len(runs), len(runs) - len(todo), records_path)
    failed: dict[str, str] = {}
    models = {} if models is None else models
    inputs_key: tuple[Any, ...] | None = None
    inputs = None
    for position, item in enumerate(todo, start=1):
        if state.is_main_process:
            print(f"[sweep {position}/{len(todo)}] {item.description}", flush=True)
        model_key = (item.run.model_name_or_path, item.run.attn_implementation)
        data_key = (
            item.seed,
            item.run.target,
            tuple(item.run.pool_sources),
            item.run.max_per_source,
            item.run.max_pool_chars,
            item.run.eval_examples,
            item.run.data_dir,
            item.run.pool,
            item.run.eval,
            item.run.decontaminate,
            tuple(item.run.decontamination_options().values()),
            model_key,
        )
        try:
            if inputs is None or inputs_key != data_key:
                inputs = None  # release the previous pool before loading the next
                if model_key not in models:
                    loaded = load_run_inputs(item.run, item.args)
                    models[model_key] = (loaded.model, loaded.tokenizer)
                    inputs = loaded
                else:
                    inputs = load_run_inputs(item.run, item.args, models[model_key])
                inputs_key = data_key
            report = run_budgeted_finetune(item.run, item.args, inputs)
        except (ValueError, TypeError, RuntimeError, OSError) as err:
            failed[item.description] = str(err)
            logger.error("Sweep run %s failed: %s", item.description, err)
            continue
        if state.is_main_process:
            print(
                f"    k={report['k']}  total FLOPs {report['ledger']['total']:.4g}  target loss "
                f"{report['target_loss_before']:.4f} -> {report['target_loss_after']:.4f}",
                flush=True,
            )
    state.wait_for_everyone()
    return SweepSummary(records_path, len(todo) - len(failed), len(runs) - len(todo), failed, None)


def _plan_and_plot(
    records_path: Path, spec: SweepSpec, runs: list[SweepRun], budget: float | None
) -> tuple[Path | None, str]:
    from .planner import make_plan, plot_plan
    from .records import read_records

    first = runs[0].run
    records = read_records(records_path)
    try:
        plan = make_plan(
            records, metric=spec.metric, budget=budget, model=first.model_name_or_path, target=first.target
        )
    except ValueError as err:
        return None, f"no plan: {err}"
    plot = Path(spec.plot) if spec.plot else records_path.with_name(records_path.stem + "_planner.png")
    return plot_plan(plan, plot), plan.format()
