"""``hf-cads`` console entry point (also ``python -m hf_cads.cli``, e.g. under ``accelerate launch``).

The verbs live in :mod:`hf_cads.commands`, one module each.

Example:
    >>> from hf_cads.cli import main
    >>> main(["selectors"])  # doctest: +ELLIPSIS
    bm25 ...
    0
"""

from __future__ import annotations

import sys

from .commands import COMMANDS, main

__all__ = ["COMMANDS", "main"]

if __name__ == "__main__":
    sys.exit(main())
