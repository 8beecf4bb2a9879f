"""``hf-cads selectors``: list the registered selectors."""

from __future__ import annotations

from collections.abc import Sequence

from ..selectors import get_selector_class, list_selectors


def main(argv: Sequence[str]) -> int:
    for name in list_selectors():
        # The docstring's whole first paragraph: its first line alone can stop mid-sentence.
        summary = " ".join((get_selector_class(name).__doc__ or "").strip().split("\n\n")[0].split())
        print(f"{name:<12} {summary}")
    return 0
