"""The typed budget plan a :class:`~hf_cads.flops.FlopLedger` carries beside its FLOPs by phase.

:class:`SelectionCharge` says what the selection cost and chose (written by
:func:`hf_cads.selectors.select_within_budget`); :class:`TrainingPlan` what the budget planned for
training and what happened (written by :class:`~hf_cads.BudgetedTrainer`). The report, the run
record and the model card read these fields; checkpoints keep them (``flop_ledger.json``).

Example:
    >>> plan = TrainingPlan(planned_steps=10, expected_step_flops=2e9)
    >>> plan.planned_flops
    20000000000.0
    >>> TrainingPlan.from_dict(plan.to_dict()) == plan
    True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SelectionCharge:
    """What one selection cost and chose.

    Args:
        selector: registry name of the selector.
        k / pool_size: rows kept and candidate rows.
        estimated_flops: the selector's estimate, checked against the budget before any work.
        flops: FLOPs charged to the ledger's ``selection`` phase (0 when the scores came whole from
            the score cache).
        model_params: matmul parameters of the model the selector scored with (0: none).
        cache: the score cache's report (``hit``, ``dir``, ``original_flops``, ...), when one was used.
        stages: FLOPs by stage for selectors that report them (LESS: warmup, features, projection).
        duplicates_dropped: pool rows not scored because they repeat an earlier row's text
            (``deduplicate="drop"``).
        feature_index: LESS's report when it reused stored pool features (``dir``,
            ``reused_flops``: what computing them cost; they are not charged again).
        flops_split: what computing this selection costs, split into ``pool`` (work that depends
            on the pool alone, e.g. LESS's warmup and pool gradient features, which a selection for
            another target on the same pool reuses) and ``target`` (this target's own work), counted
            whether charged here or reused from a feature index or an earlier target; ``None`` for
            selectors that do not report one. The planner amortises ``pool`` over ``--targets``.
    """

    selector: str
    k: int
    pool_size: int
    estimated_flops: float
    flops: float
    model_params: int = 0
    cache: dict[str, Any] | None = None
    stages: dict[str, float] = field(default_factory=dict)
    duplicates_dropped: int = 0
    feature_index: dict[str, Any] | None = None
    flops_split: dict[str, float] | None = None

    @property
    def cache_hit(self) -> bool:
        return bool(self.cache and self.cache.get("hit"))

    @property
    def cost(self) -> float:
        """What this selection costs to compute: :attr:`flops`, or what computing the reused parts
        cost too: the cached scores on a cache hit, the pool features reused from an index or an
        earlier target (:attr:`flops_split`). The planner compares selections by this, not by what a
        rerun paid."""
        if self.flops_split:
            return float(sum(self.flops_split.values()))
        if self.cache_hit:
            return self.flops + float(self.cache.get("original_flops", 0.0))
        return self.flops

    @property
    def pool_flops(self) -> float | None:
        """The part of :attr:`cost` that depends on the pool alone (``None``: not reported)."""
        return float(self.flops_split["pool"]) if self.flops_split else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SelectionCharge:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in data.items() if name in known})


@dataclass
class TrainingPlan:
    """How the budget sized training, and how training ended.

    Args:
        planned_steps: optimizer steps the remaining budget pays for (plus one step of slack), set
            as ``max_steps``; ``None`` when training is not capped.
        expected_step_flops: mean FLOPs of one optimizer step, estimated before training.
        stopped_by_budget: training ended because the next step would have exceeded the budget.
        tokens_trained: non-padding tokens in the optimizer steps taken (all processes).
    """

    planned_steps: int | None = None
    expected_step_flops: float | None = None
    stopped_by_budget: bool = False
    tokens_trained: int = 0

    @property
    def planned_flops(self) -> float | None:
        if not self.planned_steps or not self.expected_step_flops:
            return None
        return float(self.planned_steps) * float(self.expected_step_flops)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingPlan:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in data.items() if name in known})
