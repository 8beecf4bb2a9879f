"""``BudgetedTrainingArguments``: ``TrainingArguments`` plus the compute budget and the data selector."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

from transformers import TrainingArguments

from ..flops import validate_budget
from ..selectors import get_selector_class


@dataclass(kw_only=True)
class BudgetFields:
    """The budget and selector options that :class:`BudgetedTrainingArguments` and
    :class:`~hf_cads.trainer.sft.BudgetedSFTConfig` share (a dataclass mixin: fields plus
    :meth:`validate_budget_fields`, which the config's ``__post_init__`` calls). They are
    keyword-only, so the parent's positional order holds: ``BudgetedTrainingArguments("out")``
    sets ``output_dir`` as ``TrainingArguments("out")`` does.

    Args:
        flop_budget: total FLOPs for selection + training (e.g. ``3e15``). ``None`` records FLOPs
            without a cap.
        selector: registry name of the selector (``random``, ``bm25``, ``embedding``, ``perplexity``,
            ...); ``None`` trains on ``train_dataset`` as given.
        selection_fraction / selection_k: how much of the pool to keep (one of them).
        selector_kwargs: options of the selector's config (dict, or JSON string on the CLI).
        deduplicate: ``"drop"`` or ``"error"``: what the selector does with pool rows that repeat
            an earlier row (the selector's ``deduplicate`` option, set from a recipe's top level;
            ``None`` keeps the selector's default, ``"drop"``).

    Example:
        >>> from hf_cads import BudgetedTrainingArguments
        >>> BudgetedTrainingArguments(output_dir="out", flop_budget="2e14", selector="bm25", selection_k=8).flop_budget
        200000000000000.0
    """

    flop_budget: float | None = field(default=None, metadata={"help": "Total FLOPs for selection + training."})
    selector: str | None = field(default=None, metadata={"help": "Registered selector name, e.g. bm25."})
    selection_fraction: float | None = field(default=None, metadata={"help": "Share of the pool to keep, in (0, 1]."})
    selection_k: int | None = field(default=None, metadata={"help": "Number of pool rows to keep."})
    selector_kwargs: dict | str | None = field(
        default=None, metadata={"help": 'Selector options as a dict or JSON string, e.g. \'{"aggregate": "max"}\'.'}
    )
    deduplicate: str | None = field(
        default=None, metadata={"help": "Repeated pool rows: drop (keep the first copy; the default) or error."}
    )

    def validate_budget_fields(self) -> None:
        """Check and normalise the budget fields (called from ``__post_init__``)."""
        if self.flop_budget is not None:
            self.flop_budget = validate_budget(self.flop_budget)
        self.selector_kwargs = json_object_option("selector_kwargs", self.selector_kwargs)
        if self.deduplicate is not None:
            self._fold_into_selector_kwargs("deduplicate", self.deduplicate, ("drop", "error"))
        if self.selector is not None:
            get_selector_class(self.selector)  # unknown names fail here, listing the registered ones
            if (
                self.selection_fraction is None
                and self.selection_k is None
                and not get_selector_class(self.selector).chooses_own_size
            ):
                raise ValueError(f"selector={self.selector!r} needs selection_fraction or selection_k.")

    def _fold_into_selector_kwargs(self, name: str, value: str, allowed: tuple[str, ...]) -> None:
        # A top-level recipe key for a selector option: it travels in selector_kwargs, so run keys,
        # labels and every selection path see it exactly as if it had been written there.
        if value not in allowed:
            raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}.")
        options = dict(self.selector_kwargs or {})
        if options.get(name, value) != value:
            raise ValueError(
                f"{name}={value!r} and selector_kwargs[{name!r}]={options[name]!r} disagree; set it once."
            )
        options[name] = value
        self.selector_kwargs = options


def json_object_option(name: str, value: Any) -> dict | None:
    """A dict option that the command line gives as a JSON string: parsed, or one clear error.

    Example:
        >>> json_object_option("selector_kwargs", '{"aggregate": "max"}')
        {'aggregate': 'max'}
    """
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as err:
            raise ValueError(f"{name} must be a JSON object, got {value!r}: {err}.") from err
    if value is not None and not isinstance(value, dict):
        raise TypeError(f"{name} must be a dict, got {type(value).__name__}.")
    return value


@dataclass
class BudgetedTrainingArguments(TrainingArguments, BudgetFields):
    """``TrainingArguments`` plus the compute budget and the data selector (the fields of
    :class:`BudgetFields`) and how the trainer loads and tokenises.

    ``output_dir`` stays the first positional field; the fields added here and in
    :class:`BudgetFields` come after the parent's.

    Args:
        max_length: token limit when the trainer tokenises a text dataset (TRL's name; default 512).
        dataset_text_field: column holding the text, as in ``trl.SFTConfig`` (``None``: ``text``, else
            chat ``messages``, else ``prompt`` + ``completion``).
        train_on_prompt: also train on prompt, system and user tokens of chat and prompt-completion
            data (default ``False``: loss on the completion / assistant turns only, as TRL's SFT).
        model_init_kwargs: ``from_pretrained`` options (``dtype``, ``attn_implementation``,
            ``quantization_config``, ``device_map``, ``trust_remote_code``, ...) used when the trainer
            is given ``model`` as a name or path, as ``trl.SFTConfig.model_init_kwargs``.

    Example:
        >>> args = BudgetedTrainingArguments("out", flop_budget=1e12, model_init_kwargs='{"dtype": "bfloat16"}')
        >>> args.output_dir, args.flop_budget, args.model_init_kwargs
        ('out', 1000000000000.0, {'dtype': 'bfloat16'})
    """

    max_length: int = field(default=512, metadata={"help": "Token limit when tokenising text datasets."})
    dataset_text_field: str | None = field(
        default=None, metadata={"help": "Text column (default: text, else messages, else prompt + completion)."}
    )
    train_on_prompt: bool = field(
        default=False,
        metadata={
            "help": "Train on prompt tokens too (default: completion-only loss for chat / prompt-completion data)."
        },
    )
    model_init_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": 'from_pretrained options for a model given by name, e.g. \'{"dtype": "bfloat16"}\'.'},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate_budget_fields()
        self.model_init_kwargs = json_object_option("model_init_kwargs", self.model_init_kwargs)
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}.")


ArgumentsT = TypeVar("ArgumentsT", bound=TrainingArguments)


def convert_training_arguments(args: TrainingArguments, target: type[ArgumentsT]) -> ArgumentsT:
    """``args`` (any ``TrainingArguments``, e.g. a plain one or a ``trl.SFTConfig``) as an instance of
    ``target``, carrying every field the two share, as ``SFTTrainer`` turns ``TrainingArguments`` into
    an ``SFTConfig``; ``args`` itself when it already is one.

    Example:
        >>> from transformers import TrainingArguments
        >>> converted = convert_training_arguments(TrainingArguments("out", max_steps=3), BudgetedTrainingArguments)
        >>> type(converted).__name__, converted.output_dir, converted.max_steps, converted.flop_budget
        ('BudgetedTrainingArguments', 'out', 3, None)
    """
    if isinstance(args, target):
        return args
    if not isinstance(args, TrainingArguments):
        raise TypeError(f"args must be TrainingArguments or {target.__name__}, got {type(args).__name__}.")
    wanted = {f.name for f in dataclasses.fields(target) if f.init}
    values = {}
    for f in dataclasses.fields(args):
        if not f.init or f.name not in wanted:
            continue
        value = getattr(args, f.name)
        # __post_init__ turned strings into enums; the target's __post_init__ expects what a user writes.
        if isinstance(value, Enum):
            value = value.value
        elif isinstance(value, list) and value and isinstance(value[0], Enum):
            value = [v.value for v in value]
        values[f.name] = value
    return target(**values)
