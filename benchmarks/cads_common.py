"""Helpers shared by the CADS benchmarks on small torch models: train a fresh model on chosen rows for a
FLOP budget and evaluate it on a test set, with the same code CADS itself uses for its pilot runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Seeded:
    """The one config field ``TensorBackend.prepare`` reads."""

    seed: int


def train_and_evaluate(
    model_factory: Callable[[], Any],
    loss: str,
    pool: Any,
    test: Any,
    rows: Any,
    budget: float,
    seed: int,
    lr: float,
    batch_size: int,
) -> dict[str, float]:
    """Train a fresh model (seeded) on ``rows`` of ``pool`` until ``budget`` FLOPs; test loss (and accuracy)."""
    import torch

    from hf_cads.selectors.cads.backends import TensorBackend
    from hf_cads.selectors.cads.outer_loop import train_for_budget

    task = TensorBackend(model_factory, loss=loss).prepare(pool, test, Seeded(seed))
    steps, flops = train_for_budget(task, np.asarray(rows), budget, lr, batch_size, np.random.default_rng(seed))
    test_loss, _, _ = task.loss(np.arange(task.num_target_rows), "target", False)
    out = {"test_loss": float(test_loss), "steps": steps, "train_flops": flops}
    if loss == "cross_entropy":
        features, labels = task.data["target"]
        with torch.no_grad():
            out["test_accuracy"] = float((task.model(features).argmax(dim=1) == labels).float().mean())
    return out
