"""``hf-cads`` command line: one module per verb, each with ``main(argv) -> exit code``.

    hf-cads run [RECIPE] [--option value ...]       # RECIPE: a YAML path or a shipped name; default quickstart
    hf-cads selectors                               # list registered selectors
    hf-cads plan RUNS.jsonl --budget 3e15           # selector + subset size for a budget, plot
    hf-cads sweep [SWEEP.yaml]                      # selectors x fractions x seeds -> run records
    hf-cads select [RECIPE.yaml] --local-dir DIR    # selection only -> parquet shards + dataset card
    hf-cads push DIR REPO_ID                        # upload a selection folder to a Hub dataset repo
    hf-cads recipes [--path NAME]                   # list the shipped recipes (or print one's file)

The top layer of the package: nothing in ``hf_cads`` imports it. A verb's module is imported only
when that verb runs, so ``hf-cads selectors`` does not load what ``hf-cads run`` needs. Adding a
verb is one module here plus one line in :data:`COMMANDS`.

Example:
    >>> from hf_cads.commands import COMMANDS, main
    >>> "run" in COMMANDS and "recipes" in COMMANDS
    True
    >>> main(["no-such-verb"])  # one error line and the usage, on stderr
    2
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

from .._quiet import hide_upstream_warnings

COMMANDS: dict[str, str] = {
    "run": "select + budgeted finetune from a recipe path or name (default: quickstart)",
    "selectors": "list the registered selectors",
    "plan": "which selector and how much data for a FLOP budget (from run records)",
    "estimate": "selection and training FLOPs per selector before any run (no LM weights loaded)",
    "sweep": "run selectors x fractions x seeds from a sweep YAML, record and plot",
    "select": "run a recipe's selector only; write the subset + dataset card to --local-dir",
    "push": "upload a selection folder (from `hf-cads select`) to a Hub dataset repo",
    "recipes": "list the shipped recipes and accelerate configs (--path NAME prints one's file)",
}
"""Verb -> one-line help; the verb's code is ``hf_cads.commands.<verb>.main``."""
VERBOSE = "--verbose"


def command(name: str) -> Callable[[Sequence[str]], int]:
    """The ``main`` function of the verb ``name``."""
    return importlib.import_module(f"{__name__}.{name}").main


def usage() -> str:
    lines = ["usage: hf-cads COMMAND [ARGS...] [--verbose]", "", "commands:"]
    lines += [f"  {name:<10} {help_text}" for name, help_text in COMMANDS.items()]
    lines += ["", f"  {VERBOSE:<10} debug logging and every progress bar (loading many small files too)"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hf-cads ARGV``; returns the exit code (2 for bad input, with the error on stderr)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = VERBOSE in argv
    argv = [arg for arg in argv if arg != VERBOSE]
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in COMMANDS:
        if argv and argv[0] not in {"-h", "--help"}:
            print(f"hf-cads: unknown command {argv[0]!r}; choose from {sorted(COMMANDS)}", file=sys.stderr)
            print(usage(), file=sys.stderr)
            return 2
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    # Other libraries' INFO lines (sentence-transformers' "Loading SentenceTransformer model ...") only with --verbose.
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    # --verbose: hf_cads' quiet phases (e.g. hf_cads.data.quiet_loading) show their bars again.
    logging.getLogger("hf_cads").setLevel(logging.DEBUG if verbose else logging.INFO)
    hide_upstream_warnings()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return int(command(name)(rest) or 0)
    except (ValueError, TypeError, FileNotFoundError, OSError, ImportError) as err:
        print(f"hf-cads {name}: error: {err}", file=sys.stderr)
        return 2
