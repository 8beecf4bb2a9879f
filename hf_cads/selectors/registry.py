"""Selectors by name, so a recipe can say ``selector: bm25`` and users can plug in their own."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .base import Selector, SelectorConfig

SelectorType = TypeVar("SelectorType", bound=type[Selector])

_REGISTRY: dict[str, type[Selector]] = {}
# alias -> (registered name, the options the alias sets unless the caller passes a config)
_ALIASES: dict[str, tuple[str, dict[str, Any]]] = {}


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def register_selector(
    name: str, *, aliases: Mapping[str, Mapping[str, Any]] | None = None
) -> Callable[[SelectorType], SelectorType]:
    """Class decorator adding a :class:`Selector` subclass to the registry under ``name``.

    ``aliases`` maps further names to the options they preset: CADS registers ``cads-e`` as
    ``cads`` with ``granularity="example"``. Options the caller passes win over an alias's.

    Example:
        >>> import numpy as np
        >>> from hf_cads.selectors import Selector, ScoreOutput, get_selector, register_selector
        >>> @register_selector("shortest")
        ... class ShortestSelector(Selector):
        ...     requires_target = False
        ...     def score(self, pool, target):
        ...         return ScoreOutput(-np.array([len(t) for t in pool["text"]], float), 0.0)
        ...     def estimate_flops(self, pool, target):
        ...         return 0.0
        >>> type(get_selector("shortest")).__name__
        'ShortestSelector'
    """
    aliases = {_normalise(alias): dict(options) for alias, options in (aliases or {}).items()}

    def decorate(cls: SelectorType) -> SelectorType:
        if not (isinstance(cls, type) and issubclass(cls, Selector)):
            raise TypeError(f"@register_selector({name!r}) must decorate a Selector subclass, got {cls!r}.")
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"A selector named {name!r} is already registered ({existing.__name__}).")
        for alias in aliases:
            if alias in _REGISTRY or _ALIASES.get(alias, (name,))[0] != name:
                raise ValueError(f"The selector alias {alias!r} is already taken; pick another name.")
        cls.name = name
        _REGISTRY[name] = cls
        for alias, options in aliases.items():
            _ALIASES[alias] = (name, options)
        return cls

    return decorate


def list_selectors(include_aliases: bool = False) -> list[str]:
    """Names of all registered selectors (with ``include_aliases``, their aliases too).

    Example:
        >>> "bm25" in list_selectors(), "cads-s" in list_selectors(include_aliases=True)
        (True, True)
    """
    return sorted([*_REGISTRY, *(_ALIASES if include_aliases else ())])


def _resolve(name: Any) -> tuple[type[Selector], dict[str, Any]]:
    if not isinstance(name, str) or name.strip() == "":
        raise ValueError(f"Selector name must be a non-empty string; registered selectors: {list_selectors()}.")
    key = _normalise(name)
    key, preset = _ALIASES.get(key, (key, {}))
    if key not in _REGISTRY:
        raise ValueError(f"Unknown selector {name!r}; registered selectors: {list_selectors(include_aliases=True)}.")
    return _REGISTRY[key], dict(preset)


def get_selector_class(name: str) -> type[Selector]:
    """The class registered under ``name`` or one of its aliases.

    Example:
        >>> get_selector_class("cads-e").__name__
        'CADSSelector'
    """
    return _resolve(name)[0]


def get_selector(name: str, config: SelectorConfig | None = None, **options: Any) -> Selector:
    """Build a registered selector by name from a config object or keyword options.

    An alias (``cads-e``, ``cads-s``) presets its options unless ``config`` is given.

    Example:
        >>> from hf_cads import get_selector
        >>> get_selector("random", seed=0).config.seed
        0
        >>> get_selector("cads-s", train_budget=1e12).config.granularity
        'source'
    """
    cls, preset = _resolve(name)
    if config is not None:
        return cls(config, **options)
    return cls(**{**preset, **options})
