"""``hf-cads selectors``: list the registered selectors."""

from __future__ import annotations

from collections.abc import Sequence

from ..selectors import get_selector_class, list_selectors


def main(argv: Sequence[str]) -> int:
    for name in list_selectors():
        doc = next(iter((get_selector_class(name).__doc__ or "").strip().splitlines()), "")
        print(f"{name:<12} {doc}")
    return 0
