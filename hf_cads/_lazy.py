"""Lazy package exports: a package names its public objects up front and imports each one's module
only when the name is first used, so ``import hf_cads`` stays cheap (TRL's ``_LazyModule`` idea,
written as a module ``__getattr__``, PEP 562).

Example:
    >>> import types
    >>> demo = types.ModuleType("demo")
    >>> demo.__getattr__, demo.__dir__ = lazy_exports("demo", {"sqrt": "math", "dumps": "json"})
    >>> demo.sqrt(9.0)
    3.0
    >>> sorted(demo.__dir__())
    ['dumps', 'sqrt']
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for a package whose name ``n`` lives in module ``exports[n]``.

    ``exports`` maps each public name to the module that defines it, absolute (``"json"``) or relative
    to ``package`` (``".trainer"``). A resolved name is cached in the package's namespace, so the
    module's import runs once.
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name], package), name)
        if package in sys.modules:
            setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
