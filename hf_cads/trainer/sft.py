"""``BudgetedSFTTrainer``: TRL's ``SFTTrainer`` with the FLOP budget of :class:`~hf_cads.BudgetedTrainer`.

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

from transformers import TrainingArguments
from trl import SFTConfig, SFTTrainer

from ..flops import FlopProfile
from ..selectors import get_selector_class
from .arguments import BudgetedTrainingArguments, BudgetFields, convert_training_arguments
from .flop_budget import FlopBudgetMixin
from .preparation import prepare_model, profile_for_budget


@dataclass
class BudgetedSFTConfig(SFTConfig, BudgetFields):
    """``trl.SFTConfig`` plus the budget and selector options of :class:`~hf_cads.trainer.arguments.BudgetFields`
    (``flop_budget``, ``selector``, ``selection_fraction`` / ``selection_k``, ``selector_kwargs``,
    ``deduplicate``; keyword-only, so ``output_dir`` stays the first positional field). Without
    ``flop_budget`` the trainer records FLOPs without a cap.

    Example:
        >>> BudgetedSFTConfig("out", flop_budget=1e12, use_cpu=True, report_to="none").flop_budget
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


def sft_arguments(args: Any, model: Any = None) -> BudgetedSFTConfig:
    """The :class:`BudgetedSFTConfig` a :class:`BudgetedSFTTrainer` runs with, as ``SFTTrainer`` reads
    its ``args``: ``None`` gives ``<model name>-SFT`` as ``output_dir``; ``TrainingArguments`` or a
    plain ``SFTConfig`` are converted field by field (no budget); ``BudgetedTrainingArguments`` go
    through :func:`sft_config_from`.

    Example:
        >>> from transformers import TrainingArguments
        >>> config = sft_arguments(TrainingArguments("out", max_steps=2, use_cpu=True, report_to="none"))
        >>> type(config).__name__, config.max_steps, config.flop_budget
        ('BudgetedSFTConfig', 2, None)
    """
    if args is None:
        name = model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", "")
        return BudgetedSFTConfig(f"{str(name or 'model').rstrip('/').split('/')[-1]}-SFT")
    if isinstance(args, BudgetedTrainingArguments):
        return sft_config_from(args)
    if not isinstance(args, TrainingArguments):
        raise TypeError(f"args must be BudgetedSFTConfig, SFTConfig or TrainingArguments, got {type(args).__name__}.")
    return convert_training_arguments(args, BudgetedSFTConfig)


