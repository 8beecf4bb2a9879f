"""The FLOP-budget behaviour of :class:`~hf_cads.BudgetedTrainer`, as a mixin any ``transformers.Trainer``
subclass can take (e.g. a TRL trainer): ``class MyTrainer(FlopBudgetMixin, SFTTrainer)``."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from ..flops import FlopLedger, FlopProfile
from ..flops.charges import TrainingPlan
from ..records import append_record, record_from_trainer, trainer_metrics
from ..selectors import SelectionResult, build_selector, select_within_budget
from .model_card import add_budget_section
from .preemption import PreemptionGuard
from .preparation import profile_for_budget

logger = logging.getLogger(__name__)

LEDGER_FILE = "flop_ledger.json"
"""File name of the FLOP ledger in every checkpoint (restored on resume)."""


def mean_step_flops(
    profile: FlopProfile,
    lengths: Any,
    micro_batch: int,
    accumulation: int = 1,
    *,
    seed: int = 0,
    epochs: int = 3,
    gradient_checkpointing: bool = False,
    batch_cost: Callable[[np.ndarray], float] | None = None,
) -> float:
    """Mean FLOPs of one optimizer step when rows of these token ``lengths`` are shuffled into
    right-padded micro-batches (``epochs`` simulated epochs): what a step costs before training.
    ``batch_cost`` prices a micro-batch from its row indices instead (e.g. padding-free batches,
    see :meth:`FlopBudgetMixin.planned_batch_cost`).

    Example:
        >>> from transformers import LlamaConfig
        >>> profile = FlopProfile.from_config(LlamaConfig(hidden_size=64, intermediate_size=128,
        ...     num_hidden_layers=2, num_attention_heads=4, vocab_size=100))
        >>> mean_step_flops(profile, [10, 10, 10, 10], micro_batch=2) == profile.train_step_flops(2, 10)
        True
    """
    lengths = np.asarray(lengths)
    rng = np.random.default_rng(seed)
    step_costs = []
    for _ in range(epochs):
        order = rng.permutation(len(lengths))
        costs = [
            batch_cost(chunk)
            if batch_cost is not None
            else profile.train_step_flops(
                len(chunk), int(lengths[chunk].max()), gradient_checkpointing=gradient_checkpointing
            )
            for chunk in (order[i : i + micro_batch] for i in range(0, len(order), micro_batch))
        ]
        step_costs += [sum(costs[i : i + accumulation]) for i in range(0, len(costs), accumulation)]
    return float(np.mean(step_costs))


def packed_sequence_lengths(batch: dict[str, Any]) -> list[int] | None:
    """The sequence lengths inside a padding-free batch (TRL's ``padding_free`` / BFD packing: one
    row, no ``attention_mask``, ``position_ids`` restarting at 0 where a sequence starts); ``None``
    for an ordinary padded batch.

    Example:
        >>> import torch
        >>> packed_sequence_lengths({"input_ids": torch.zeros(1, 5), "position_ids": torch.tensor([[0, 1, 2, 0, 1]])})
        [3, 2]
    """
    positions = batch.get("position_ids")
    if positions is None or "attention_mask" in batch or positions.shape[0] != 1:
        return None
    starts = (positions[0] == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        return None
    bounds = starts + [int(positions.shape[1])]
    return [bounds[i + 1] - bounds[i] for i in range(len(starts))]


class FlopBudgetMixin:
    """FLOP-budgeted training for a ``transformers.Trainer`` subclass.

    The mixin keeps one :class:`~hf_cads.flops.FlopLedger` (``self.flop_ledger``), sizes training to what
    the budget leaves (:meth:`FlopBudgetMixin.plan_training`, a :class:`~hf_cads.flops.charges.TrainingPlan`),
    checks before every optimizer step that its exact cost (from the prefetched micro-batches, all
    processes summed) still fits and stops at the cap, charges training and evaluation FLOPs, writes the
    ledger into every checkpoint and restores it on resume, saves a checkpoint and stops when a budgeted
    run gets SIGTERM / SIGINT (:mod:`~hf_cads.trainer.preemption`), and after ``train()`` appends a run
    record when ``self.run_records`` names a file. The class using it calls
    :meth:`FlopBudgetMixin.init_budget_and_select` (or, without selection, :meth:`FlopBudgetMixin.init_budget`)
    in its ``__init__`` before ``Trainer.__init__``.

    A model the FLOP model cannot read (no transformers ``config``, an unknown architecture) trains
    without a ledger when there is no budget: every override then defers to the parent trainer.

    Example:
        >>> from transformers import Trainer
        >>> class MyBudgetedTrainer(FlopBudgetMixin, Trainer):
        ...     def __init__(self, model, args, train_dataset, **kwargs):
        ...         self.init_budget(getattr(args, "flop_budget", None), model)
        ...         super().__init__(model=model, args=args, train_dataset=train_dataset, **kwargs)
    """

    flop_ledger: FlopLedger
    flop_profile: FlopProfile | None
    run_records: str | os.PathLike | None
    selection_result: SelectionResult | None

    def init_budget(
        self,
        budget: float | None,
        model: Any,
        run_records: str | os.PathLike | None = None,
        flop_profile: FlopProfile | None = None,
    ) -> None:
        """Set up the ledger and the FLOP profile (``flop_profile``, else read from ``model``; ``None``
        for a model it cannot read when there is no budget); call before Trainer.__init__."""
        self.flop_ledger = FlopLedger(budget=budget)
        self.flop_profile = profile_for_budget(model, needed=budget is not None, flop_profile=flop_profile)
        self.run_records = run_records
        self._pending_charges: list[float] = []
        if not hasattr(self, "selection_result"):
            self.selection_result = None

    def init_budget_and_select(
        self,
        args: Any,
        model: Any,
        tokenizer: Any,
        train_dataset: Any,
        selection_target: Any = None,
        selector_model: Any = None,
        run_records: str | os.PathLike | None = None,
        flop_profile: FlopProfile | None = None,
    ) -> Any:
        """:meth:`init_budget` with ``args.flop_budget``, then, when ``args.selector`` is set and there is a
        ``train_dataset``, :meth:`select_training_data` from it against ``selection_target``. Returns the
        rows to train on (``train_dataset`` itself without a selector); call before Trainer.__init__."""
        self.init_budget(args.flop_budget, model, run_records, flop_profile)
        self.selection_result = None
        if train_dataset is not None and args.selector is not None:
            train_dataset = self.select_training_data(
                args, model, tokenizer, train_dataset, selection_target, selector_model
            )
        return train_dataset

    # -- selection ------------------------------------------------------------------------------
    def select_training_data(
        self, args: Any, model: Any, tokenizer: Any, pool: Any, target: Any, selector_model: Any = None
    ) -> Any:
        """Run ``args.selector`` on ``pool`` through :func:`~hf_cads.selectors.select_within_budget`
        (charging the ledger), keep the result in ``self.selection_result`` and return the chosen rows."""
        selector = build_selector(
            args.selector,
            args.selector_kwargs,
            seed=args.seed,
            training_model=model,
            training_tokenizer=tokenizer,
            selector_model=selector_model,
        )
        result, _ = select_within_budget(
            selector,
            pool,
            target,
            self.flop_ledger,
            k=args.selection_k,
            fraction=args.selection_fraction,
        )
        self.selection_result = result
        return result.dataset

    # -- sizing ---------------------------------------------------------------------------------
    def _micro_batch_flops(self, input_ids: Any) -> float:
        batch, seq = int(input_ids.shape[0]), int(input_ids.shape[1])
        return self.flop_profile.train_step_flops(
            batch, seq, gradient_checkpointing=bool(self.args.gradient_checkpointing)
        )

    def _varlen_attention(self) -> bool:
        # Flash-attention kernels attend within each packed sequence (cost sum of L_i^2); eager and
        # SDPA compute the whole square of a packed row and mask it.
        return "flash" in str(getattr(self.model.config, "_attn_implementation", "") or "")

    def batch_flops(self, batch: dict[str, Any]) -> float:
        """Training FLOPs of one collated micro-batch: its padded shape, or for a padding-free batch
        (one row, ``position_ids`` restarting at 0 per sequence) under a varlen attention kernel,
        the sum over its real sequence lengths."""
        segments = packed_sequence_lengths(batch) if self._varlen_attention() else None
        if segments:
            checkpointing = bool(self.args.gradient_checkpointing)
            return float(
                sum(
                    self.flop_profile.train_step_flops(1, length, gradient_checkpointing=checkpointing)
                    for length in segments
                )
            )
        return self._micro_batch_flops(batch["input_ids"])

    def train_token_lengths(self) -> list[int] | None:
        """Token count of every training row (a ``datasets.Dataset`` or a map-style torch dataset of
        rows with ``input_ids``); ``None`` when the rows cannot be counted before training (an
        iterable dataset, rows without ``input_ids``)."""
        dataset = self.train_dataset
        if hasattr(dataset, "column_names"):
            if "input_ids" not in (dataset.column_names or []):
                return None
            return [len(ids) for ids in dataset["input_ids"]]
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            return None
        lengths = []
        for index in range(len(dataset)):
            row = dataset[index]
            if not isinstance(row, dict) or "input_ids" not in row:
                return None
            lengths.append(len(row["input_ids"]))
        return lengths

    def planned_batch_cost(self) -> Callable[[np.ndarray], float] | None:
        """How :meth:`expected_step_flops` prices a micro-batch of dataset rows: ``None`` (right-padded
        rows, the default) or, when ``self.padding_free`` (TRL), the rows concatenated into one."""
        if not getattr(self, "padding_free", False):
            return None
        columns = self.train_dataset.column_names
        rows = (
            [list(s) for s in self.train_dataset["seq_lengths"]]
            if "seq_lengths" in columns
            else [[len(ids)] for ids in self.train_dataset["input_ids"]]
        )
        checkpointing = bool(self.args.gradient_checkpointing)
        cost = self.flop_profile.train_step_flops
        if self._varlen_attention():
            return lambda chunk: float(
                sum(cost(1, n, gradient_checkpointing=checkpointing) for i in chunk for n in rows[i])
            )
        return lambda chunk: cost(1, int(sum(sum(rows[i]) for i in chunk)), gradient_checkpointing=checkpointing)

    def expected_step_flops(self, epochs: int = 3, lengths: list[int] | None = None) -> float:
        """Mean FLOPs of one optimizer step over simulated shuffled epochs (``lengths``, default
        :meth:`train_token_lengths`)."""
        return mean_step_flops(
            self.flop_profile,
            lengths if lengths is not None else self.train_token_lengths(),
            self.args.per_device_train_batch_size * max(1, self.args.world_size),
            self.args.gradient_accumulation_steps,
            seed=self.args.seed,
            epochs=epochs,
            gradient_checkpointing=bool(self.args.gradient_checkpointing),
            batch_cost=self.planned_batch_cost(),
        )

    def plan_training(self) -> TrainingPlan | None:
        """Size training to the FLOPs the ledger has left: sets args.max_steps and
        flop_ledger.training; an error when not even one step fits. Rows that cannot be counted
        before training (an iterable dataset) keep the given ``max_steps``, the per-step cap still
        stopping training at the budget; returns ``None`` then."""
        lengths = self.train_token_lengths()
        if lengths is None:
            if self.args.max_steps > 0:
                logger.info(
                    "The training rows cannot be counted before training: max_steps=%d stays, and the FLOP cap "
                    "stops training at the budget.",
                    self.args.max_steps,
                )
                return None
            raise ValueError(
                "flop_budget sizes training from the token lengths of the training rows, but this train_dataset "
                "has no countable input_ids (e.g. an IterableDataset). Set max_steps (the budget still caps "
                "every step) or pass a datasets.Dataset."
            )
        remaining = self.flop_ledger.remaining
        per_step = self.expected_step_flops(lengths=lengths)
        steps = int(remaining // per_step)
        if steps < 1:
            raise ValueError(
                f"After selection ({self.flop_ledger.entries['selection']:.4g} FLOPs) only {remaining:.4g} of the "
                f"{self.flop_ledger.budget:.4g} FLOP budget remain, less than one training step (~{per_step:.4g} "
                "FLOPs). Raise flop_budget or lower the batch size / max_length."
            )
        # One step of slack: the hard cap in get_batch_samples ends training exactly at the budget,
        # and a few cheaper-than-average steps should not end it early.
        self.args.max_steps = int(math.ceil(remaining / per_step)) + 1
        self.flop_ledger.training.planned_steps = self.args.max_steps
        self.flop_ledger.training.expected_step_flops = per_step
        logger.info("FLOP budget sizes training to ~%d optimizer steps of ~%.4g FLOPs", steps, per_step)
        return self.flop_ledger.training

    # -- enforcement and charging ---------------------------------------------------------------
    def _global_sum(self, values: list[float]) -> list[float]:
        if self.accelerator.num_processes <= 1:
            return values
        import torch

        local = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        return self.accelerator.reduce(local, reduction="sum").tolist()

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> tuple[list, Any]:
        batch_samples, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.flop_profile is None:
            return batch_samples, num_items
        tokens = sum(
            int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel() for b in batch_samples
        )
        *costs, tokens = self._global_sum([self.batch_flops(b) for b in batch_samples] + [float(tokens)])
        if not self.flop_ledger.can_afford(sum(costs)):
            logger.info(
                "Stopping: the next step (%.4g FLOPs) would exceed the budget (%.4g of %.4g spent).",
                sum(costs),
                self.flop_ledger.spent,
                self.flop_ledger.budget,
            )
            self.control.should_training_stop = True
            self.flop_ledger.training.stopped_by_budget = True
            return [], None
        self._pending_charges = list(costs)
        self.flop_ledger.training.tokens_trained += int(tokens)
        return batch_samples, num_items

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.flop_profile is None:
            return loss
        charge = (
            self._pending_charges.pop(0) if self._pending_charges else self._global_sum([self.batch_flops(inputs)])[0]
        )
        self.flop_ledger.charge("train", charge)
        return loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Adds the ledger (selection/train FLOPs, share of budget used) to every log entry."""
        if self.flop_profile is None:
            super().log(logs, *args, **kwargs)
            return
        logs["flops_selection"] = self.flop_ledger.entries["selection"]
        logs["flops_train"] = self.flop_ledger.entries["train"]
        if self.flop_ledger.budget is not None:
            logs["flops_budget_used"] = self.flop_ledger.spent / self.flop_ledger.budget
        super().log(logs, *args, **kwargs)

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        if self.flop_profile is None or "input_ids" not in inputs:
            return super().floating_point_ops(inputs)
        return int(self.batch_flops(inputs))

    def prediction_step(
        self, model: Any, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: Any = None
    ) -> Any:
        output = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        if self.flop_profile is None or "input_ids" not in inputs:
            return output
        ids = inputs["input_ids"]
        self.flop_ledger.charge(
            "eval", self._global_sum([self.flop_profile.forward_flops(int(ids.shape[0]), int(ids.shape[1]))])[0]
        )
        return output

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """The base trainer's model card plus the compute-budget section: ledger by phase, selector and
        a link to the selected subset once it was pushed (see
        :func:`hf_cads.trainer.model_card.add_budget_section`)."""
        super().create_model_card(*args, **kwargs)
        if self.is_world_process_zero():
            add_budget_section(self, os.path.join(self.args.output_dir, "README.md"))

    # -- checkpoints carry the ledger -----------------------------------------------------------
    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        # The ledger goes in before Trainer writes trainer_state.json, so a process killed while
        # saving never leaves a checkpoint that looks complete but has no ledger.
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save:
            os.makedirs(folder, exist_ok=True)
            self.flop_ledger.save(os.path.join(folder, LEDGER_FILE))
        super()._save_checkpoint(model, trial)

    def restore_ledger(self, checkpoint: str) -> None:
        """Take over the ledger of a checkpoint written by this mixin. Without a budget a checkpoint
        without one (e.g. written by the parent trainer) resumes with the FLOPs before it unrecorded."""
        path = os.path.join(checkpoint, LEDGER_FILE)
        if not os.path.exists(path) and self.flop_ledger.budget is None:
            logger.warning(
                "Checkpoint %r has no %s: the FLOPs spent before it are not recorded.", checkpoint, LEDGER_FILE
            )
            return
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"Checkpoint {checkpoint!r} has no {LEDGER_FILE}; it was not written by BudgetedTrainer, so the "
                "FLOPs it spent are unknown. Resume from a BudgetedTrainer checkpoint or start afresh."
            )
        restored = FlopLedger.load(path)
        if restored.budget != self.flop_ledger.budget:
            raise ValueError(
                f"Checkpoint ledger budget {restored.budget} differs from flop_budget {self.flop_ledger.budget}; "
                "resume with the same flop_budget."
            )
        self.flop_ledger.entries.update(restored.entries)
        self.flop_ledger.notes.update(restored.notes)
        self.flop_ledger.training = restored.training
        if restored.selection is not None:
            self.flop_ledger.selection = restored.selection
        if restored.training.planned_steps:
            # Sized from this run's selection charge, max_steps may differ (e.g. 0 FLOPs for a cached
            # selection); the checkpoint's plan keeps the learning-rate schedule of the original run.
            self.args.max_steps = int(restored.training.planned_steps)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            from transformers.trainer_utils import get_last_checkpoint

            checkpoint = get_last_checkpoint(self.args.output_dir)
        if isinstance(checkpoint, str):
            self.restore_ledger(checkpoint)
        guard = PreemptionGuard(self) if self.flop_ledger.budget is not None else None
        if guard is None:
            output = super().train(resume_from_checkpoint, *args, **kwargs)
        else:
            with guard:
                output = super().train(resume_from_checkpoint, *args, **kwargs)
            guard.finish()  # after a signal: says where to resume, then lets the signal take its course
        if self.run_records is not None and self.is_world_process_zero():
            append_record(
                self.run_records,
                record_from_trainer(self, trainer_metrics(self, output), seconds=output.metrics.get("train_runtime")),
            )
        return output
