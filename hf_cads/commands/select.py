"""``hf-cads select [RECIPE] --local-dir DIR [--targets A B ...]``: run a recipe's selector only and
write the subset + card (one per target with ``--targets``)."""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data import TaskData, load_targets_data, parse_source, source_composition, target_preset
from ..decontamination import ContaminationReport
from ..distributed import current_processes
from ..flops import FlopLedger
from ..models import load_causal_lm
from ..package_data import default_recipe, find_recipe
from ..pipeline import (
    Decontamination,
    RunConfig,
    decontaminate_run_data,
    load_run_data,
    model_load_options,
    on_loaded_pool,
    parse_recipe,
    save_subset,
)
from ..selectors import build_selector, get_selector_class, select_for_targets, select_within_budget
from ..selectors.base import Selector
from ..selectors.result import SelectionResult
from ..selectors.within_budget import ONE_PASS, SCORED_ONCE, TargetSelections

TARGET_FIELD = "{target}"
"""Placeholder of ``--repo-id`` with ``--targets``: each target's folder names its own repo."""


def main(argv: Sequence[str]) -> int:
    """``hf-cads select [RECIPE] --local-dir DIR [--targets A B ...] [--repo-id ID] [--config-name NAME]
    [--overwrite] [--option value ...]``

    Runs the recipe's selector on its pool and target (no training) and writes the selection as a
    dataset folder: exactly what ``hf-cads push DIR REPO_ID`` uploads. With ``--targets`` it
    selects for each of several targets from one pool (LESS in one pass: pool features once,
    target gradients per target) and writes one folder per target, ``DIR/<target>``.
    """
    parser = argparse.ArgumentParser(prog="hf-cads select", allow_abbrev=False, description=main.__doc__)
    parser.add_argument("--local-dir", required=True, help="folder to write the parquet shards and README.md to")
    parser.add_argument(
        "--repo-id",
        default=None,
        help="dataset repo the folder is meant for (used in the card's reload code); "
        "with --targets it must contain {target}, e.g. me/bbh-less-{target}",
    )
    parser.add_argument("--config-name", default="default", help="dataset config to write (default: default)")
    parser.add_argument("--overwrite", action="store_true", help="replace the config if the folder already has it")
    parser.add_argument(
        "--targets",
        nargs="+",
        default=None,
        metavar="TARGET",
        help="select for several targets (built-in names or data files) from one pool, one folder each",
    )
    argv = list(argv)
    # As for `hf-cads run`: an optional recipe first, then flags; flags this parser does not know
    # override recipe options.
    recipe = find_recipe(argv.pop(0)) if argv and not argv[0].startswith("-") else default_recipe()
    args, overrides = parser.parse_known_args(argv)
    run, training = parse_recipe(recipe, overrides)
    if training.selector is None:
        raise ValueError(f"Recipe {str(recipe)!r} names no selector; set `selector:` (see `hf-cads selectors`).")
    if args.targets is not None:
        return select_targets(run, training, args, overrides)
    data = load_run_data(run, training.seed)
    validation, pool, decontamination = decontaminate_run_data(run, data)
    selector = recipe_selector(run, training)
    result, _ = select_within_budget(
        selector,
        pool,
        validation,
        FlopLedger(budget=training.flop_budget),
        k=training.selection_k,
        fraction=training.selection_fraction,
    )
    result = on_loaded_pool(result, data.pool, decontamination)
    if not current_processes().is_main:
        return 0
    print_decontamination(decontamination)
    folder = save_target(result, args.local_dir, data, validation, args.repo_id, args, training.flop_budget)
    sources = source_composition(result.dataset)
    print(
        f"hf-cads select: kept {len(result)} of {result.pool_size} rows with {result.selector} "
        + (f"{sources} " if sources else "")
        + f"({result.flops:.4g} FLOPs); wrote {folder} (load_dataset({str(folder)!r}, {args.config_name!r}))",
        flush=True,
    )
    return 0


def recipe_selector(run: RunConfig, training: Any) -> Selector:
    """The recipe's selector, scoring with the model the recipe finetunes where it reuses it."""
    model = tokenizer = None
    options = dict(training.selector_kwargs or {})
    if run.selection_text == "prompt":
        options.update(text_column="prompt", target_text_column="prompt")
    if get_selector_class(training.selector).reuses_training_model and "model_name_or_path" not in options:
        # The selector scores with the model the recipe finetunes, loaded as `hf-cads run` loads it.
        model, tokenizer = load_causal_lm(run.model_name_or_path, **model_load_options(run))
    return build_selector(
        training.selector, options, seed=training.seed, training_model=model, training_tokenizer=tokenizer
    )


