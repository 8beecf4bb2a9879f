"""``hf-cads estimate [RECIPE] [--model M --pool P --target T] --budget K``: every selector's cost before a run.

Reads the language models' configs and tokenizers only (they are built on the meta device: no
weights); the embedding selector's row loads its small sentence encoder (MiniLM by default), whose
modules its charge is counted from. Loads and tokenises the pool and target as ``hf-cads run``
would, and prints per selector the
selection FLOPs (the estimate the selector charges), the largest affordable ``k`` and fraction
under ``K``, the selection share of ``K`` and the training / selection model size ratio, with the
training FLOPs per row and per epoch of the pool.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..flops import LoraSpec
from ..models import load_tokenizer
from ..package_data import default_recipe, find_recipe
from ..pipeline import decontaminate_run_data, load_run_data, parse_recipe
from ..planner.cost_table import DEFAULT_ESTIMATE_SELECTORS, estimate_costs, load_model_config


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _uses_lora(run: Any) -> bool:
    return bool(getattr(run, "use_peft", True)) and int(run.lora_r or 0) > 0


def main(argv: Sequence[str]) -> int:
    """``hf-cads estimate [RECIPE] --budget 1e18``: selection and training FLOPs per selector. The
    language models' configs and tokenizers only are read (no LM weights); the embedding selector's
    row loads its small sentence encoder (MiniLM by default) to count its charge."""
    argv = list(argv)
    recipe = find_recipe(argv.pop(0)) if argv and not argv[0].startswith("-") else default_recipe()
    parser = argparse.ArgumentParser(
        prog="hf-cads estimate",
        usage="%(prog)s [RECIPE] [--budget FLOPS] [options]",
        description=main.__doc__,
        epilog="RECIPE: a shipped recipe's name (hf-cads recipes lists them) or a YAML path; default: quickstart.",
    )
    parser.add_argument("--budget", type=float, help="FLOPs per finetune (default: the recipe's flop_budget)")
    parser.add_argument("--model", help="the trained model: alias, local folder or Hub id (default: the recipe's)")
    parser.add_argument("--pool", help="the pool: a preset or your data file / folder (default: the recipe's)")
    parser.add_argument("--target", help="the target task (default: the recipe's)")
    parser.add_argument(
        "--selectors",
        type=_names,
        help=f"comma-separated selectors to list (default: {','.join(DEFAULT_ESTIMATE_SELECTORS)})",
    )
    parser.add_argument(
        "--selection-model", help="the model LM-based selectors score with (default: the trained model)"
    )
    parser.add_argument("--json", help="also write the table as JSON here")
    options, overrides = parser.parse_known_args(argv)
    for flag, value in (
        ("--model_name_or_path", options.model),
        ("--pool", options.pool),
        ("--target", options.target),
    ):
        if value is not None:
            overrides += [flag, value]
    run, args = parse_recipe(recipe, overrides)
    budget = options.budget if options.budget is not None else args.flop_budget
    if budget is None:
        raise ValueError("Pass --budget FLOPS (e.g. --budget 1e18): the recipe sets no flop_budget.")
    data = load_run_data(run, args.seed)
    target, pool, _ = decontaminate_run_data(run, data)
    selectors = options.selectors or list(DEFAULT_ESTIMATE_SELECTORS)
    selector_options: dict[str, dict[str, Any]] = {}
    recipe_kwargs = dict(args.selector_kwargs or {})
    if args.selector is not None:
        selector_options[args.selector] = recipe_kwargs
        if args.selector not in selectors and options.selectors is None:
            selectors.append(args.selector)
    selection_name = options.selection_model or recipe_kwargs.get("model_name_or_path")
    selection_model = None
    if selection_name is not None:
        selection_model = (load_model_config(selection_name), load_tokenizer(selection_name))
    table = estimate_costs(
        load_model_config(run.model_name_or_path),
        load_tokenizer(run.model_name_or_path),
        pool,
        target,
        budget,
        selectors=selectors,
        selector_options=selector_options,
        selection_model=selection_model,
        max_seq_length=args.max_length,
        batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        epochs=float(args.num_train_epochs),
        lora=LoraSpec(run.lora_r, tuple(run.lora_target_modules)) if _uses_lora(run) else None,
        gradient_checkpointing=bool(args.gradient_checkpointing),
        seed=args.seed,
        model_name=run.model_name_or_path,
    )
    print(table.format())
    if options.json:
        Path(options.json).write_text(json.dumps(table.to_dict(), indent=2, default=str), encoding="utf-8")
        print(f"\ncost table as JSON: {options.json}")
    return 0