class BudgetedSFTTrainer(FlopBudgetMixin, SFTTrainer):
    """``trl.SFTTrainer`` with FLOP-budgeted data selection and training.

    Selection runs on the raw ``train_dataset`` (text, chat ``messages`` or prompt-completion rows) and
    is charged to the ledger before TRL prepares the data; training is then sized to what the budget
    leaves and stopped at the cap before any optimizer step that would pass it. Everything else is
    ``SFTTrainer``: dataset formats, ``completion_only_loss`` / ``assistant_only_loss``, ``packing`` and
    padding-free batches, ``peft_config``, ``max_length``. A padding-free (packed) batch is charged from
    the sequence lengths it really holds: under a flash-attention kernel attention costs the sum of
    ``L_i^2`` over its sequences, under eager / SDPA the full square of the packed row. The LM head is
    charged as TRL's fused head computes it (the positions it scores, its logits recomputed in the
    backward pass), and ``gradient_checkpointing`` (on by default in ``SFTConfig``) as the rerun of the
    blocks' forward, the head excluded.

    Same constructor as ``SFTTrainer`` (``model``, ``args``, ``data_collator``, ``train_dataset``,
    ``eval_dataset``, ``processing_class`` positional, the rest by keyword, ``peft_config`` and
    ``quantization_config`` included) plus ``selection_target`` (validation examples of the target
    task), ``selector_model``, ``run_records`` and ``flop_profile`` as in
    :class:`~hf_cads.BudgetedTrainer`. ``args`` may be a ``BudgetedSFTConfig``, a plain
    ``SFTConfig`` or ``TrainingArguments`` (converted, as ``SFTTrainer`` does; no budget), or
    ``BudgetedTrainingArguments`` (see :func:`sft_config_from`).

    ``model`` may be a built-in alias (e.g. ``smollm2-135m-instruct``), folder or Hub id: it is
    loaded here, before selection, with ``args.model_init_kwargs`` (``dtype``,
    ``attn_implementation``, ``quantization_config``, ``device_map``, ``trust_remote_code``) and
    TRL's defaults for them (``float32``, ``device_map=None`` on CPU), so the model that is trained
    and priced is the one ``SFTTrainer`` would have loaded.

    Differences from ``SFTTrainer``, on purpose: log entries also hold ``flops_selection``,
    ``flops_train`` (and ``flops_budget_used``), checkpoints hold ``flop_ledger.json``; with a
    budget, ``max_steps`` is sized from it, a step that would pass it is not taken, and
    SIGTERM / SIGINT save a checkpoint before the process ends; with a selector, ``train_dataset``
    is the selected subset.

    Example:
        >>> import tempfile
        >>> from datasets import Dataset
        >>> from hf_cads.testing import tiny_causal_lm, tiny_tokenizer
        >>> texts = ["the cat sat on the mat", "a dog ran in the park"] * 4
        >>> tokenizer = tiny_tokenizer(texts, vocab_size=300)
        >>> args = BudgetedSFTConfig(tempfile.mkdtemp(), max_steps=2, per_device_train_batch_size=4, bf16=False,
        ...                          use_cpu=True, report_to="none", save_strategy="no")
        >>> data = Dataset.from_dict({"text": texts})
        >>> model = tiny_causal_lm(tokenizer)
        >>> trainer = BudgetedSFTTrainer(model, args, train_dataset=data, processing_class=tokenizer)
        >>> trainer.train().global_step, trainer.flop_ledger.entries["train"] > 0  # doctest: +ELLIPSIS
        {'train_runtime': ...}
        (2, True)
    """

    def __init__(
        self,
        model: Any,
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
        args = sft_arguments(args, model)
        by_name = isinstance(model, str)
        model_init_kwargs = dict(args.model_init_kwargs or {})
        quantization_config = kwargs.pop("quantization_config", None)
        if quantization_config is not None and by_name:
            if "quantization_config" in model_init_kwargs:
                raise ValueError(
                    "quantization_config is set both as a trainer argument and in args.model_init_kwargs; "
                    "set it in one place."
                )
            model_init_kwargs["quantization_config"] = quantization_config
        elif quantization_config is not None:
            kwargs["quantization_config"] = quantization_config  # SFTTrainer warns that it is ignored
        # The adapter is left to SFTTrainer (peft_config below); the model is only checked here.
        model, processing_class = prepare_model(
            model,
            processing_class,
            peft_config,
            seed=args.seed,
            args=args,
            model_init_kwargs=model_init_kwargs,
            add_adapter=False,
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
        given_init_kwargs = args.model_init_kwargs
        if by_name:
            # Already used to load the model: SFTTrainer would warn that they are ignored.
            args.model_init_kwargs = None
        try:
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
        finally:
            args.model_init_kwargs = given_init_kwargs
        # The adapter exists only now: which layers train decides the backward cost.
        self.flop_profile = profile_for_budget(
            self.model, needed=self.flop_ledger.budget is not None, flop_profile=flop_profile
        )
        if train_dataset is not None and self.flop_ledger.budget is not None:
            self.plan_training()

    def batch_flops(self, batch: dict[str, Any]) -> float:
        """:meth:`FlopBudgetMixin.batch_flops` with the LM head priced as TRL's fused head runs it: over
        the positions it scores (every position but the last of each row; on a Triton device only
        those with a label), and with the logits computed once more in the backward pass."""
        flops = super().batch_flops(batch)
        if not self._runs_fused_lm_head():
            return flops
        rows, length = (int(n) for n in batch["input_ids"].shape)
        scored = rows * (length - 1)
        labels = batch.get("labels")
        if labels is not None and _fused_head_scores_labelled_only(self.model.get_output_embeddings().weight.device):
            scored = int((labels[:, 1:] != -100).sum())
        profile = self.flop_profile
        return (
            flops
            - profile.lm_head_train_flops(rows * length)
            + profile.lm_head_train_flops(scored, recomputed_in_backward=True)
        )

    def _runs_fused_lm_head(self) -> bool:
        # SFTTrainer patches the forward of the (base) model with a fused-head forward taking
        # `fused_lm_head`, and computes the training loss through it unless a custom loss needs the logits.
        if self.compute_loss_func is not None or self.label_smoother is not None:
            return False
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        function = getattr(vars(base).get("forward"), "__func__", None)
        while function is not None:
            code = getattr(function, "__code__", None)
            if code is not None and "fused_lm_head" in code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]:
                return True
            function = getattr(function, "__wrapped__", None)
        return False


def _fused_head_scores_labelled_only(device: Any) -> bool:
    """Whether TRL's fused LM head scores only the positions with a label on ``device`` (its Triton
    path) rather than every position."""
    try:
        from trl.kernels.chunked_logprob import _use_triton
    except ImportError:  # another TRL layout: its documented rule, Triton on CUDA / XPU
        from transformers.utils import is_triton_available

        return is_triton_available() and device.type in ("cuda", "xpu")
    return bool(_use_triton(device))


def sft_config_from(args: Any, **sft_options: Any) -> BudgetedSFTConfig:
    """The :class:`BudgetedSFTConfig` with the settings of ``args`` (a ``BudgetedTrainingArguments``,
    e.g. from a recipe): the fields the two share by name (``max_length`` included), TRL's
    ``dataset_text_field`` (``text`` where ``args`` leaves it ``None``), ``bf16`` and checkpointing
    as ``args`` set them; ``sft_options`` set SFT-only fields (``packing``, ...).

    Example:
        >>> from hf_cads import BudgetedTrainingArguments
        >>> args = BudgetedTrainingArguments(output_dir="out", flop_budget=1e12, max_length=128, use_cpu=True)
        >>> config = sft_config_from(args, packing=True)
        >>> config.max_length, config.packing, config.flop_budget
        (128, True, 1000000000000.0)
    """
    sft_fields = {f.name for f in dataclasses.fields(BudgetedSFTConfig) if f.init}
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init and f.name in sft_fields}
    # Set below as args has them: SFTConfig's own defaults for these differ from TrainingArguments'.
    for derived in ("bf16", "gradient_checkpointing"):
        values.pop(derived, None)
    values.update(
        dataset_text_field=args.dataset_text_field or "text",
        bf16=bool(args.bf16),
        activation_checkpointing=bool(args.gradient_checkpointing),
        **sft_options,
    )
    return BudgetedSFTConfig(**values)
