"""Recipes: a YAML file (or mapping) holding the fields of :class:`RunConfig` and
:class:`~hf_cads.BudgetedTrainingArguments` side by side (flat, TRL style), read with
:func:`parse_recipe`, which rejects unknown keys.

Example:
    >>> from hf_cads.pipeline import parse_recipe  # doctest: +SKIP
    >>> run_config, training_args = parse_recipe("recipes/quickstart.yaml", ["--flop_budget", "3e14"])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import POOL_SOURCES
from ..decontamination import DEFAULT_NGRAM_SIZE
from ..lora import DEFAULT_LORA_R, DEFAULT_LORA_TARGET_MODULES
from ..trainer import BudgetedTrainingArguments

MODEL_DTYPES = ("float32", "bfloat16", "float16")
TRAINERS = ("sft", "causal-lm")
DECONTAMINATE_MODES = ("drop", "report", "off")
QUICKSTART = "quickstart.yaml"


def find_recipe(name: str, hint: str) -> Path:
    """``recipes/<name>`` of the current directory or of the checkout; ``hint`` says what to pass instead."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = root / "recipes" / name
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"Cannot find recipes/{name}; {hint}")


def default_recipe() -> Path:
    """``recipes/quickstart.yaml`` of the checkout (or the current directory)."""
    return find_recipe(QUICKSTART, "pass a recipe path: hf-cads run path/to/recipe.yaml")


