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

import logging
import os
from typing import Any

from transformers import Trainer

from ..lora import with_default_target_modules
from .arguments import BudgetedTrainingArguments
from .flop_budget import FlopBudgetMixin, check_quantized_model_has_adapters
from .tokenization import CausalLMCollator, tokenize_for_causal_lm

logger = logging.getLogger(__name__)


class BudgetedTrainer(FlopBudgetMixin, Trainer):
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
    ``trainer.flop_ledger`` the FLOPs spent so far, with the typed plan in
    ``flop_ledger.selection`` and ``flop_ledger.training``. The budget logic lives in
    :class:`~hf_cads.trainer.flop_budget.FlopBudgetMixin`, for other ``Trainer`` subclasses to reuse.
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
        args = self._check_arguments(args)
        model, processing_class = self._prepare_model(model, processing_class, peft_config, args.seed)
        train_dataset = self.init_budget_and_select(
            args, model, processing_class, train_dataset, selection_target, selector_model, run_records
        )
        train_dataset, eval_dataset = self._tokenize(args, processing_class, train_dataset, eval_dataset)
        if data_collator is None and processing_class is not None:
            pad = (
                processing_class.pad_token_id
                if processing_class.pad_token_id is not None
                else processing_class.eos_token_id
            )
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
            self.plan_training()

    # -- construction steps ---------------------------------------------------------------------
    @staticmethod
    def _check_arguments(args: BudgetedTrainingArguments | None) -> BudgetedTrainingArguments:
        if args is None:
            return BudgetedTrainingArguments(output_dir="hf_cads_output")
        if not isinstance(args, BudgetedTrainingArguments):
            raise TypeError(f"BudgetedTrainer needs BudgetedTrainingArguments, got {type(args).__name__}.")
        return args

    @staticmethod
    def _prepare_model(model: Any, tokenizer: Any, peft_config: Any, seed: int) -> tuple[Any, Any]:
        """Load a model given by name, give the tokenizer a pad token, wrap the model with ``peft_config``
        and check that the tokenizer belongs to it."""
        if isinstance(model, str):
            from ..models import load_causal_lm

            model, loaded_tokenizer = load_causal_lm(model)
            tokenizer = tokenizer or loaded_tokenizer
        if model is None:
            raise ValueError("BudgetedTrainer needs model= (a model object, Hub id, folder or built-in alias).")
        check_quantized_model_has_adapters(model, peft_config)
        if tokenizer is not None and getattr(tokenizer, "pad_token_id", 0) is None:
            tokenizer.pad_token = tokenizer.eos_token
        if peft_config is not None:
            from peft import get_peft_model
            from transformers import set_seed

            # Trainer seeds only later; seeding here makes the adapter initialisation (and so a
            # selector cache keyed by these weights) the same on every run with this seed.
            set_seed(seed)
            try:
                model = get_peft_model(model, with_default_target_modules(peft_config))
            except ValueError as err:
                raise ValueError(f"peft_config does not fit this model: {err}") from err
        check_vocabulary(model, tokenizer)
        return model, tokenizer

    @staticmethod
    def _tokenize(
        args: BudgetedTrainingArguments, tokenizer: Any, train_dataset: Any, eval_dataset: Any
    ) -> tuple[Any, Any]:
        if train_dataset is not None:
            train_dataset = tokenize_for_causal_lm(
                train_dataset, tokenizer, args.max_seq_length, args.text_column, train_on_prompt=args.train_on_prompt
            )
            if len(train_dataset) == 0:
                raise ValueError("The training dataset is empty; nothing to train on.")
        if eval_dataset is not None and not isinstance(eval_dataset, dict):
            eval_dataset = tokenize_for_causal_lm(
                eval_dataset,
                tokenizer,
                args.max_seq_length,
                args.text_column,
                role="eval",
                train_on_prompt=args.train_on_prompt,
            )
        return train_dataset, eval_dataset


def check_vocabulary(model: Any, tokenizer: Any) -> None:
    """Refuse a tokenizer with more tokens than the model's embedding has rows."""
    if tokenizer is None or not hasattr(model, "get_input_embeddings"):
        return
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the model's embedding has {rows} rows: "
            "the tokenizer does not belong to this model. Pass the model's own tokenizer."
        )
