"""A run's three sets — what to select for (validation), what to test on, what to select from (the
pool) — from presets (:mod:`hf_cads.data.presets`) or your own sources (:mod:`hf_cads.data.sources`).

Example:
    >>> task = load_task_data("boolean_expressions", max_per_source=20, eval_examples=8)
    >>> len(task.validation), len(task.test), task.presets
    (3, 8, True)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .presets import POOL_PRESET, POOL_SOURCES, build_multisource_pool, load_preset_target, target_preset
from .sources import load_examples, parse_source

logger = logging.getLogger(__name__)


@dataclass
class TaskData:
    """A run's data: ``validation`` (what targeted selectors aim at), ``test`` (evaluated on,
    already cut to ``eval_examples``), ``pool`` (selected from), and what each one is."""

    validation: Any
    test: Any
    pool: Any
    descriptions: dict[str, str] = field(default_factory=dict)
    formats: dict[str, str] = field(default_factory=dict)
    presets: bool = True


def load_task_data(
    target: Any,
    pool: Any = None,
    eval_set: Any = None,
    *,
    data_dir: Any = None,
    pool_sources: Any = None,
    max_per_source: int | None = None,
    max_pool_chars: int | None = None,
    eval_examples: int = 32,
    seed: int = 0,
) -> TaskData:
    """Load a run's target, eval and pool from presets or your own sources.

    ``target`` / ``pool`` / ``eval_set`` are presets (``gsm8k``, a BBH task, ``shared-mix`` or
    ``None`` for the pool) or sources (see :func:`parse_source`). Without ``eval_set`` a user
    target is split (seeded): ``min(eval_examples, half its rows)`` rows to test on, the rest to
    select for.
    """
    return load_targets_data(
        [target],
        pool,
        eval_set,
        data_dir=data_dir,
        pool_sources=pool_sources,
        max_per_source=max_per_source,
        max_pool_chars=max_pool_chars,
        eval_examples=eval_examples,
        seed=seed,
    )[0]


def load_targets_data(
    targets: Sequence[Any],
    pool: Any = None,
    eval_set: Any = None,
    *,
    data_dir: Any = None,
    pool_sources: Any = None,
    max_per_source: int | None = None,
    max_pool_chars: int | None = None,
    eval_examples: int = 32,
    seed: int = 0,
) -> list[TaskData]:
    """:func:`load_task_data` for several targets that share one pool (``hf-cads select --targets``):
    one :class:`TaskData` per target, in order, all holding the same pool object. The shared-data
    pool leaves out the BBH task of every built-in target.

    Example:
        >>> dyck, boolean = load_targets_data(["dyck_languages", "boolean_expressions"], max_per_source=20)
        >>> dyck.pool is boolean.pool
        True
    """
    if not targets:
        raise ValueError("Name at least one target (a file, a folder, a Hub id or a built-in target such as gsm8k).")
    loaded = [_load_target(target, eval_set, data_dir, eval_examples, seed) for target in targets]
    presets = [preset for preset, *_ in loaded]
    if pool is None or pool == POOL_PRESET:
        excluded = [preset for preset in presets if preset not in (None, "gsm8k")]
        pool_data = build_multisource_pool(
            excluded,
            data_dir,
            sources=pool_sources or POOL_SOURCES,
            max_per_source=max_per_source,
            max_chars=max_pool_chars,
            seed=seed,
        )
        pool_description = (
            f"hf_cads shared pool [{', '.join(pool_sources or POOL_SOURCES)}] "
            f"(max_per_source={max_per_source}, max_pool_chars={max_pool_chars}, seed={seed})"
        )
        pool_format = None
        if "gsm8k" in presets and "gsm8k" in (pool_sources or POOL_SOURCES):
            logger.warning(
                "GSM8K train is in the pool for a GSM8K target: it is in-distribution data, not leakage of test rows."
            )
    else:
        pool_data, pool_format = load_examples(pool, "pool")
        pool_description = parse_source(pool, "pool").describe()
    tasks = []
    for preset, validation, test, descriptions, formats in loaded:
        formats = dict(formats, **({"pool": pool_format} if pool_format else {}))
        test = test.select(range(min(eval_examples, len(test))))
        tasks.append(
            TaskData(
                validation,
                test,
                pool_data,
                {**descriptions, "pool": pool_description},
                formats,
                presets=preset is not None and not formats,
            )
        )
    return tasks


def _load_target(
    target: Any, eval_set: Any, data_dir: Any, eval_examples: int, seed: int
) -> tuple[str | None, Any, Any, dict[str, str], dict[str, str]]:
    """One target's ``(preset, validation, test, descriptions, formats)``; test not yet cut to ``eval_examples``."""
    descriptions: dict[str, str] = {}
    formats: dict[str, str] = {}
    preset = target_preset(target, data_dir)
    test = None
    if preset is not None:
        validation, test = load_preset_target(preset, data_dir)
        descriptions["target"] = (
            "gsm8k validation set"
            if preset == "gsm8k"
            else f"BBH {preset} validation set (chain-of-thought exemplars)"
        )
    else:
        validation, formats["target"] = load_examples(target, "target")
        descriptions["target"] = parse_source(target, "target").describe()
        if eval_set is None:
            if len(validation) < 2:
                raise ValueError(
                    f"The target has {len(validation)} row; give it at least 2 rows (or pass eval: for the test rows)."
                )
            size = max(1, min(eval_examples, len(validation) // 2))
            split = validation.train_test_split(test_size=size, seed=seed)
            validation, test = split["train"], split["test"]
            logger.info(
                "No eval set: testing on %d seeded target rows, selecting for the other %d.",
                len(test),
                len(validation),
            )
    if eval_set is not None:
        test, formats["eval"] = load_examples(eval_set, "eval")
        descriptions["eval"] = parse_source(eval_set, "eval").describe()
    return preset, validation, test, descriptions, formats
