"""Optional dependencies, each behind an extra of the ``hf_cads`` distribution: a missing one is named
in one line with the ``pip install`` that brings it.

Example:
    >>> require_extra("json", "embedding", "the standard library").__name__
    'json'
    >>> try:
    ...     require_extra("no_such_module_xyz", "embedding", "the embedding selector")
    ... except MissingExtraError as err:
    ...     print(err)
    the embedding selector needs no_such_module_xyz: pip install "hf_cads[embedding]"
"""

from __future__ import annotations

import importlib
from types import ModuleType

EXTRAS = {
    "embedding": "sentence-transformers: the embedding selector",
    "plot": "matplotlib: plan and sweep plots",
    "offline-models": "gguf and the model packages: the SmolLM2 / Gemma-3 / MiniLM aliases that need no Hub",
    "qlora": "bitsandbytes: 4-bit (QLoRA) training",
}
"""Each extra and what it enables, as the README's install section lists them."""


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def require_extra(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtraError` naming ``pip install "hf_cads[extra]"``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        if err.name is not None and err.name != module and not module.startswith(f"{err.name}."):
            raise  # the module exists but one of its own imports failed: that traceback is the real news
        raise MissingExtraError(f'{purpose} needs {module}: pip install "hf_cads[{extra}]"') from None