def save_target(
    result: SelectionResult,
    folder: Any,
    data: TaskData,
    validation: Any,
    repo_id: str | None,
    args: Any,
    flop_budget: float | None,
) -> Path:
    """Write one selection folder (parquet shards + dataset card) of a target."""
    return save_subset(
        result,
        folder,
        data,
        validation,
        repo_id=repo_id,
        flop_budget=flop_budget,
        config_name=args.config_name,
        overwrite=args.overwrite,
    )


def print_decontamination(decontamination: Decontamination | None) -> None:
    if decontamination is not None:
        summary = decontamination.summary()
        print(
            f"decontamination ({summary['mode']}): {summary['pool_rows_overlapping']} pool rows overlap the eval "
            "rows, "
            f"{summary['pool_rows_dropped']} dropped",
            flush=True,
        )


# -- several targets ---------------------------------------------------------------------------
def select_targets(run: RunConfig, training: Any, args: Any, overrides: Sequence[str]) -> int:
    """``hf-cads select --targets A B ...``: one pool, one selector, one folder per target."""
    if any(flag == "--target" or flag.startswith("--target=") for flag in overrides):
        raise ValueError("Pass either --target NAME (one target) or --targets NAME [NAME ...] (several), not both.")
    if args.repo_id is not None and TARGET_FIELD not in args.repo_id:
        raise ValueError(
            f"--repo-id {args.repo_id!r} names one dataset repo, but --targets writes a folder per target; put "
            f"{TARGET_FIELD} in it (e.g. me/bbh-less-{{target}}) or leave --repo-id out and push each folder with "
            "hf-cads push DIR/NAME REPO_ID."
        )
    names = target_folder_names(args.targets, run.data_dir)
    tasks = dict(
        zip(
            names,
            load_targets_data(
                args.targets,
                run.pool,
                run.eval,
                data_dir=run.data_dir,
                pool_sources=run.pool_sources,
                max_per_source=run.max_per_source,
                max_pool_chars=run.max_pool_chars,
                eval_examples=run.eval_examples,
                seed=training.seed,
            ),
        )
    )
    validations, pool, decontaminations = decontaminate_targets(run, tasks)
    selector = recipe_selector(run, training)
    chosen = select_for_targets(
        selector,
        pool,
        validations,
        FlopLedger(budget=training.flop_budget),
        k=training.selection_k,
        fraction=training.selection_fraction,
    )
    loaded_pool = next(iter(tasks.values())).pool
    results = {name: on_loaded_pool(chosen.results[name], loaded_pool, decontaminations.get(name)) for name in names}
    if not current_processes().is_main:
        return 0
    print_decontamination(next(iter(decontaminations.values()), None))
    print(f"hf-cads select: {describe_path(selector, chosen)}", flush=True)
    for name in names:
        result = results[name]
        repo_id = args.repo_id.replace(TARGET_FIELD, name) if args.repo_id else None
        folder = save_target(
            result, Path(args.local_dir) / name, tasks[name], validations[name], repo_id, args, training.flop_budget
        )
        print(
            f"  {name}: kept {len(result)} of {result.pool_size} rows, {charge_line(chosen, name)}; wrote {folder} "
            f"(load_dataset({str(folder)!r}, {args.config_name!r}))",
            flush=True,
        )
    print(f"hf-cads select: {total_line(chosen, training.flop_budget)}", flush=True)
    return 0


def target_folder_names(targets: Sequence[str], data_dir: Any = None) -> list[str]:
    """A folder name per target (a built-in target's name, a file's stem, a folder's or Hub id's
    name), after checking that every target exists and none is given twice."""
    seen: dict[tuple[str, str], str] = {}
    names: list[str] = []
    for target in targets:
        preset = target_preset(target, data_dir)  # an unknown bare name raises, naming the built-in targets
        if preset is not None:
            identity, name = ("preset", preset), preset
        else:
            source = parse_source(target, "target")  # a missing file or folder raises, naming the path
            files = source.data_files if isinstance(source.data_files, str) else None
            location = files or source.path
            local = Path(location).expanduser()
            identity = ("path", str(local.resolve())) if local.exists() else ("hub", f"{source.path}:{source.split}")
            name = Path(files).stem if files else (local.name if local.exists() else source.path.replace("/", "__"))
            name += f"-{source.split}" if source.split not in (None, "train") else ""
        if identity in seen:
            again = "twice" if seen[identity] == target else f"twice (as {seen[identity]!r} and {target!r})"
            raise ValueError(f"--targets names the target {target!r} {again}; list each target once.")
        seen[identity] = target
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "target"
        unique, number = name, 2
        while unique in names:
            unique, number = f"{name}-{number}", number + 1
        names.append(unique)
    return names


