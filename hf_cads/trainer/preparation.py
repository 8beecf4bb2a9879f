"""What both budgeted trainers do to their inputs before the parent trainer sees them: load a model
given by name with the configured ``from_pretrained`` options, check that a quantised model gets
adapters and that the tokenizer belongs to the model, and read the model's FLOP profile.

:class:`~hf_cads.BudgetedTrainer` and :class:`~hf_cads.BudgetedSFTTrainer` call
:func:`prepare_model` and :func:`profile_for_budget`; only ``BudgetedTrainer`` lets
:func:`prepare_model` add the adapter (``SFTTrainer`` adds its own from ``peft_config``).
"""

from __future__ import annotations

import logging
from typing import Any

from ..flops import FlopProfile
from ..lora import with_default_target_modules

logger = logging.getLogger(__name__)

TORCH_DTYPE_NAMES = ("bfloat16", "float16", "float32")


def model_loading_options(model_init_kwargs: dict[str, Any] | None, args: Any = None) -> dict[str, Any]:
    """The ``from_pretrained`` options for a model given by name, as TRL's ``SFTTrainer`` derives them
    from ``model_init_kwargs``: ``dtype`` defaults to ``float32`` and its names become ``torch`` dtypes,
    a ``quantization_config`` dict (from JSON) becomes a ``BitsAndBytesConfig``, ``trust_remote_code``
    defaults to ``args.trust_remote_code``, and ``device_map`` to ``None`` when training runs on CPU or
    MPS (``args.device``, else accelerate's device) and under multi-process data parallelism (each
    process holds a whole copy), else ``"auto"``.

    Example:
        >>> import torch
        >>> options = model_loading_options({"dtype": "bfloat16", "device_map": None})
        >>> options["dtype"] is torch.bfloat16, options["device_map"]
        (True, None)
    """
    import torch

    options = dict(model_init_kwargs or {})
    dtype = options.setdefault("dtype", "float32")
    if isinstance(dtype, str) and dtype != "auto":
        if dtype not in TORCH_DTYPE_NAMES:
            raise ValueError(
                f"model_init_kwargs dtype must be 'auto' or one of {list(TORCH_DTYPE_NAMES)}, got {dtype!r}."
            )
        options["dtype"] = getattr(torch, dtype)
    quantization = options.get("quantization_config")
    if isinstance(quantization, dict):
        from transformers import BitsAndBytesConfig

        options["quantization_config"] = BitsAndBytesConfig.from_dict(quantization)
    if args is not None and "trust_remote_code" not in options:
        options["trust_remote_code"] = bool(getattr(args, "trust_remote_code", False))
    if "device_map" not in options:
        from accelerate import PartialState

        state = PartialState()
        # The training device decides (``args.device`` honours ``use_cpu``); each data-parallel process
        # holds a whole copy, which Trainer places itself.
        device = args.device if args is not None else state.device
        data_parallel = state.num_processes > 1
        options["device_map"] = None if data_parallel or device.type in ("cpu", "mps") else "auto"
    return options


def load_model_by_name(name_or_path: str, model_init_kwargs: dict[str, Any] | None, args: Any = None) -> tuple:
    """``(model, tokenizer)`` for a built-in alias, folder or Hub id, loaded with
    :func:`model_loading_options` (see :func:`hf_cads.models.load_causal_lm`).

    Example:
        >>> import tempfile
        >>> from hf_cads.testing import tiny_causal_lm, tiny_tokenizer
        >>> folder, tokenizer = tempfile.mkdtemp(), tiny_tokenizer(["a b c"], vocab_size=300)
        >>> tiny_causal_lm(tokenizer).save_pretrained(folder); tokenizer.save_pretrained(folder)  # doctest: +ELLIPSIS
        (...)
        >>> model, _ = load_model_by_name(folder, {"dtype": "bfloat16"})
        >>> model.dtype
        torch.bfloat16
    """
    from ..models import load_causal_lm

    return load_causal_lm(name_or_path, **model_loading_options(model_init_kwargs, args))


def is_quantized(model: Any) -> bool:
    """Whether ``model`` holds bitsandbytes 4-bit or 8-bit weights.

    Example:
        >>> import torch
        >>> is_quantized(torch.nn.Linear(2, 2))
        False
    """
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def check_quantized_model_has_adapters(model: Any, peft_config: Any) -> None:
    """Refuse a 4-/8-bit model with nothing to train: its quantised weights are frozen.

    Example:
        >>> import torch
        >>> check_quantized_model_has_adapters(torch.nn.Linear(2, 2), None)  # not quantised: nothing to say
    """
    if is_quantized(model) and peft_config is None and not hasattr(model, "peft_config"):
        raise ValueError(
            "The model is loaded in 4-bit/8-bit (bitsandbytes): its quantised weights cannot be trained. "
            "Pass peft_config=LoraConfig(...) (QLoRA: LoRA adapters on the frozen 4-bit model), "
            "or load the model unquantised."
        )


