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

from transformers import Trainer, TrainingArguments

from ..flops import FlopProfile
from .arguments import BudgetedTrainingArguments, convert_training_arguments
from .flop_budget import FlopBudgetMixin
from .preparation import prepare_model, profile_for_budget
from .tokenization import CausalLMCollator, is_causal_lm_rows, tokenize_for_causal_lm

logger = logging.getLogger(__name__)


class BudgetedTrainer(FlopBudgetMixin, Trainer):
    """``transformers.Trainer`` with FLOP-budgeted data selection and training.

    Same constructor as ``Trainer`` (``model``, ``args``, ``data_collator``, ``train_dataset``,
    ``eval_dataset``, ``processing_class`` positional, every ``Trainer`` option after them by
    keyword) plus:

    Args:
        selection_target: validation examples of the target task, for targeted selectors.
        peft_config: a ``peft`` config (e.g. ``LoraConfig``); the model is wrapped with it (a
            ``LoraConfig`` naming no ``target_modules`` adapts the attention projections).
        selector_model: a model object for the selector (default: model-based LM selectors reuse
            the trained model unless ``selector_kwargs`` names ``model_name_or_path``).
        run_records: a JSON-lines file; after ``train()`` the main process appends a
            :class:`~hf_cads.records.RunRecord` (train loss, latest ``eval_*`` metrics) to it.
        flop_profile: the :class:`~hf_cads.flops.FlopProfile` to charge with, for a model the FLOP
            model cannot read itself (default: read from ``model``).

    ``model`` may also be a name or path (see :func:`hf_cads.models.load_causal_lm`), loaded with
    ``args.model_init_kwargs``. ``args`` may be plain ``TrainingArguments`` (converted, no budget).
    After construction, ``trainer.selection_result`` holds the selection and
    ``trainer.flop_ledger`` the FLOPs spent so far, with the typed plan in
    ``flop_ledger.selection`` and ``flop_ledger.training``. The budget logic lives in
    :class:`~hf_cads.trainer.flop_budget.FlopBudgetMixin`, for other ``Trainer`` subclasses to reuse.

    Differences from ``Trainer``, on purpose:

    - a ``datasets.Dataset`` of text (``text``, chat ``messages`` or ``prompt`` / ``completion``
      columns, no ``input_ids``) is tokenised for causal-LM training (``max_length``,
      ``dataset_text_field``, ``train_on_prompt``), where ``Trainer`` would fail on it;
    - without ``data_collator``, rows holding only ``input_ids`` (and per-token ``labels``) are
      right-padded by :class:`~hf_cads.trainer.tokenization.CausalLMCollator`, which also builds
      ``labels`` (``Trainer``'s default collator gives no labels, so the model returns no loss);
    - ``args=None`` gives ``BudgetedTrainingArguments(output_dir="tmp_trainer")``;
    - log entries also hold ``flops_selection``, ``flops_train`` (and ``flops_budget_used`` with a
      budget), and every checkpoint holds ``flop_ledger.json``;
    - with a budget, ``max_steps`` is sized from it, a step that would pass it is not taken, and
      SIGTERM / SIGINT save a checkpoint before the process ends
      (:mod:`~hf_cads.trainer.preemption`).

    Everything else (a model without a FLOP profile, a torch map-style dataset, ``model_init``
    without ``model``) behaves as in ``Trainer`` when there is no budget and no selector.

    Example:
        >>> import tempfile
        >>> from datasets import Dataset
        >>> from hf_cads.testing import tiny_causal_lm, tiny_tokenizer
        >>> texts = ["the cat sat on the mat", "a dog ran in the park"] * 4
        >>> tokenizer = tiny_tokenizer(texts, vocab_size=300)
        >>> args = BudgetedTrainingArguments(tempfile.mkdtemp(), max_steps=2, per_device_train_batch_size=4,
        ...                                  use_cpu=True, report_to="none", save_strategy="no")
        >>> data = Dataset.from_dict({"text": texts})
        >>> trainer = BudgetedTrainer(tiny_causal_lm(tokenizer), args, train_dataset=data, processing_class=tokenizer)
        >>> trainer.train().global_step, trainer.flop_ledger.entries["train"] > 0  # doctest: +ELLIPSIS
        {'train_runtime': ...}
        (2, True)
    """

    def __init__(
        self,
        model: Any = None,
        args: TrainingArguments | None = None,
        data_collator: Any = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        *,
        selection_target: Any = None,
        peft_config: Any = None,
        selector_model: Any = None,
        run_records: str | os.PathLike | None = None,
        flop_profile: FlopProfile | None = None,
        **kwargs: Any,
    ) -> None:
        args = (
            BudgetedTrainingArguments(output_dir="tmp_trainer")
            if args is None
            else convert_training_arguments(args, BudgetedTrainingArguments)
        )
        if model is None and kwargs.get("model_init") is None:
            raise ValueError(
                "BudgetedTrainer needs model= (a model object, Hub id, folder or built-in alias) or model_init=."
            )
        if model is None and peft_config is not None:
            raise ValueError(
                "peft_config needs model=; with model_init, return the PeftModel from model_init instead."
            )
        model, processing_class = prepare_model(
            model,
            processing_class,
            peft_config,
            seed=args.seed,
            args=args,
            model_init_kwargs=args.model_init_kwargs,
        )
        train_dataset = self.init_budget_and_select(
            args,
            model,
            processing_class,
            train_dataset,
            selection_target,
            selector_model,
            run_records,
            flop_profile,
        )
        train_dataset, eval_dataset = self._tokenize(args, processing_class, train_dataset, eval_dataset)
        if (
            data_collator is None
            and processing_class is not None
            and self._causal_lm_rows(train_dataset, eval_dataset)
        ):
            pad = (
                processing_class.pad_token_id
                if processing_class.pad_token_id is not None
                else processing_class.eos_token_id
            )
            if pad is not None:
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
        if model is None and self.flop_profile is None:
            # Built by model_init: the profile comes from the model Trainer made.
            self.flop_profile = profile_for_budget(
                self.model, needed=self.flop_ledger.budget is not None, flop_profile=flop_profile
            )
        if train_dataset is not None and self.flop_ledger.budget is not None:
            self.plan_training()

    # -- construction steps ---------------------------------------------------------------------
    @staticmethod
    def _causal_lm_rows(train_dataset: Any, eval_dataset: Any) -> bool:
        datasets = [train_dataset, *(eval_dataset.values() if isinstance(eval_dataset, dict) else [eval_dataset])]
        present = [d for d in datasets if d is not None]
        return bool(present) and all(is_causal_lm_rows(d) for d in present)

    @staticmethod
    def _tokenize(args: BudgetedTrainingArguments, tokenizer: Any, train_dataset: Any, eval_dataset: Any) -> tuple:
        def tokenize(dataset: Any, role: str) -> Any:
            return tokenize_for_causal_lm(
                dataset,
                tokenizer,
                args.max_length,
                args.dataset_text_field,
                role=role,
                train_on_prompt=args.train_on_prompt,
            )

        if train_dataset is not None:
            tokenized = tokenize(train_dataset, "train")
            if tokenized is not train_dataset and len(tokenized) == 0:
                raise ValueError("The training dataset is empty; nothing to train on.")
            train_dataset = tokenized
        if isinstance(eval_dataset, dict):
            eval_dataset = {name: tokenize(dataset, "eval") for name, dataset in eval_dataset.items()}
        elif eval_dataset is not None:
            eval_dataset = tokenize(eval_dataset, "eval")
        return train_dataset, eval_dataset
