"""``BudgetedSFTTrainer``: TRL's ``SFTTrainer`` with the FLOP budget of :class:`~hf_cads.BudgetedTrainer`.

Selection runs on the raw ``train_dataset`` (text, chat ``messages`` or prompt-completion rows) and
is charged to the ledger before TRL prepares the data; training is then sized to what the budget
leaves and stopped at the cap before any optimizer step that would pass it. Everything else is
``SFTTrainer``: dataset formats, ``completion_only_loss`` / ``assistant_only_loss``, ``packing`` and
padding-free batches, ``peft_config``, ``max_length``. A padding-free (packed) batch is charged from
the sequence lengths it really holds: under a flash-attention kernel attention costs the sum of
``L_i^2`` over its sequences, under eager / SDPA the full square of the packed row.

Example:
    >>> from hf_cads import BudgetedSFTConfig, BudgetedSFTTrainer  # doctest: +SKIP
    >>> args = BudgetedSFTConfig(output_dir="out", flop_budget=2e14, selector="bm25", selection_fraction=0.1,
    ...                          packing=True, max_length=512)  # doctest: +SKIP
    >>> trainer = BudgetedSFTTrainer(model=model, args=args, train_dataset=chats, processing_class=tokenizer,
    ...                              selection_target=validation, peft_config=LoraConfig(r=8))  # doctest: +SKIP
    >>> trainer.train(); trainer.flop_ledger.breakdown()  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from trl import SFTConfig, SFTTrainer

from ..flops import FlopProfile
from ..selectors import get_selector_class
from .arguments import BudgetFields
from .flop_budget import FlopBudgetMixin, check_quantized_model_has_adapters
from .trainer import BudgetedTrainer


@dataclass
class BudgetedSFTConfig(SFTConfig, BudgetFields):
    """``trl.SFTConfig`` plus the budget and selector options of :class:`~hf_cads.trainer.arguments.BudgetFields`
    (``flop_budget``, ``selector``, ``selection_fraction`` / ``selection_k``, ``selector_kwargs``,
    ``deduplicate``). Without ``flop_budget`` the trainer records FLOPs without a cap.

    Example:
        >>> BudgetedSFTConfig(output_dir="out", flop_budget=1e12, use_cpu=True, report_to="none").flop_budget
        1000000000000.0
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate_budget_fields()
        if self.packing and self.selector is not None and get_selector_class(self.selector).chooses_own_size:
            raise ValueError(
                f"packing=True does not work with selector={self.selector!r}: it sizes its selection from the "
                "training cost of each row trained as its own sequence, and packing merges rows into shared "
                "sequences, so that per-row cost no longer holds. Set packing=False, or use a selector that "
                "takes selection_fraction / selection_k (e.g. bm25, embedding, perplexity)."
            )


class BudgetedSFTTrainer(FlopBudgetMixin, SFTTrainer):
    """``trl.SFTTrainer`` with FLOP-budgeted data selection and training (see the module docstring).

    Same constructor as ``SFTTrainer`` plus ``selection_target`` (validation examples of the target
    task), ``selector_model`` and ``run_records`` as in :class:`~hf_cads.BudgetedTrainer`.
    ``model`` may be a built-in alias (e.g. ``smollm2-135m-instruct``), folder or Hub id.
    """

    def __init__(
        self,
        model: Any,
        args: BudgetedSFTConfig | None = None,
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
            args = BudgetedSFTConfig(output_dir="hf_cads_output")
        if not isinstance(args, BudgetedSFTConfig):
            raise TypeError(f"BudgetedSFTTrainer needs BudgetedSFTConfig, got {type(args).__name__}.")
        # Loading by alias, the pad token and the vocabulary check are BudgetedTrainer's; the adapter
        # is left to SFTTrainer (peft_config below), which also prepares quantised models for it.
        model, processing_class = BudgetedTrainer._prepare_model(model, processing_class, None, args.seed)
        check_quantized_model_has_adapters(model, peft_config)
        train_dataset = self.init_budget_and_select(
            args, model, processing_class, train_dataset, selection_target, selector_model, run_records
        )
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            peft_config=peft_config,
            **kwargs,
        )
        # The adapter exists only now: which layers train decides the backward cost.
        self.flop_profile = FlopProfile.from_model(self.model)
        if train_dataset is not None and self.flop_ledger.budget is not None:
            self.plan_training()


def sft_config_from(args: Any, **sft_options: Any) -> BudgetedSFTConfig:
    """The :class:`BudgetedSFTConfig` with the settings of ``args`` (a ``BudgetedTrainingArguments``,
    e.g. from a recipe): ``max_seq_length`` becomes ``max_length``, ``text_column`` the
    ``dataset_text_field``; ``sft_options`` set SFT-only fields (``packing``, ...).

    Example:
        >>> from hf_cads import BudgetedTrainingArguments
        >>> args = BudgetedTrainingArguments(output_dir="out", flop_budget=1e12, max_seq_length=128, use_cpu=True)
        >>> config = sft_config_from(args, packing=True)
        >>> config.max_length, config.packing, config.flop_budget
        (128, True, 1000000000000.0)
    """
    sft_fields = {f.name for f in dataclasses.fields(BudgetedSFTConfig) if f.init}
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init and f.name in sft_fields}
    # Set explicitly below, or by Trainer from the values it derives them from.
    for derived in ("max_length", "dataset_text_field", "bf16", "gradient_checkpointing"):
        values.pop(derived, None)
    values.update(
        max_length=args.max_seq_length,
        dataset_text_field=args.text_column or "text",
        bf16=bool(args.bf16),
        activation_checkpointing=bool(args.gradient_checkpointing),
        **sft_options,
    )
    return BudgetedSFTConfig(**values)
