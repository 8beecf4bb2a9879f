"""``hf-cads run [RECIPE] [--option value ...]``: select + budgeted finetune from a recipe.

``RECIPE`` is a YAML path or a shipped recipe's name (``hf-cads recipes`` lists them); without it
the shipped ``quickstart`` runs. Flags override the recipe's options (``hf-cads run --help`` lists
them all).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..package_data import default_recipe, find_recipe
from ..pipeline import format_report, parse_recipe, run_budgeted_finetune


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    named = bool(argv) and not argv[0].startswith("-")
    recipe = find_recipe(argv[0]) if named else default_recipe()
    run_config, training_args = parse_recipe(recipe, argv[1:] if named else argv)
    print(f"hf-cads run {recipe}", flush=True)
    report = run_budgeted_finetune(run_config, training_args)
    print(format_report(report), flush=True)
    return 0
