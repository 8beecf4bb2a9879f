"""Selector options: :class:`SelectorConfig` (what every selector understands) and the one
declaration of which options change a result (``field(metadata={"affects_result": False})``) that
score-cache keys, feature fingerprints, run keys and planner families derive from.

Example:
    >>> from hf_cads.selectors.options import SelectorConfig, result_options
    >>> sorted(set(SelectorConfig().to_dict()) - set(SelectorConfig().result_options()))
    ['cache_dir', 'show_progress']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class SelectorConfig:
    """Options every selector understands.

    Args:
        text_column: pool column holding the text to score. ``None`` picks ``text`` or, failing
            that, chat ``messages`` rendered with the tokenizer's chat template.
        target_text_column: the same for the target set (defaults to ``text_column``'s rule).
        seed: makes every random choice reproducible.
        batch_size: examples per forward pass for model-based selectors.
        max_length: token limit per example for model-based selectors.
        show_progress: show a tqdm bar while scoring.
        deduplicate: what to do with pool rows whose text repeats an earlier row's: ``"drop"``
            (default) scores and selects only the first copy, logs how many were dropped and
            reports them in ``SelectionResult.extras["deduplication"]``; ``"error"`` refuses the
            pool. Either way a duplicate is never scored, chosen and trained on twice.
        allow_duplicates: keep every copy of a repeated row (overrides ``deduplicate``).
        shard_size: rows per shard for selectors that score rows independently: the unit of work
            spread over processes, and of caching and resuming. The shards, and so the scores,
            do not depend on the number of processes.
        cache_dir: folder to cache scores in (default ``$HF_CADS_CACHE``, else no cache). A rerun
            on the same pool, target, options and model reuses them and charges no FLOPs; an
            interrupted run resumes from its last finished shard.

    Example:
        >>> config = SelectorConfig(seed=3, shard_size=512)
        >>> config.seed, "show_progress" in config.result_options()
        (3, False)
    """

    text_column: str | None = None
    target_text_column: str | None = None
    seed: int = field(default=42, metadata={"per_run": True})
    batch_size: int = 8
    max_length: int = 512
    show_progress: bool = field(default=True, metadata={"affects_result": False})
    deduplicate: Literal["drop", "error"] = "drop"
    allow_duplicates: bool = False
    shard_size: int = 1024
    cache_dir: str | None = field(default=None, metadata={"affects_result": False})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def result_options(self) -> dict[str, Any]:
        """:meth:`to_dict` without the options that do not change what is selected (see
        :func:`affects_result`): what score-cache keys, feature fingerprints and run keys hash."""
        return result_options(type(self), self.to_dict())


def affects_result(config_class: type[SelectorConfig], name: str) -> bool:
    """Whether option ``name`` of ``config_class`` can change the scores or the selection.

    Declared once, on the field: ``field(default=..., metadata={"affects_result": False})`` marks
    an option that only changes how a selector runs (progress bars, cache folders, memory/speed
    trade-offs with the same values). Fields without the mark, and names the class does not know,
    affect the result.

    Example:
        >>> affects_result(SelectorConfig, "show_progress"), affects_result(SelectorConfig, "seed")
        (False, True)
    """
    known = {f.name: f for f in dataclasses.fields(config_class)}
    return name not in known or known[name].metadata.get("affects_result", True)


def result_options(config_class: type[SelectorConfig], options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` without those :func:`affects_result` says do not change the result.

    Example:
        >>> result_options(SelectorConfig, {"seed": 1, "show_progress": False})
        {'seed': 1}
    """
    return {name: value for name, value in options.items() if affects_result(config_class, name)}


def family_options(config_class: type[SelectorConfig], options: Mapping[str, Any]) -> dict[str, Any]:
    """The options that make a selector *family* (one planner curve): those that change the result,
    differ from the field's default, and are not set per run.

    Options marked ``field(metadata={"per_run": True})`` (the seed, CADS's ``train_budget``, which
    follows from each run's subset size) vary from run to run within one family.

    Example:
        >>> family_options(SelectorConfig, {"seed": 3, "max_length": 512, "batch_size": 4, "cache_dir": "/c"})
        {'batch_size': 4}
    """
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    kept = {}
    for name, value in result_options(config_class, options).items():
        spec = fields.get(name)
        if spec is not None:
            if spec.metadata.get("per_run", False):
                continue
            default = (
                spec.default
                if spec.default is not dataclasses.MISSING
                else (
                    spec.default_factory() if spec.default_factory is not dataclasses.MISSING else dataclasses.MISSING
                )
            )
            if _same_value(value, default):
                continue
        kept[name] = value
    return kept


def _same_value(value: Any, default: Any) -> bool:
    if default is dataclasses.MISSING:
        return False
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
        return list(value) == list(default)
    if isinstance(value, bool) or isinstance(default, bool):
        return value is default  # 1 == True, but an option set to 1 is not the default True
    try:
        return bool(value == default)
    except Exception:  # values without a usable ==
        return False


def build_config(config_class: type[SelectorConfig], options: dict[str, Any], name: str) -> SelectorConfig:
    """Instantiate ``config_class`` from keyword options, naming unknown ones and the valid set.

    Example:
        >>> build_config(SelectorConfig, {"seed": 1}, "random").seed
        1
    """
    valid = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise TypeError(f"Unknown option(s) {unknown} for selector {name!r}; valid options are {sorted(valid)}.")
    return config_class(**options)
