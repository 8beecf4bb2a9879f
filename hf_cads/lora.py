"""The LoRA defaults of hf_cads, in one place, and reading LoRA options from a peft ``LoraConfig``.

Every option set that takes LoRA options (``RunConfig``, the CADS and LESS selector configs,
``LoraSpec``, ``CausalLMBackend``) defaults to :data:`DEFAULT_LORA_TARGET_MODULES`, and the selector
configs also accept ``lora_config=LoraConfig(...)`` in place of the separate options. A
``LoraConfig`` without ``target_modules`` gets these defaults too (in ``BudgetedTrainer`` as well),
so FLOP accounting, selectors and training adapt the same layers.

Example:
    >>> from peft import LoraConfig
    >>> lora_options(LoraConfig(r=4, lora_alpha=8, lora_dropout=0.05))["lora_target_modules"]
    ('q_proj', 'k_proj', 'v_proj', 'o_proj')
"""

from __future__ import annotations

import copy
from typing import Any

DEFAULT_LORA_R = 8
DEFAULT_LORA_TARGET_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
"""Attention projections of Llama-style models (the default models of hf_cads)."""


def target_modules_of(peft_config: Any) -> tuple[str, ...]:
    """The layer names a peft config adapts; :data:`DEFAULT_LORA_TARGET_MODULES` when it names none."""
    modules = getattr(peft_config, "target_modules", None)
    if modules is None:
        return DEFAULT_LORA_TARGET_MODULES
    if isinstance(modules, str):
        return (modules,)
    return tuple(sorted(modules))


def lora_options(peft_config: Any) -> dict[str, Any]:
    """``lora_r``, ``lora_alpha``, ``lora_dropout`` and ``lora_target_modules`` of a peft ``LoraConfig``."""
    if not hasattr(peft_config, "r"):
        raise TypeError(f"lora_config must be a peft LoraConfig, got {type(peft_config).__name__}.")
    return {
        "lora_r": int(peft_config.r),
        "lora_alpha": float(peft_config.lora_alpha),
        "lora_dropout": float(peft_config.lora_dropout),
        "lora_target_modules": target_modules_of(peft_config),
    }


def with_default_target_modules(peft_config: Any) -> Any:
    """``peft_config`` itself, or a copy naming :data:`DEFAULT_LORA_TARGET_MODULES` when it names no layers."""
    if peft_config is None or not hasattr(peft_config, "target_modules") or peft_config.target_modules is not None:
        return peft_config
    filled = copy.deepcopy(peft_config)
    filled.target_modules = set(DEFAULT_LORA_TARGET_MODULES)
    return filled