def check_vocabulary(model: Any, tokenizer: Any) -> None:
    """Refuse a tokenizer with more tokens than the model's embedding has rows.

    Example:
        >>> import torch
        >>> check_vocabulary(torch.nn.Linear(2, 2), None)  # no tokenizer: nothing to check
    """
    if tokenizer is None or not hasattr(model, "get_input_embeddings") or not hasattr(tokenizer, "__len__"):
        return
    embeddings = model.get_input_embeddings()
    if embeddings is None or not hasattr(embeddings, "weight"):
        return
    rows = embeddings.weight.shape[0]
    if len(tokenizer) > rows:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the model's embedding has {rows} rows: "
            "the tokenizer does not belong to this model. Pass the model's own tokenizer."
        )


def prepare_model(
    model: Any,
    tokenizer: Any,
    peft_config: Any,
    *,
    seed: int,
    args: Any = None,
    model_init_kwargs: dict[str, Any] | None = None,
    add_adapter: bool = True,
) -> tuple[Any, Any]:
    """The model and tokenizer a budgeted trainer works with.

    A ``model`` given as a name or path is loaded with ``model_init_kwargs`` (see
    :func:`load_model_by_name`), its own tokenizer filling in for ``tokenizer=None``. A 4-/8-bit
    model must come with ``peft_config`` (or already be a ``PeftModel``). With ``add_adapter`` the
    model is wrapped with ``peft_config`` (the hf_cads default LoRA layers when it names none),
    seeded so the adapter starts the same on every run with this seed. Finally the tokenizer must
    fit the model's embedding. ``model=None`` (a trainer built from ``model_init``) passes through.

    Example:
        >>> from hf_cads.testing import tiny_causal_lm, tiny_tokenizer
        >>> from peft import LoraConfig
        >>> tokenizer = tiny_tokenizer(["a b c"], vocab_size=300)
        >>> model, _ = prepare_model(tiny_causal_lm(tokenizer), tokenizer, LoraConfig(r=2), seed=0)
        >>> model.peft_config["default"].target_modules == {"q_proj", "k_proj", "v_proj", "o_proj"}
        True
    """
    if isinstance(model, str):
        model, loaded_tokenizer = load_model_by_name(model, model_init_kwargs, args)
        tokenizer = tokenizer if tokenizer is not None else loaded_tokenizer
    if model is None:
        return model, tokenizer
    check_quantized_model_has_adapters(model, peft_config)
    if add_adapter and peft_config is not None:
        from peft import get_peft_model
        from transformers import set_seed

        # Trainer seeds only later; seeding here makes the adapter initialisation (and so a selector
        # cache keyed by these weights) the same on every run with this seed.
        set_seed(seed)
        try:
            model = get_peft_model(model, with_default_target_modules(peft_config))
        except ValueError as err:
            raise ValueError(f"peft_config does not fit this model: {err}") from err
    check_vocabulary(model, tokenizer)
    return model, tokenizer


def profile_for_budget(model: Any, needed: bool, flop_profile: FlopProfile | None = None) -> FlopProfile | None:
    """The FLOP profile the trainer charges with: ``flop_profile`` when given, else read from
    ``model``. A model it cannot read (no transformer ``config``, an unknown architecture) gets
    ``None`` when no budget or selector ``needed`` it, so the trainer trains as its parent and
    records no FLOPs; with one it is an error naming what to pass.

    Example:
        >>> import torch
        >>> profile_for_budget(torch.nn.Linear(2, 2), needed=False) is None
        True
    """
    if flop_profile is not None:
        return flop_profile
    if model is None:
        return None
    try:
        return FlopProfile.from_model(model)
    except (ValueError, TypeError, AttributeError) as err:
        if needed:
            raise ValueError(
                f"flop_budget / selector need the FLOPs of a training step, but {type(model).__name__} cannot be "
                f"profiled ({err}). Pass flop_profile=FlopProfile.from_config(<a decoder config of the same "
                "shape>) to the trainer, or drop flop_budget and selector to train without a FLOP ledger."
            ) from err
        logger.info("No FLOP profile for %s (%s): FLOPs are not recorded.", type(model).__name__, err)
        return None
