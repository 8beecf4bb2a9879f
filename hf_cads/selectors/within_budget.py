"""The one selection path under a FLOP budget, shared by :class:`~hf_cads.BudgetedTrainer`,
``hf-cads select`` and the run records.

:func:`build_selector` turns a name and options into a selector the way a recipe means it (the
run's seed; a model-based selector scores with the model being finetuned unless it names its own).
:func:`select_within_budget` then validates the inputs, lets a budget-aware selector size itself
to what the budget leaves (CADS: :meth:`~hf_cads.selectors.Selector.fit_to_budget`), estimates the
cost, refuses a budget below the estimate before any work, selects, charges the ledger and returns
the typed :class:`~hf_cads.flops.charges.SelectionCharge`.

Example:
    >>> from datasets import Dataset
    >>> from hf_cads import FlopLedger
    >>> pool = Dataset.from_dict({"text": ["a cat sat", "stock prices fell", "the cat ran"]})
    >>> target = Dataset.from_dict({"text": ["my cat"]})
    >>> ledger = FlopLedger(budget=1e6)
    >>> result, charge = select_within_budget(build_selector("bm25", seed=0), pool, target, ledger, k=2)
    >>> charge.k, ledger.selection is charge, ledger.entries["selection"] == charge.flops
    (2, True, True)
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..cache import resolve_cache_dir
from ..flops import FlopLedger, FlopProfile
from ..flops.charges import SelectionCharge
from .base import SelectionResult, Selector
from .registry import get_selector, get_selector_class

logger = logging.getLogger(__name__)


def build_selector(
    name: str,
    options: Mapping[str, Any] | None = None,
    *,
    seed: int,
    training_model: Any = None,
    training_tokenizer: Any = None,
    selector_model: Any = None,
) -> Selector:
    """The selector ``name`` with ``options`` and ``seed`` (unless the options set one).

    ``selector_model`` is a model object for the selector. Otherwise a selector that may reuse the
    model being finetuned (``reuses_training_model``) gets ``training_model`` / ``training_tokenizer``
    unless its options name ``model_name_or_path``. With no model objects nothing is loaded here.

    Example:
        >>> selector = build_selector("bm25", {"aggregate": "max"}, seed=42)
        >>> selector.config.seed, selector.config.aggregate
        (42, 'max')
    """
    options = dict(options or {})
    options.setdefault("seed", seed)
    models: dict[str, Any] = {}
    if selector_model is not None:
        models = {"model": selector_model}
    elif (
        training_model is not None
        and get_selector_class(name).reuses_training_model
        and "model_name_or_path" not in options
    ):
        models = {"model": training_model, "tokenizer": training_tokenizer}
    return get_selector(name, **options, **models)


def solve_budget_split(overhead: Callable[[float], float], available: float, *, tolerance: float = 1e-6) -> float:
    """The largest ``C`` with ``C + overhead(C) <= available``, for an ``overhead`` that does not
    fall as ``C`` grows: how much training budget a selector whose own cost grows with the
    training budget (CADS) can plan for when both share ``available`` FLOPs.

    ``overhead`` may raise ``ValueError`` when ``C`` is too small for it to run at all; such ``C``
    count as unaffordable. Bisection to a relative ``tolerance``.

    Example:
        >>> round(solve_budget_split(lambda c: 0.25 * c + 10.0, 1010.0), 3)
        800.0
    """
    if not math.isfinite(available) or available <= 0:
        raise ValueError(f"Cannot split {available!r} FLOPs between selection and training; pass a finite budget > 0.")

    def fits(c: float) -> bool:
        try:
            return c + float(overhead(c)) <= available
        except ValueError:
            return False

    low, high = 0.0, float(available)
    if fits(high):
        return high
    for _ in range(200):
        if high - low <= tolerance * high:
            break
        middle = 0.5 * (low + high)
        low, high = (middle, high) if fits(middle) else (low, middle)
    if low <= 0 or not fits(low):
        raise ValueError(
            f"No training budget C fits C + selection overhead(C) <= {available:.4g} FLOPs: the selector's own cost "
            "leaves nothing to train with. Raise flop_budget or pass the selector's budget option explicitly."
        )
    return low


def matmul_params(model: Any) -> int:
    """Matmul parameters of a transformers model (also inside a peft or sentence-transformers
    wrapper), LoRA adapters excluded; 0 for ``None``."""
    if model is None:
        return 0
    from transformers import PreTrainedModel

    inner = model if getattr(model, "config", None) is not None else None
    if inner is None and hasattr(model, "modules"):
        inner = next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)
    if inner is None:
        raise TypeError(f"Cannot count the parameters of {type(model).__name__}: it holds no transformers model.")
    profile = FlopProfile.from_model(inner)
    return sum(layer.macs_per_token for layer in profile.linears if "lora_" not in layer.name)


def selection_model_params(selector: Selector) -> int:
    """Matmul parameters of the model a selector scored with (0 for model-free selectors)."""
    return matmul_params(selector.model) if selector.uses_model else 0


def select_within_budget(
    selector: Selector,
    pool: Any,
    target: Any,
    ledger: FlopLedger | None = None,
    *,
    k: int | None = None,
    fraction: float | None = None,
) -> tuple[SelectionResult, SelectionCharge]:
    """Validate, size to the budget, estimate, refuse an unaffordable selection, select, charge.

    With a capped ``ledger``, a selection whose estimate is not below what the ledger has left is
    refused with a ``ValueError`` before any scoring (the rest of the budget pays for training).
    The ledger's ``selection`` phase is charged what the selection spent and
    ``ledger.selection`` set to the returned charge. Returns ``(result, charge)``.
    """
    selector.validate_inputs(pool, target)
    unique, _ = selector.unique_pool(pool)  # what select() scores: repeated rows are never paid for
    available = ledger.remaining if ledger is not None else math.inf
    if math.isfinite(available):
        selector.fit_to_budget(available, unique, target)
    estimate = float(selector.estimate_flops(unique, target))
    if math.isfinite(available) and estimate >= available:
        raise ValueError(
            f"flop_budget={ledger.budget:.4g} is smaller than the cost of the {selector.name!r} selector on this "
            f"pool ({estimate:.4g} FLOPs), leaving nothing for training. Raise flop_budget, use a cheaper selector "
            "(random, bm25) or a smaller pool."
        )
    logger.info("Selecting with %s (estimated %.4g FLOPs)", selector.name, estimate)
    result = selector.select(pool, target=target, k=k, fraction=fraction)
    charge = selection_charge(selector, result, estimate)
    if ledger is not None:
        ledger.charge("selection", charge.flops)
        ledger.selection = charge
    return result, charge


def selection_charge(selector: Selector, result: SelectionResult, estimate: float) -> SelectionCharge:
    """The :class:`~hf_cads.flops.charges.SelectionCharge` of ``result``, which ``selector`` made after
    estimating ``estimate`` FLOPs."""
    stages = result.extras.get("flops_breakdown")
    split = result.extras.get("flops_split")
    index = result.extras.get("feature_index")
    return SelectionCharge(
        selector=result.selector,
        k=len(result),
        pool_size=result.pool_size,
        estimated_flops=float(estimate),
        flops=float(result.flops),
        model_params=selection_model_params(selector),
        cache=dict(result.extras["cache"]) if isinstance(result.extras.get("cache"), Mapping) else None,
        stages={name: float(value) for name, value in stages.items()} if isinstance(stages, Mapping) else {},
        duplicates_dropped=int(result.extras.get("deduplication", {}).get("dropped", 0)),
        feature_index=dict(index)
        if isinstance(index, Mapping) and (index.get("reused") or index.get("shared_with"))
        else None,
        flops_split={name: float(value) for name, value in split.items()} if isinstance(split, Mapping) else None,
    )


# -- several targets ---------------------------------------------------------------------------
ONE_PASS = "one pass"
PER_TARGET = "per target"
SCORED_ONCE = "scored once"
MULTI_TARGET_PATHS = (ONE_PASS, PER_TARGET, SCORED_ONCE)
"""How :func:`select_for_targets` selects for several targets: in ``one pass`` (a selector that
:attr:`~hf_cads.selectors.Selector.shares_work_across_targets`, LESS: pool features once, target
gradients per target), ``scored once`` (a selector that ignores the target: the first selection's scores are
read back from the score cache for the others) or ``per target`` (one selection per target)."""


@dataclass
class TargetSelections:
    """What :func:`select_for_targets` chose and charged, per target name (in the order given).

    ``path`` is one of :data:`MULTI_TARGET_PATHS`; ``estimated_flops`` the total the budget was
    checked against; ``score_cache`` the selector's score-cache folder, or the temporary one (since
    removed, ``score_cache_temporary``) the ``scored once`` path read from.
    """

    results: dict[str, SelectionResult]
    charges: dict[str, SelectionCharge]
    path: str
    estimated_flops: float
    score_cache: str | None = None
    score_cache_temporary: bool = False

    @property
    def flops(self) -> float:
        """FLOPs charged for all targets together."""
        return float(sum(charge.flops for charge in self.charges.values()))


def multi_target_path(selector: Selector) -> str:
    """Which of :data:`MULTI_TARGET_PATHS` :func:`select_for_targets` takes for ``selector``."""
    if selector.shares_work_across_targets:
        return ONE_PASS
    return PER_TARGET if selector.requires_target else SCORED_ONCE


def select_for_targets(
    selector: Selector,
    pool: Any,
    targets: Mapping[str, Any],
    ledger: FlopLedger | None = None,
    *,
    k: int | None = None,
    fraction: float | None = None,
) -> TargetSelections:
    """:func:`select_within_budget` for several targets on one pool, the shared work paid once.

    LESS selects for all targets in one pass (:meth:`~hf_cads.LESSSelector.select_many`): the
    warmup and pool gradient features are computed once and charged to the first target; every
    other target is charged its own gradients and similarity only. A selector that ignores the
    target (random, perplexity) scores the pool once: the others read the scores back from the
    score cache (``cache_dir`` / ``$HF_CADS_CACHE``, else a temporary one). Any other selector
    selects once per target through :func:`select_within_budget` (reusing its score cache where
    that holds a target's scores).

    The total estimate, the shared part once, is checked against what ``ledger`` has left before
    any work; a budget-sized selector (CADS) is fitted to an equal share of it per target. The
    ledger's ``selection`` phase is charged the total.

    Example:
        >>> from datasets import Dataset
        >>> pool = Dataset.from_dict({"text": ["a cat sat", "stock prices fell", "the cat ran", "bonds rose"]})
        >>> targets = {"cats": Dataset.from_dict({"text": ["my cat"]})}
        >>> targets["money"] = Dataset.from_dict({"text": ["stock prices"]})
        >>> chosen = select_for_targets(build_selector("bm25", seed=0), pool, targets, FlopLedger(budget=1e6), k=1)
        >>> chosen.path, [result.indices.tolist() for result in chosen.results.values()]
        ('per target', [[0], [1]])
    """
    if not isinstance(targets, Mapping) or not targets:
        raise ValueError("select_for_targets needs a mapping {name: target dataset} with at least one target.")
    path = multi_target_path(selector)
    scored = {name: (None if path == SCORED_ONCE else target) for name, target in targets.items()}
    for target in scored.values():
        selector.validate_inputs(pool, target)
    unique, _ = selector.unique_pool(pool)
    available = ledger.remaining if ledger is not None else math.inf
    share = available / len(targets)

    def fit(target: Any) -> None:
        if math.isfinite(available):
            selector.fit_to_budget(share, unique, target)

    estimates: dict[str, float] = {}
    if path == ONE_PASS:
        fit(next(iter(targets.values())))
        splits = {name: selector.estimate_flops_split(unique, target) for name, target in targets.items()}
        shared = next(iter(splits.values()))["pool"]
        estimates = {
            name: split["target"] + (shared if number == 0 else 0.0)
            for number, (name, split) in enumerate(splits.items())
        }
        detail = f"pool features {shared:.4g} once + the targets' own {sum(s['target'] for s in splits.values()):.4g}"
    elif path == SCORED_ONCE:
        estimates = {name: 0.0 for name in targets}
        estimates[next(iter(targets))] = float(selector.estimate_flops(unique, None))
        detail = "the pool scored once"
    else:
        for name, target in targets.items():
            fit(target)
            estimates[name] = float(selector.estimate_flops(unique, target))
        detail = ", ".join(f"{name}: {value:.4g}" for name, value in estimates.items())
    total = float(sum(estimates.values()))
    if math.isfinite(available) and total >= available:
        raise ValueError(
            f"flop_budget={ledger.budget:.4g} is smaller than the cost of the {selector.name!r} selector for "
            f"{len(targets)} targets on this pool ({total:.4g} FLOPs: {detail}), leaving nothing for training. "
            "Raise flop_budget, select for fewer targets, use a cheaper selector (random, bm25) or a smaller pool."
        )
    logger.info(
        "Selecting with %s for %d targets (%s; estimated %.4g FLOPs in all)", selector.name, len(targets), path, total
    )
    charges: dict[str, SelectionCharge] = {}
    results: dict[str, SelectionResult] = {}
    cache_folder = None
    if path == ONE_PASS:
        results = selector.select_many(pool, dict(targets), k=k, fraction=fraction)
        charges = {name: selection_charge(selector, results[name], estimates[name]) for name in targets}
    else:
        with _score_cache(selector, enabled=path == SCORED_ONCE) as cache_folder:
            for name, target in scored.items():
                fit(target)
                results[name], charges[name] = select_within_budget(
                    selector, pool, target, None, k=k, fraction=fraction
                )
                charges[name].estimated_flops = estimates[name]
    if ledger is not None:
        for charge in charges.values():
            ledger.charge("selection", charge.flops)
    temporary = cache_folder is not None and resolve_cache_dir(selector.config.cache_dir) is None
    return TargetSelections(results, charges, path, total, score_cache=cache_folder, score_cache_temporary=temporary)


@contextlib.contextmanager
def _score_cache(selector: Selector, enabled: bool) -> Iterator[str | None]:
    """The selector's score-cache folder while the block runs: its own (``cache_dir`` or
    ``$HF_CADS_CACHE``), else, when ``enabled``, a temporary one, removed afterwards."""
    configured = resolve_cache_dir(selector.config.cache_dir)
    if configured is not None or not enabled:
        yield str(configured) if configured is not None else None
        return
    with tempfile.TemporaryDirectory(prefix="hf_cads_scores_") as folder:
        selector.config.cache_dir = folder
        try:
            yield folder
        finally:
            selector.config.cache_dir = None
