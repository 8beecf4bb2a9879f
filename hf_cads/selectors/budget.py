"""The one selection path under a FLOP budget, shared by :class:`~hf_cads.BudgetedTrainer`,
``hf-cads select`` and the run records.

:func:`build_selector` turns a name and options into a selector the way a recipe means it (the
run's seed; a model-based selector scores with the model being finetuned unless it names its own).
:func:`select_within_budget` then validates the inputs, lets a budget-aware selector size itself
to what the budget leaves (CADS: :meth:`~hf_cads.selectors.Selector.fit_to_budget`), estimates the
cost, refuses a budget below the estimate before any work, selects, charges the ledger and returns
the typed :class:`~hf_cads.budget.SelectionCharge`.

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

import logging
import math
from typing import Any, Callable, Mapping

from ..budget import SelectionCharge
from ..flops import FlopLedger, FlopProfile
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
    """
    options = dict(options or {})
    options.setdefault("seed", seed)
    models: dict[str, Any] = {}
    if selector_model is not None:
        models = {"model": selector_model}
    elif training_model is not None and get_selector_class(name).reuses_training_model and "model_name_or_path" not in options:
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


def selection_model_params(selector: Any) -> int:
    """Matmul parameters of the model a selector scored with (0 for model-free selectors)."""
    model = getattr(selector, "model", None)
    if model is None or not getattr(selector, "uses_model", False):
        return 0
    return matmul_params(model)


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
    stages = result.extras.get("flops_breakdown")
    charge = SelectionCharge(
        selector=result.selector,
        k=len(result),
        pool_size=result.pool_size,
        estimated_flops=estimate,
        flops=float(result.flops),
        model_params=selection_model_params(selector),
        cache=dict(result.extras["cache"]) if isinstance(result.extras.get("cache"), Mapping) else None,
        stages={name: float(value) for name, value in stages.items()} if isinstance(stages, Mapping) else {},
        duplicates_dropped=int(result.extras.get("deduplication", {}).get("dropped", 0)),
    )
    if ledger is not None:
        ledger.charge("selection", charge.flops)
        ledger.selection = charge
    return result, charge
