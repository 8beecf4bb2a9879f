"""``hf-cads`` command line.

    hf-cads run [RECIPE.yaml] [--option value ...]   # default: recipes/quickstart.yaml
    hf-cads selectors                               # list registered selectors
    hf-cads plan RUNS.jsonl --budget 3e15           # selector + subset size for a budget, plot
    hf-cads sweep [SWEEP.yaml]                      # selectors x fractions x seeds -> run records
    hf-cads select [RECIPE.yaml] --local-dir DIR    # selection only -> parquet shards + dataset card
    hf-cads push DIR REPO_ID                        # upload a selection folder to a Hub dataset repo

Also runnable as ``python -m hf_cads.cli`` (e.g. under ``accelerate launch``).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Sequence

QUICKSTART = "quickstart.yaml"


def default_recipe() -> Path:
    """``recipes/quickstart.yaml`` of the checkout (or the current directory)."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        candidate = root / "recipes" / QUICKSTART
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"Cannot find recipes/{QUICKSTART}; pass a recipe path: hf-cads run path/to/recipe.yaml")


def _run(argv: Sequence[str]) -> int:
    from .pipeline import format_report, parse_recipe, run_budgeted_finetune

    recipe = Path(argv[0]) if argv and not argv[0].startswith("--") else default_recipe()
    overrides = list(argv[1:] if argv and not argv[0].startswith("--") else argv)
    run_config, training_args = parse_recipe(recipe, overrides)
    print(f"hf-cads run {recipe}", flush=True)
    report = run_budgeted_finetune(run_config, training_args)
    print(format_report(report), flush=True)
    return 0


def _selectors(argv: Sequence[str]) -> int:
    from .selectors import get_selector_class, list_selectors

    for name in list_selectors():
        doc = next(iter((get_selector_class(name).__doc__ or "").strip().splitlines()), "")
        print(f"{name:<12} {doc}")
    return 0


# Each command is a function taking the remaining arguments and returning an exit code. Modules
# that add a command register it here with one line, so commands stay in their own module.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("hf_cads.cli:_run", "select + budgeted finetune from a recipe (default recipes/quickstart.yaml)"),
    "selectors": ("hf_cads.cli:_selectors", "list the registered selectors"),
    "plan": ("hf_cads.planner:plan_command", "which selector and how much data for a FLOP budget (from run records)"),
    "sweep": ("hf_cads.sweep:sweep_command", "run selectors x fractions x seeds from a sweep YAML, record and plot"),
    "select": ("hf_cads.hub:select_command", "run a recipe's selector only; write the subset + dataset card to --local-dir"),
    "push": ("hf_cads.hub:push_command", "upload a selection folder (from `hf-cads select`) to a Hub dataset repo"),
}


def _resolve(target: str):
    import importlib

    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in COMMANDS:
        lines = ["usage: hf-cads COMMAND [ARGS...]", "", "commands:"]
        lines += [f"  {name:<10} {help_text}" for name, (_, help_text) in COMMANDS.items()]
        if argv and argv[0] not in {"-h", "--help"}:
            print(f"hf-cads: unknown command {argv[0]!r}; choose from {sorted(COMMANDS)}", file=sys.stderr)
            print("\n".join(lines), file=sys.stderr)
            return 2
        print("\n".join(lines))
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return int(_resolve(COMMANDS[command][0])(rest) or 0)
    except (ValueError, TypeError, FileNotFoundError, OSError, ImportError) as err:
        print(f"hf-cads {command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
