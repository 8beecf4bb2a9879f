"""Selectors by name, so a recipe can say ``selector: bm25`` and users can plug in their own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .base import Selector, SelectorConfig

SelectorType = TypeVar("SelectorType", bound=type[Selector])

_REGISTRY: dict[str, type[Selector]] = {}


def register_selector(name: str) -> Callable[[SelectorType], SelectorType]:
    """Class decorator adding a :class:`Selector` subclass to the registry under ``name``.

    Example:
        >>> import numpy as np
        >>> from hf_cads.selectors import Selector, ScoreOutput, register_selector
        >>> @register_selector("shortest")
        ... class ShortestSelector(Selector):
        ...     requires_target = False
        ...     def score(self, pool, target):
        ...         return ScoreOutput(-np.array([len(t) for t in pool["text"]], float), 0.0)
        ...     def estimate_flops(self, pool, target):
        ...         return 0.0
    """

    def decorate(cls: SelectorType) -> SelectorType:
        if not (isinstance(cls, type) and issubclass(cls, Selector)):
            raise TypeError(f"@register_selector({name!r}) must decorate a Selector subclass, got {cls!r}.")
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"A selector named {name!r} is already registered ({existing.__name__}).")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def list_selectors() -> list[str]:
    """Names of all registered selectors."""
    return sorted(_REGISTRY)


def get_selector_class(name: str) -> type[Selector]:
    if not isinstance(name, str) or name.strip() == "":
        raise ValueError(f"Selector name must be a non-empty string; registered selectors: {list_selectors()}.")
    key = name.strip().lower().replace("_", "-")
    aliases = {"cads-e": ("cads", {"granularity": "example"}), "cads-s": ("cads", {"granularity": "source"})}
    key = aliases.get(key, (key, {}))[0]
    if key not in _REGISTRY:
        raise ValueError(f"Unknown selector {name!r}; registered selectors: {list_selectors()}.")
    return _REGISTRY[key]


def get_selector(name: str, config: SelectorConfig | None = None, **options: Any) -> Selector:
    """Build a registered selector by name from a config object or keyword options.

    ``cads-e`` and ``cads-s`` are accepted as shorthands for ``cads`` with
    ``granularity="example"`` / ``"source"``.

    Example:
        >>> from hf_cads import get_selector
        >>> get_selector("random", seed=0).config.seed
        0
    """
    cls = get_selector_class(name)
    key = name.strip().lower().replace("_", "-")
    if key == "cads-e" and config is None:
        options.setdefault("granularity", "example")
    if key == "cads-s" and config is None:
        options.setdefault("granularity", "source")
    return cls(config, **options) if config is not None else cls(**options)