@dataclass
class RunConfig:
    """What to finetune, on which pool, for which target.

    Args:
        model_name_or_path: causal LM to finetune (built-in alias, folder or Hub id).
        target: your data (a file, a folder, ``hub_id[:split]`` or a ``load_dataset`` mapping, see
            :mod:`hf_cads.sources`), or a built-in target: a BBH task name (validation = its cot-prompt
            exemplars, test = its examples) or ``gsm8k``.
        pool: your pool, given like ``target``; ``None`` or ``shared-mix``: the shared-data pool.
        eval: your test set, given like ``target``; ``None``: a seeded split of a user target.
        pool_sources: which shared-data sources make up the ``shared-mix`` pool.
        selection_text: what selectors score: ``example`` (prompt + response) or ``prompt`` (the
            prompt / messages before the first assistant turn).
        decontaminate: pool and target rows that overlap test rows (exact after normalisation, or a
            shared ``decontamination_ngram``-word run): ``drop`` (default), ``report`` (list them,
            keep them) or ``off``.
        max_per_source: rows kept per source (seeded), to bound CPU time.
        max_pool_chars: drop pool rows longer than this many characters.
        eval_examples: target test rows used for the before/after loss (and exact match).
        exact_match_max_new_tokens: greedy tokens generated per test row for the exact-match
            accuracy, measured when every evaluated answer is shorter than this (BBH answers such
            as ``True`` or ``(B)``; not GSM8K's worked solutions); ``0`` turns it off.
        data_dir: the shared data folder (default: ``$HF_CADS_DATA_DIR`` or ``../shared/data``).
        lora_r / lora_alpha / lora_dropout / lora_target_modules: the LoRA adapter (``lora_r: 0`` = full finetune).
        attn_implementation: attention kernel for the model (``eager`` makes FLOPs measurable).
        dtype: weight dtype of the loaded model (``float32``, ``bfloat16``, ``float16`` or ``auto``;
            ``None``: what the model loader picks).
        load_in_4bit: QLoRA: load the base model with 4-bit weights (bitsandbytes) and train LoRA
            adapters on it (needs ``lora_r > 0`` and ``pip install 'hf_cads[qlora]'``; runs on CPU and CUDA).
        bnb_4bit_quant_type / bnb_4bit_compute_dtype / bnb_4bit_use_double_quant: the 4-bit format
            (``nf4`` or ``fp4``), the dtype matmuls run in, and nested quantisation of the scales.
        bnb_4bit_quant_storage: dtype the packed 4-bit weights are stored in; ``bfloat16`` lets FSDP
            and DeepSpeed ZeRO-3 shard them (``None``: ``uint8``, for one GPU or DDP).
        run_records: JSON-lines file to append this run's record to (``None``: ``<output_dir>/runs.jsonl``).
        trainer: ``sft`` (TRL's ``SFTTrainer`` as :class:`~hf_cads.BudgetedSFTTrainer`; chat
            ``messages`` are rendered with the chat template) or ``causal-lm``
            (:class:`~hf_cads.BudgetedTrainer` on the ``text`` column). ``None``: ``sft`` when
            ``packing`` is set or the pool has no ``text`` column (chat / prompt-completion data),
            else ``causal-lm``.
        packing: pack rows into ``max_seq_length`` sequences, padding-free (``sft`` only).
    """

    model_name_or_path: str = "smollm2-135m-instruct"
    target: str = "boolean_expressions"
    pool: str | None = None
    eval: str | None = None
    pool_sources: list[str] = field(default_factory=lambda: list(POOL_SOURCES))
    selection_text: str = "example"
    decontaminate: str = "drop"
    decontamination_ngram: int = DEFAULT_NGRAM_SIZE
    max_per_source: int | None = 200
    max_pool_chars: int | None = 1200
    eval_examples: int = 32
    exact_match_max_new_tokens: int = 8
    data_dir: str | None = None
    lora_r: int = DEFAULT_LORA_R
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGET_MODULES))
    attn_implementation: str | None = None
    run_records: str | None = None
    dtype: str | None = None
    load_in_4bit: bool = False
    bnb_4bit_quant_type: str = "nf4"
    bnb_4bit_compute_dtype: str = "bfloat16"
    bnb_4bit_use_double_quant: bool = True
    bnb_4bit_quant_storage: str | None = None
    trainer: str | None = None
    packing: bool = False

    def __post_init__(self) -> None:
        setting = str(self.decontaminate).strip().lower()
        self.decontaminate = {"true": "drop", "yes": "drop", "false": "off", "no": "off", "none": "off"}.get(
            setting, setting
        )
        if self.decontaminate not in DECONTAMINATE_MODES:
            raise ValueError(
                f"decontaminate must be one of {list(DECONTAMINATE_MODES)} (or true/false), got {self.decontaminate!r}."
            )
        if self.selection_text not in ("example", "prompt"):
            raise ValueError(
                f"selection_text must be 'example' (prompt + response) or 'prompt', got {self.selection_text!r}."
            )
        if self.eval_examples < 1:
            raise ValueError(f"eval_examples must be >= 1, got {self.eval_examples}.")
        if self.exact_match_max_new_tokens < 0:
            raise ValueError(
                f"exact_match_max_new_tokens must be >= 0 (0 = no exact match), got {self.exact_match_max_new_tokens}."
            )
        if self.max_per_source is not None and self.max_per_source < 1:
            raise ValueError(f"max_per_source must be >= 1 or null, got {self.max_per_source}.")
        if self.lora_r < 0:
            raise ValueError(f"lora_r must be >= 0 (0 = full finetune), got {self.lora_r}.")
        for name, allowed in (
            ("dtype", (None, *MODEL_DTYPES, "auto")),
            ("bnb_4bit_compute_dtype", MODEL_DTYPES),
            ("bnb_4bit_quant_storage", (None, "uint8", *MODEL_DTYPES)),
            ("bnb_4bit_quant_type", ("nf4", "fp4")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {[a for a in allowed if a]}, got {getattr(self, name)!r}.")
        if self.trainer not in (None, *TRAINERS):
            raise ValueError(f"trainer must be one of {list(TRAINERS)}, got {self.trainer!r}.")
        if self.packing and self.trainer == "causal-lm":
            raise ValueError("packing is an SFTTrainer option; set trainer: sft (or drop packing).")
        if self.load_in_4bit and self.lora_r == 0:
            raise ValueError("load_in_4bit (QLoRA) trains LoRA adapters on frozen 4-bit weights; set lora_r > 0.")


def read_yaml_file(path: str | os.PathLike, what: str, missing_hint: str) -> Any:
    """The YAML document at ``path``, with errors naming ``what`` (e.g. ``Recipe``) and the file for a
    missing file (``missing_hint`` says what to pass instead) or invalid YAML."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist; {missing_hint}")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{what} {str(path)!r} is not valid YAML: {err}") from err


def parse_recipe(
    path: str | os.PathLike, overrides: list[str] | None = None
) -> tuple[RunConfig, BudgetedTrainingArguments]:
    """Read a recipe YAML into ``(RunConfig, BudgetedTrainingArguments)``; ``overrides`` are CLI flags."""
    path = Path(path)
    data = read_yaml_file(path, "Recipe", "pass the path to a recipe YAML (see recipes/).")
    if not isinstance(data, dict):
        raise ValueError(f"Recipe {str(path)!r} must be a YAML mapping of option: value, got {type(data).__name__}.")
    return recipe_from_dict(data, overrides, source=str(path))


def recipe_from_dict(
    data: dict[str, Any], overrides: list[str] | None = None, source: str = "<dict>"
) -> tuple[RunConfig, BudgetedTrainingArguments]:
    """:func:`parse_recipe` for a mapping already read (``source`` names it in errors)."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser((RunConfig, BudgetedTrainingArguments))
    known = {f for dc in parser.dataclass_types for f in dc.__dataclass_fields__}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(
            f"Recipe {source!r} has unknown option(s) {unknown}; see `hf-cads run --help` for valid ones."
        )
    args: list[str] = []
    for key, value in data.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            args += [f"--{key}", *[str(v) for v in value]]
        elif isinstance(value, dict):
            args += [f"--{key}", json.dumps(value)]
        else:
            args += [f"--{key}", str(value)]
    run_config, training_args = parser.parse_args_into_dataclasses(args=args + list(overrides or []))
    return run_config, training_args
