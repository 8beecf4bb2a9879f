"""``hf-cads run [RECIPE.yaml] [--option value ...]``: select + budgeted finetune from a recipe."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..pipeline import default_recipe, format_report, parse_recipe, run_budgeted_finetune


def main(argv: Sequence[str]) -> int:
    recipe = Path(argv[0]) if argv and not argv[0].startswith("--") else default_recipe()
    overrides = list(argv[1:] if argv and not argv[0].startswith("--") else argv)
    run_config, training_args = parse_recipe(recipe, overrides)
    print(f"hf-cads run {recipe}", flush=True)
    report = run_budgeted_finetune(run_config, training_args)
    print(format_report(report), flush=True)
    return 0
