"""``hf-cads select [RECIPE] --local-dir DIR``: run a recipe's selector only and write the subset + card."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from ..distributed import current_processes
from ..hub import DatasetReference, save_selection
from ..models import load_causal_lm
from ..pipeline import default_recipe, load_run_data, model_load_options, parse_recipe
from ..flops import FlopLedger
from ..selectors import build_selector, get_selector_class, select_within_budget


def main(argv: Sequence[str]) -> int:
    """``hf-cads select [RECIPE] --local-dir DIR [--repo-id ID] [--config-name NAME] [--overwrite] [--option value ...]``

    Runs the recipe's selector on its pool and target (no training) and writes the selection as a
    dataset folder: exactly what ``hf-cads push DIR REPO_ID`` uploads.
    """
    parser = argparse.ArgumentParser(prog="hf-cads select", allow_abbrev=False, description=main.__doc__)
    parser.add_argument("--local-dir", required=True, help="folder to write the parquet shards and README.md to")
    parser.add_argument("--repo-id", default=None, help="dataset repo the folder is meant for (used in the card's reload code)")
    parser.add_argument("--config-name", default="default", help="dataset config to write (default: default)")
    parser.add_argument("--overwrite", action="store_true", help="replace the config if the folder already has it")
    argv = list(argv)
    # As for `hf-cads run`: an optional recipe first, then flags; flags this parser does not know
    # override recipe options.
    recipe = Path(argv.pop(0)) if argv and not argv[0].startswith("-") else default_recipe()
    args, overrides = parser.parse_known_args(argv)
    run, training = parse_recipe(recipe, overrides)
    if training.selector is None:
        raise ValueError(f"Recipe {str(recipe)!r} names no selector; set `selector:` (see `hf-cads selectors`).")
    validation, _, pool = load_run_data(run, training.seed)
    model = tokenizer = None
    options = training.selector_kwargs or {}
    if get_selector_class(training.selector).reuses_training_model and "model_name_or_path" not in options:
        # The selector scores with the model the recipe finetunes, loaded as `hf-cads run` loads it.
        model, tokenizer = load_causal_lm(run.model_name_or_path, **model_load_options(run))
    selector = build_selector(training.selector, options, seed=training.seed, training_model=model, training_tokenizer=tokenizer)
    result, _ = select_within_budget(
        selector, pool, validation, FlopLedger(budget=training.flop_budget),
        k=training.selection_k, fraction=training.selection_fraction,
    )
    if not current_processes().is_main:
        return 0
    sources = ", ".join(run.pool_sources)
    parent = DatasetReference(
        f"hf_cads shared pool [{sources}] (max_per_source={run.max_per_source}, max_pool_chars={run.max_pool_chars}, seed={training.seed})",
        fingerprint=getattr(pool, "_fingerprint", None), num_rows=len(pool),
    )
    target = DatasetReference(
        f"{run.target} validation set" if run.target == "gsm8k" else f"BBH {run.target} validation set (chain-of-thought exemplars)",
        fingerprint=getattr(validation, "_fingerprint", None), num_rows=len(validation),
    )
    folder = save_selection(
        result, args.local_dir, parent=parent, target=target, repo_id=args.repo_id, flop_budget=training.flop_budget,
        config_name=args.config_name, overwrite=args.overwrite,
    )
    print(
        f"hf-cads select: kept {len(result)} of {result.pool_size} rows with {result.selector} "
        f"({result.flops:.4g} FLOPs); wrote {folder} (load_dataset({str(folder)!r}, {args.config_name!r}))",
        flush=True,
    )
    return 0
