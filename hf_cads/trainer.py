"""``BudgetedTrainer``: a drop-in ``transformers.Trainer`` whose data selection and training share one
FLOP budget.

The trainer runs the configured selector on ``train_dataset`` first (charging its FLOPs), sizes
training to the FLOPs that remain, and before every optimizer step checks that the step's exact
cost (from the prefetched micro-batches, all processes summed) still fits: it stops at the cap and
never goes past it, with or without gradient accumulation.

Example:
    >>> from hf_cads import BudgetedTrainer, BudgetedTrainingArguments  # doctest: +SKIP
    >>> args = BudgetedTrainingArguments(output_dir="out", flop_budget=2e14, selector="bm25",
    ...                                  selection_fraction=0.1, per_device_train_batch_size=4)  # doctest: +SKIP
    >>> trainer = BudgetedTrainer(model=model, args=args, train_dataset=pool, processing_class=tokenizer,
    ...                           selection_target=validation, peft_config=LoraConfig(r=8))  # doctest: +SKIP
    >>> trainer.train()  # doctest: +SKIP
    >>> trainer.flop_ledger.breakdown()  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from transformers import Trainer, TrainingArguments

from .data import get_texts
from .flops import FlopLedger, FlopProfile, validate_budget
from .records import append_record, record_from_trainer, selection_model_params, trainer_metrics
from .selectors import SelectionResult, get_selector, get_selector_class

logger = logging.getLogger(__name__)

LEDGER_FILE = "flop_ledger.json"


@dataclass
class BudgetedTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus the compute budget and the data selector.

    Args:
        flop_budget: total FLOPs for selection + training (e.g. ``3e15``). ``None`` records FLOPs
            without a cap.
        selector: registry name of the selector (``random``, ``bm25``, ``embedding``, ``perplexity``,
            ...); ``None`` trains on ``train_dataset`` as given.
        selection_fraction / selection_k: how much of the pool to keep (one of them).
        selector_kwargs: options of the selector's config (dict, or JSON string on the CLI).
        max_seq_length: token limit when the trainer tokenises a text dataset.
        text_column: column holding the text (default ``text``, else chat ``messages``).
    """

    flop_budget: float | None = field(default=None, metadata={"help": "Total FLOPs for selection + training."})
    selector: str | None = field(default=None, metadata={"help": "Registered selector name, e.g. bm25."})
    selection_fraction: float | None = field(default=None, metadata={"help": "Share of the pool to keep, in (0, 1]."})
    selection_k: int | None = field(default=None, metadata={"help": "Number of pool rows to keep."})
    selector_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Selector options as a dict or JSON string, e.g. '{\"aggregate\": \"max\"}'."}
    )
    max_seq_length: int = field(default=512, metadata={"help": "Token limit when tokenising text datasets."})
    text_column: str | None = field(default=None, metadata={"help": "Text column (default: text, else messages)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.flop_budget is not None:
            self.flop_budget = validate_budget(self.flop_budget)
        if isinstance(self.selector_kwargs, str):
            try:
                self.selector_kwargs = json.loads(self.selector_kwargs) if self.selector_kwargs.strip() else {}
            except json.JSONDecodeError as err:
                raise ValueError(f"selector_kwargs must be a JSON object, got {self.selector_kwargs!r}: {err}.") from err
        if self.selector_kwargs is not None and not isinstance(self.selector_kwargs, dict):
            raise TypeError(f"selector_kwargs must be a dict, got {type(self.selector_kwargs).__name__}.")
        if self.selector is not None:
            get_selector_class(self.selector)  # unknown names fail here, listing the registered ones
            if self.selection_fraction is None and self.selection_k is None and not get_selector_class(self.selector).chooses_own_size:
                raise ValueError(f"selector={self.selector!r} needs selection_fraction or selection_k.")
        if self.max_seq_length < 2:
            raise ValueError(f"max_seq_length must be >= 2, got {self.max_seq_length}.")


@dataclass
class CausalLMCollator:
    """Right-pads ``input_ids`` and builds ``labels`` with padding masked out (-100)."""

    pad_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        labels = torch.full((len(features), width), -100, dtype=torch.long)
        for row, feature in enumerate(features):
            ids = torch.as_tensor(feature["input_ids"], dtype=torch.long)
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
            labels[row, : len(ids)] = torch.as_tensor(feature.get("labels", ids), dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def tokenize_for_causal_lm(dataset: Any, tokenizer: Any, max_length: int, text_column: str | None = None, role: str = "train") -> Any:
    """Tokenise a text or chat dataset into ``input_ids`` (EOS appended, truncated to ``max_length``)."""
    if "input_ids" in dataset.column_names:
        return dataset
    if tokenizer is None:
        raise ValueError(f"The {role} dataset holds text; pass processing_class= (a tokenizer) so it can be tokenised.")
    texts = get_texts(dataset, text_column, tokenizer, role=role)
    encoded = tokenizer(texts, truncation=True, max_length=max_length - 1)["input_ids"]
    eos = tokenizer.eos_token_id
    ids = [list(e) + ([eos] if eos is not None else []) for e in encoded]
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": ids})


def mean_step_flops(
    profile: FlopProfile,
    lengths: Any,
    micro_batch: int,
    accumulation: int = 1,
    *,
    seed: int = 0,
    epochs: int = 3,
    gradient_checkpointing: bool = False,
) -> float:
    """Mean FLOPs of one optimizer step when rows of these token ``lengths`` are shuffled into
    right-padded micro-batches (``epochs`` simulated epochs): what a step costs before training.

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
            profile.train_step_flops(len(chunk), int(lengths[chunk].max()), gradient_checkpointing=gradient_checkpointing)
            for chunk in (order[i : i + micro_batch] for i in range(0, len(order), micro_batch))
        ]
        step_costs += [sum(costs[i : i + accumulation]) for i in range(0, len(costs), accumulation)]
    return float(np.mean(step_costs))


class BudgetedTrainer(Trainer):
    """``transformers.Trainer`` with FLOP-budgeted data selection and training.

    Same constructor as ``Trainer`` plus:

    Args:
        selection_target: validation examples of the target task, for targeted selectors.
        peft_config: a ``peft`` config (e.g. ``LoraConfig``); the model is wrapped with it.
        selector_model: a model object for the selector (default: model-based LM selectors reuse
            the trained model unless ``selector_kwargs`` names ``model_name_or_path``).
        run_records: a JSON-lines file; after ``train()`` the main process appends a
            :class:`~hf_cads.records.RunRecord` (train loss, latest ``eval_*`` metrics) to it.

    ``model`` may also be a name or path (see :func:`hf_cads.models.load_causal_lm`).
    After construction, ``trainer.selection_result`` holds the selection and
    ``trainer.flop_ledger`` the FLOPs spent so far.
    """

    def __init__(
        self,
        model: Any = None,
        args: BudgetedTrainingArguments | None = None,
        data_collator: Any = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        *,
        selection_target: Any = None,
        peft_config: Any = None,
        selector_model: Any = None,
        run_records: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        if args is None:
            args = BudgetedTrainingArguments(output_dir="hf_cads_output")
        if not isinstance(args, BudgetedTrainingArguments):
            raise TypeError(f"BudgetedTrainer needs BudgetedTrainingArguments, got {type(args).__name__}.")
        if isinstance(model, str):
            from .models import load_causal_lm

            model, loaded_tokenizer = load_causal_lm(model)
            processing_class = processing_class or loaded_tokenizer
        if model is None:
            raise ValueError("BudgetedTrainer needs model= (a model object, Hub id, folder or built-in alias).")
        if processing_class is not None and getattr(processing_class, "pad_token_id", 0) is None:
            processing_class.pad_token = processing_class.eos_token
        if peft_config is not None:
            from peft import get_peft_model
            from transformers import set_seed

            # Trainer seeds only later; seeding here makes the adapter initialisation (and so a
            # selector cache keyed by these weights) the same on every run with this seed.
            set_seed(args.seed)
            try:
                model = get_peft_model(model, peft_config)
            except ValueError as err:
                raise ValueError(f"peft_config does not fit this model: {err}") from err
        self.flop_ledger = FlopLedger(budget=args.flop_budget)
        self.selection_result: SelectionResult | None = None
        self._pending_charges: list[float] = []
        self.run_records = run_records
        profile = FlopProfile.from_model(model)
        self.flop_profile = profile
        self._check_vocabulary(model, processing_class)

        if train_dataset is not None and args.selector is not None:
            train_dataset = self._run_selection(args, model, processing_class, train_dataset, selection_target, selector_model)
        if train_dataset is not None:
            train_dataset = tokenize_for_causal_lm(train_dataset, processing_class, args.max_seq_length, args.text_column)
            if len(train_dataset) == 0:
                raise ValueError("The training dataset is empty; nothing to train on.")
        if eval_dataset is not None and not isinstance(eval_dataset, dict):
            eval_dataset = tokenize_for_causal_lm(eval_dataset, processing_class, args.max_seq_length, args.text_column, role="eval")
        if data_collator is None and processing_class is not None:
            pad = processing_class.pad_token_id if processing_class.pad_token_id is not None else processing_class.eos_token_id
            data_collator = CausalLMCollator(pad_token_id=int(pad))
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        if train_dataset is not None and self.flop_ledger.budget is not None:
            self._size_training()

    # -- selection ------------------------------------------------------------------------------
    def _check_vocabulary(self, model: Any, tokenizer: Any) -> None:
        if tokenizer is None or not hasattr(model, "get_input_embeddings"):
            return
        rows = model.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > rows:
            raise ValueError(
                f"The tokenizer has {len(tokenizer)} tokens but the model's embedding has {rows} rows: "
                "the tokenizer does not belong to this model. Pass the model's own tokenizer."
            )

    def _run_selection(self, args: BudgetedTrainingArguments, model: Any, tokenizer: Any, pool: Any, target: Any, selector_model: Any) -> Any:
        options = dict(args.selector_kwargs or {})
        options.setdefault("seed", args.seed)
        cls = get_selector_class(args.selector)
        model_objects: dict[str, Any] = {}
        if selector_model is not None:
            model_objects = {"model": selector_model}
        elif getattr(cls, "reuses_training_model", False) and "model_name_or_path" not in options:
            model_objects = {"model": model, "tokenizer": tokenizer}
        selector = get_selector(args.selector, **options, **model_objects)
        selector.validate_inputs(pool, target)
        estimate = selector.estimate_flops(pool, target)
        if self.flop_ledger.budget is not None and estimate >= self.flop_ledger.budget:
            raise ValueError(
                f"flop_budget={self.flop_ledger.budget:.4g} is smaller than the cost of the {args.selector!r} "
                f"selector on this pool ({estimate:.4g} FLOPs), leaving nothing for training. Raise flop_budget, "
                "use a cheaper selector (random, bm25) or a smaller pool."
            )
        logger.info("Selecting with %s (estimated %.4g FLOPs)", args.selector, estimate)
        result = selector.select(pool, target=target, k=args.selection_k, fraction=args.selection_fraction)
        self.flop_ledger.charge("selection", result.flops)
        self.flop_ledger.notes["selector"] = result.selector
        self.flop_ledger.notes["k"] = len(result)
        self.flop_ledger.notes["pool_size"] = result.pool_size
        self.flop_ledger.notes["selection_model_params"] = selection_model_params(selector)
        if "cache" in result.extras:
            # A cache hit is charged 0 FLOPs here; the note keeps what the cached scoring cost.
            self.flop_ledger.notes["selection_cache"] = dict(result.extras["cache"])
        if result.extras.get("feature_index", {}).get("reused"):
            # LESS reused stored pool features (charged 0 here); the note keeps what they cost.
            self.flop_ledger.notes["selection_feature_index"] = dict(result.extras["feature_index"])
        if isinstance(result.extras.get("flops_breakdown"), dict):
            # Selectors with stages (LESS: warmup, gradient features, projection) report them here.
            self.flop_ledger.notes["selection_flops"] = {k: float(v) for k, v in result.extras["flops_breakdown"].items()}
        self.selection_result = result
        return result.dataset

    # -- budget sizing and enforcement ----------------------------------------------------------
    def _micro_batch_flops(self, input_ids: Any) -> float:
        batch, seq = int(input_ids.shape[0]), int(input_ids.shape[1])
        return self.flop_profile.train_step_flops(batch, seq, gradient_checkpointing=bool(self.args.gradient_checkpointing))

    def expected_step_flops(self, epochs: int = 3) -> float:
        """Mean FLOPs of one optimizer step over simulated shuffled epochs (lengths from the data)."""
        return mean_step_flops(
            self.flop_profile, [len(ids) for ids in self.train_dataset["input_ids"]],
            self.args.per_device_train_batch_size * max(1, self.args.world_size), self.args.gradient_accumulation_steps,
            seed=self.args.seed, epochs=epochs, gradient_checkpointing=bool(self.args.gradient_checkpointing),
        )

    def _size_training(self) -> None:
        remaining = self.flop_ledger.remaining
        per_step = self.expected_step_flops()
        steps = int(remaining // per_step)
        if steps < 1:
            raise ValueError(
                f"After selection ({self.flop_ledger.entries['selection']:.4g} FLOPs) only {remaining:.4g} of the "
                f"{self.flop_ledger.budget:.4g} FLOP budget remain, less than one training step (~{per_step:.4g} "
                "FLOPs). Raise flop_budget or lower the batch size / max_seq_length."
            )
        # One step of slack: the hard cap in get_batch_samples ends training exactly at the budget,
        # and a few cheaper-than-average steps should not end it early.
        self.args.max_steps = int(math.ceil(remaining / per_step)) + 1
        self.flop_ledger.notes["planned_steps"] = self.args.max_steps
        self.flop_ledger.notes["expected_step_flops"] = per_step
        logger.info("FLOP budget sizes training to ~%d optimizer steps of ~%.4g FLOPs", steps, per_step)

    def _global_sum(self, values: list[float]) -> list[float]:
        if self.accelerator.num_processes <= 1:
            return values
        import torch

        local = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        return self.accelerator.reduce(local, reduction="sum").tolist()

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> tuple[list, Any]:
        batch_samples, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        tokens = sum(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel() for b in batch_samples)
        *costs, tokens = self._global_sum([self._micro_batch_flops(b["input_ids"]) for b in batch_samples] + [float(tokens)])
        if not self.flop_ledger.can_afford(sum(costs)):
            logger.info(
                "Stopping: the next step (%.4g FLOPs) would exceed the budget (%.4g of %.4g spent).",
                sum(costs), self.flop_ledger.spent, self.flop_ledger.budget,
            )
            self.control.should_training_stop = True
            self.flop_ledger.notes["stopped_by_budget"] = True
            return [], None
        self._pending_charges = list(costs)
        self.flop_ledger.notes["tokens_trained"] = self.flop_ledger.notes.get("tokens_trained", 0) + int(tokens)
        return batch_samples, num_items

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        loss = super().training_step(model, inputs, num_items_in_batch)
        charge = self._pending_charges.pop(0) if self._pending_charges else self._global_sum([self._micro_batch_flops(inputs["input_ids"])])[0]
        self.flop_ledger.charge("train", charge)
        return loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Adds the ledger (selection/train FLOPs, share of budget used) to every log entry."""
        logs["flops_selection"] = self.flop_ledger.entries["selection"]
        logs["flops_train"] = self.flop_ledger.entries["train"]
        if self.flop_ledger.budget is not None:
            logs["flops_budget_used"] = self.flop_ledger.spent / self.flop_ledger.budget
        super().log(logs, *args, **kwargs)

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """``Trainer``'s model card plus the compute-budget section: ledger by phase, selector and a
        link to the selected subset once it was pushed (see :func:`hf_cads.hub.add_budget_section`)."""
        super().create_model_card(*args, **kwargs)
        if self.is_world_process_zero():
            from .hub import add_budget_section

            add_budget_section(self, os.path.join(self.args.output_dir, "README.md"))

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        return int(self._micro_batch_flops(inputs["input_ids"]))

    def prediction_step(self, model: Any, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: Any = None) -> Any:
        output = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        ids = inputs["input_ids"]
        self.flop_ledger.charge("eval", self._global_sum([self.flop_profile.forward_flops(int(ids.shape[0]), int(ids.shape[1]))])[0])
        return output

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

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            from transformers.trainer_utils import get_last_checkpoint

            checkpoint = get_last_checkpoint(self.args.output_dir)
        if isinstance(checkpoint, str):
            path = os.path.join(checkpoint, LEDGER_FILE)
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
            if "planned_steps" in restored.notes:
                # Sized from this run's selection charge, max_steps may differ (e.g. 0 FLOPs for a cached
                # selection); the checkpoint's plan keeps the learning-rate schedule of the original run.
                self.args.max_steps = int(restored.notes["planned_steps"])
        output = super().train(resume_from_checkpoint=resume_from_checkpoint, *args, **kwargs)
        if self.run_records is not None and self.is_world_process_zero():
            append_record(self.run_records, record_from_trainer(self, trainer_metrics(self, output), seconds=output.metrics.get("train_runtime")))
        return output
