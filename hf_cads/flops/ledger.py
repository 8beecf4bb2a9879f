"""The FLOP ledger: where a budgeted finetune's FLOPs went, by phase, under a hard cap.

Example:
    >>> from hf_cads.flops import FlopLedger
    >>> ledger = FlopLedger(budget=1e12)
    >>> ledger.charge("train", 4e11)
    >>> ledger.remaining
    600000000000.0
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .charges import SelectionCharge, TrainingPlan

LEDGER_FORMAT = 2
"""Version of :meth:`FlopLedger.to_dict`'s layout (1: untyped ``notes`` only)."""
PHASES = ("selection", "train", "eval")
"""Ledger phases. ``selection`` and ``train`` count against the budget; ``eval`` is reported only."""

BUDGETED_PHASES = ("selection", "train")
"""The phases whose FLOPs count against the budget (``spent``); ``eval`` is reported beside them."""


class BudgetExceededError(RuntimeError):
    """Raised when a charge or a plan would take the ledger past its FLOP budget."""


@dataclass
class FlopLedger:
    """Where the FLOPs of a budgeted finetune went, by phase, with a hard cap.

    ``selection`` and ``train`` count against :attr:`budget`; ``eval`` is recorded for reporting.
    :meth:`charge` refuses (raises :class:`BudgetExceededError`) any budgeted charge that would go
    past the cap, and :meth:`can_afford` lets a caller check a planned cost first.

    Example:
        >>> ledger = FlopLedger(budget=100.0)
        >>> ledger.charge("selection", 30.0)
        >>> ledger.can_afford(80.0)
        False
        >>> ledger.remaining
        70.0

    Beside the FLOPs it carries the typed plan: :attr:`selection` (a
    :class:`~hf_cads.flops.charges.SelectionCharge`) and :attr:`training` (a
    :class:`~hf_cads.flops.charges.TrainingPlan`); :attr:`notes` holds anything else a caller adds.
    """

    budget: float | None = None
    entries: dict[str, float] = field(default_factory=lambda: {phase: 0.0 for phase in PHASES})
    notes: dict[str, Any] = field(default_factory=dict)
    selection: SelectionCharge | None = None
    training: TrainingPlan = field(default_factory=TrainingPlan)

    def __post_init__(self) -> None:
        if self.budget is not None:
            self.budget = validate_budget(self.budget)
        for phase in PHASES:
            self.entries.setdefault(phase, 0.0)

    @property
    def spent(self) -> float:
        """FLOPs counted against the budget (selection + train)."""
        return sum(self.entries[p] for p in BUDGETED_PHASES)

    @property
    def remaining(self) -> float:
        return math.inf if self.budget is None else self.budget - self.spent

    def can_afford(self, flops: float) -> bool:
        return self.budget is None or self.spent + float(flops) <= self.budget * (1 + 1e-12)

    def charge(self, phase: str, flops: float) -> None:
        """Record ``flops`` under ``phase``; budgeted phases may not exceed the budget."""
        if phase not in PHASES:
            raise ValueError(f"Unknown ledger phase {phase!r}; use one of {PHASES}.")
        flops = float(flops)
        if not math.isfinite(flops) or flops < 0:
            raise ValueError(f"Cannot charge {flops!r} FLOPs to {phase!r}: a charge must be finite and >= 0.")
        if phase in BUDGETED_PHASES and not self.can_afford(flops):
            raise BudgetExceededError(
                f"Charging {flops:.4g} FLOPs to {phase!r} would spend {self.spent + flops:.4g} of a "
                f"{self.budget:.4g} FLOP budget ({self.spent:.4g} already spent). Raise flop_budget or "
                "select/train on less data."
            )
        self.entries[phase] += flops

    def breakdown(self) -> dict[str, float]:
        """FLOPs per phase plus ``total`` (budgeted phases), ``budget`` and ``fraction_used``."""
        out = dict(self.entries)
        out["total"] = self.spent
        if self.budget is not None:
            out["budget"] = self.budget
            out["fraction_used"] = self.spent / self.budget
        return out

    def format_table(self) -> str:
        """A small human-readable table of :meth:`breakdown`."""
        return self.format_breakdown(self.breakdown())

    @staticmethod
    def format_breakdown(breakdown: Mapping[str, float]) -> str:
        """The table of a :meth:`breakdown` (e.g. one read back from a report)."""
        budget, spent = breakdown.get("budget"), breakdown["total"]
        rows = [f"{'phase':<12}{'FLOPs':>14}{'share':>9}"]
        denom = budget or spent or 1.0
        for phase in PHASES:
            rows.append(f"{phase:<12}{breakdown[phase]:>14.4e}{breakdown[phase] / denom:>9.1%}")
        rows.append(f"{'total':<12}{spent:>14.4e}{spent / denom:>9.1%}")
        if budget is not None:
            rows.append(f"{'budget':<12}{budget:>14.4e}{1.0:>9.1%}")
        return "\n".join(rows)

    # -- persistence (checkpoints) --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": LEDGER_FORMAT,
            "budget": self.budget,
            "entries": dict(self.entries),
            "selection": self.selection.to_dict() if self.selection is not None else None,
            "training": self.training.to_dict(),
            "notes": dict(self.notes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FlopLedger:
        """Read :meth:`to_dict`'s output; a ledger of another format is refused with the reason."""
        if data.get("format") != LEDGER_FORMAT:
            raise ValueError(
                f"This ledger has format {data.get('format')!r}, not {LEDGER_FORMAT!r}: it was written by another "
                "hf_cads version; rerun the job (or resume from a checkpoint written by this version)."
            )
        entries = dict(data["entries"])
        selection = SelectionCharge.from_dict(data["selection"]) if data.get("selection") else None
        return cls(
            budget=data.get("budget"),
            entries=entries,
            notes=dict(data.get("notes", {})),
            selection=selection,
            training=TrainingPlan.from_dict(data["training"]),
        )

    def save(self, path: str) -> None:
        """Write the ledger as JSON, atomically (a temporary file moved into place)."""
        temporary = f"{path}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(self.to_dict(), handle, indent=2)
        os.replace(temporary, path)

    @classmethod
    def load(cls, path: str) -> FlopLedger:
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))


def validate_budget(budget: Any) -> float:
    """Return ``budget`` as a float, or raise a clear error for non-numbers, NaN, inf and <= 0."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float, str)):
        raise TypeError(f"flop_budget must be a number such as 3e15, got {type(budget).__name__} {budget!r}.")
    try:
        value = float(budget)
    except ValueError as err:
        raise ValueError(f"flop_budget must be a number such as 3e15, got {budget!r}.") from err
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"flop_budget must be a finite number > 0, got {budget!r}.")
    return value