def decontaminate_targets(
    run: RunConfig, tasks: dict[str, TaskData]
) -> tuple[dict[str, Any], Any, dict[str, Decontamination]]:
    """Each target's validation rows and the one pool to select from: without the pool rows that
    overlap any target's test rows (``decontaminate: drop``), and per target what was found (its
    card lists the pool rows dropped for every target)."""
    pool = next(iter(tasks.values())).pool
    if run.decontaminate == "off":
        return {name: task.validation for name, task in tasks.items()}, pool, {}
    checked = {name: decontaminate_run_data(run, task) for name, task in tasks.items()}
    first_matches: dict[int, Any] = {}
    for name, (_, _, found) in checked.items():
        for match in found.pool_report.matches:  # type: ignore[union-attr]
            first_matches.setdefault(match.pool_row, dataclasses.replace(match, test_set=f"{name} {match.test_set}"))
    merged = ContaminationReport(
        matches=[first_matches[row] for row in sorted(first_matches)],
        pool_size=len(pool),
        test_sizes={f"{name} eval": len(task.test) for name, task in tasks.items()},
        counts={f"{name} eval": len(found.pool_report.matches) for name, (_, _, found) in checked.items()},  # type: ignore[union-attr]
        **run.decontamination_options(),
    )
    found_per_target = {
        name: Decontamination(merged, found.target_report, merged.keep_rows, run.decontaminate)  # type: ignore[union-attr]
        for name, (_, _, found) in checked.items()
    }
    if run.decontaminate == "drop" and merged.matches:
        if not merged.keep_rows:
            raise ValueError(
                "No pool row is left after decontamination: every one overlaps some target's eval rows; check that "
                "pool and eval differ."
            )
        pool = pool.select(merged.keep_rows)
    return {name: validation for name, (validation, _, _) in checked.items()}, pool, found_per_target


def describe_path(selector: Selector, chosen: TargetSelections) -> str:
    count = f"{len(chosen.charges)} targets"
    if chosen.path == ONE_PASS:
        return f"{selector.name} for {count} in one pass: pool features computed once, target gradients per target"
    if chosen.path == SCORED_ONCE:
        where = (
            "a temporary score cache (set cache_dir to keep it)"
            if chosen.score_cache_temporary
            else f"the score cache {chosen.score_cache}"
        )
        return (
            f"{selector.name} does not use the target: the pool is scored once and the other "
            f"{len(chosen.charges) - 1} "
            f"target(s) read those scores from {where}"
        )
    cache = (
        f"score cache {chosen.score_cache}"
        if chosen.score_cache
        else "no score cache (set cache_dir to reuse scores on a rerun)"
    )
    return f"{selector.name} has no multi-target path: one selection per target ({count}; {cache})"


def charge_line(chosen: TargetSelections, name: str) -> str:
    """What the target was charged, and the pool part where the selector reports one."""
    charge = chosen.charges[name]
    text = f"{charge.flops:.4g} FLOPs charged"
    if charge.flops_split:
        pool, target = charge.flops_split["pool"], charge.flops_split["target"]
        index = charge.feature_index or {}
        if index.get("shared_with"):
            where = f"shared with {index['shared_with']}, not charged again"
        elif index.get("reused"):
            where = f"read from the feature index {index.get('dir')}, not charged again"
        else:
            where = "paid once, here"
        return f"{text}: target gradients {target:.4g} FLOPs; pool features {pool:.4g} FLOPs ({where})"
    if charge.cache_hit:
        return f"{text}: scores from the score cache ({charge.cost:.4g} FLOPs when computed)"
    return text


def total_line(chosen: TargetSelections, flop_budget: float | None) -> str:
    charges = list(chosen.charges.values())
    separately = sum(charge.cost for charge in charges)
    text = f"{chosen.flops:.4g} FLOPs charged for {len(charges)} targets"
    if chosen.path == ONE_PASS and all(charge.flops_split for charge in charges):
        pool = charges[0].flops_split["pool"]  # type: ignore[index]
        targets = sum(charge.flops_split["target"] for charge in charges)  # type: ignore[index]
        text += f" (pool features {pool:.4g} once + target gradients {targets:.4g})"
    if separately > chosen.flops:
        text += f"; selecting for each target on its own would cost {separately:.4g}"
    return text + (f" (flop_budget {flop_budget:.4g})" if flop_budget else "")
