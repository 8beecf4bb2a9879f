"""Recipes: a YAML file (or mapping) holding the fields of :class:`RunConfig` (TRL's ``ModelConfig``
plus what to select from and for) and of :class:`~hf_cads.BudgetedTrainingArguments` side by side,
flat as in TRL's scripts, merged with command-line flags by TRL's ``TrlParser``.

The recipes shipped with hf_cads are package data (:mod:`hf_cads.package_data`): ``find_recipe``
takes a path or a shipped recipe's name (``quickstart``, ``smollm2-135m/lora-bm25``).

Example:
    >>> from hf_cads.package_data import find_recipe
    >>> from hf_cads.pipeline import parse_recipe
    >>> run_config, training_args = parse_recipe(find_recipe("quickstart"), ["--flop_budget", "3e14"])
    >>> run_config.model_name_or_path, run_config.use_peft, training_args.flop_budget
    ('smollm2-135m-instruct', True, 300000000000000.0)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl import ModelConfig

from ..data import POOL_SOURCES
from ..decontamination import (
    DEFAULT_MIN_OVERLAP,
    DEFAULT_NGRAM_SIZE,
    DEFAULT_TEMPLATE_ROWS,
    DEFAULT_TEMPLATE_SHARE,
    find_contamination,
)
from ..lora import DEFAULT_LORA_R, DEFAULT_LORA_TARGET_MODULES
from ..trainer import BudgetedTrainingArguments

logger = logging.getLogger(__name__)

MODEL_DTYPES = ("float32", "bfloat16", "float16")
"""Weight dtypes a recipe's ``dtype`` may name (besides ``auto``)."""
TRAINERS = ("sft", "causal-lm")
"""Values of a recipe's ``trainer``: TRL's SFT trainer or the causal-LM ``Trainer``."""
DECONTAMINATE_MODES = ("drop", "report", "off")
"""Values of a recipe's ``decontaminate``: drop overlapping rows, only report them, or skip the check."""
RENAMED_KEYS = {"max_seq_length": "max_length", "text_column": "dataset_text_field"}
"""Recipe keys of hf_cads 0.1 and the name (TRL's) each has since 0.2."""
DECONTAMINATION_KEYS = {
    "ngram_size": "decontamination_ngram",
    "min_overlap": "decontamination_min_overlap",
    "template_rows": "decontamination_template_rows",
    "template_share": "decontamination_template_share",
}
"""The options of :func:`~hf_cads.decontamination.find_contamination` and the recipe key of each."""


# -- the run's own options ------------------------------------------------------------------------
@dataclass
class RunConfig(ModelConfig):
    """What to finetune (TRL's ``ModelConfig``), on which pool, for which target, and what to keep.

    The model, LoRA and 4-bit fields are TRL's ``ModelConfig`` (``model_name_or_path``, ``dtype``,
    ``attn_implementation``, ``use_peft``, ``lora_r``, ``lora_alpha``, ``lora_dropout``,
    ``lora_target_modules``, ``use_rslora``, ``use_dora``, ``load_in_4bit`` / ``load_in_8bit``,
    ``bnb_4bit_quant_type``, ``use_bnb_nested_quant``, ``bnb_4bit_quant_storage``; see TRL's docs),
    read with ``trl.get_peft_config`` / ``trl.get_quantization_config``. hf_cads keeps its own
    defaults for some of them: a LoRA run (``use_peft=True``, ``lora_r=8``, ``lora_alpha=16``,
    ``lora_dropout=0.0``, q/k/v/o projections), ``dtype=None`` (what the model loader picks) and
    nested 4-bit quantisation on.

    Args:
        target: your data (a file, a folder, ``hub_id[:split]`` or a ``load_dataset`` mapping, see
            :mod:`hf_cads.data.sources`), or a built-in target: a BBH task name (validation = its
            cot-prompt exemplars, test = its examples) or ``gsm8k``.
        pool: your pool, given like ``target``; ``None`` or ``shared-mix``: the shared-data pool.
        eval: your test set, given like ``target``; ``None``: a seeded split of a user target.
        pool_sources: which shared-data sources make up the ``shared-mix`` pool.
        selection_text: what selectors score: ``example`` (prompt + response) or ``prompt`` (the
            prompt / messages before the first assistant turn).
        decontaminate: pool and target rows that overlap test rows: ``drop`` (default), ``report``
            (list them, keep them) or ``off``. A row overlaps a test row when it equals it or holds at
            least ``decontamination_min_overlap`` (default 0.25) of the test row's distinctive
            ``decontamination_ngram``-word n-grams (default 8); an n-gram found in at least
            ``decontamination_template_rows`` test rows (default 5) or in a
            ``decontamination_template_share`` of them (default 0.05) is template text and never
            counts (``null`` turns that limit off). See :mod:`hf_cads.decontamination`.
        max_per_source: rows kept per source (seeded), to bound CPU time.
        max_pool_chars: drop pool rows longer than this many characters.
        eval_examples: target test rows used for the before/after loss (and exact match).
        exact_match_max_new_tokens: greedy tokens generated per test row for the exact-match
            accuracy, measured when every evaluated answer is shorter than this; ``0`` turns it off.
        data_dir: the shared data folder (default: ``$HF_CADS_DATA_DIR``).
        bnb_4bit_compute_dtype: dtype the 4-bit matmuls run in (TRL uses ``dtype`` for it; hf_cads
            keeps it apart so a float32 model on CPU can compute in bfloat16).
        run_records: JSON-lines file to append this run's record to (``None``: ``<output_dir>/runs.jsonl``).
        trainer: ``sft`` (:class:`~hf_cads.BudgetedSFTTrainer`) or ``causal-lm``
            (:class:`~hf_cads.BudgetedTrainer` on the ``text`` column). ``None``: ``sft`` when
            ``packing`` is set or the pool has no ``text`` column, else ``causal-lm``.
        packing: pack rows into ``max_length`` sequences, padding-free (``sft`` only).
        save_subset: write the selected rows (parquet + dataset card) to ``<output_dir>/selected_subset``.
        push_subset_to: dataset repo to push the selected subset to (the model card then links it).

    Example:
        >>> RunConfig(target="gsm8k", lora_r=16).lora_target_modules
        ['q_proj', 'k_proj', 'v_proj', 'o_proj']
    """

    model_name_or_path: str | None = field(
        default="smollm2-135m-instruct", metadata={"help": "Causal LM to finetune: built-in alias, folder or Hub id."}
    )
    dtype: str | None = field(
        default=None,
        metadata={
            "help": "Weight dtype of the loaded model (default: what the loader picks).",
            "choices": ["auto", "bfloat16", "float16", "float32"],
        },
    )
    use_peft: bool = field(default=True, metadata={"help": "Train LoRA adapters (false: full finetune)."})
    lora_r: int = field(default=DEFAULT_LORA_R, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(
        default_factory=lambda: list(DEFAULT_LORA_TARGET_MODULES), metadata={"help": "LoRA target modules."}
    )
    use_bnb_nested_quant: bool = field(default=True, metadata={"help": "Nested quantisation of the 4-bit scales."})

    target: str = field(default="boolean_expressions", metadata={"help": "Target data or built-in target name."})
    pool: str | None = field(default=None, metadata={"help": "Pool data (default: the shared-mix pool)."})
    eval: str | None = field(default=None, metadata={"help": "Test data (default: a seeded split of the target)."})
    pool_sources: list[str] = field(
        default_factory=lambda: list(POOL_SOURCES), metadata={"help": "Sources of the shared-mix pool."}
    )
    selection_text: str = field(default="example", metadata={"help": "What selectors score: example or prompt."})
    decontaminate: str = field(default="drop", metadata={"help": "drop, report or off."})
    decontamination_ngram: int = field(default=DEFAULT_NGRAM_SIZE, metadata={"help": "Words per n-gram."})
    decontamination_min_overlap: float = field(
        default=DEFAULT_MIN_OVERLAP, metadata={"help": "Share of a test row's distinctive n-grams that matches it."}
    )
    decontamination_template_rows: int | None = field(
        default=DEFAULT_TEMPLATE_ROWS, metadata={"help": "An n-gram in this many test rows is template text."}
    )
    decontamination_template_share: float | None = field(
        default=DEFAULT_TEMPLATE_SHARE, metadata={"help": "An n-gram in this share of test rows is template text."}
    )
    max_per_source: int | None = field(default=200, metadata={"help": "Rows kept per pool source."})
    max_pool_chars: int | None = field(default=1200, metadata={"help": "Drop pool rows longer than this."})
    eval_examples: int = field(default=32, metadata={"help": "Target test rows evaluated."})
    exact_match_max_new_tokens: int = field(default=8, metadata={"help": "Tokens generated for exact match."})
    data_dir: str | None = field(default=None, metadata={"help": "The shared data folder."})
    bnb_4bit_compute_dtype: str = field(default="bfloat16", metadata={"help": "dtype the 4-bit matmuls run in."})
    run_records: str | None = field(default=None, metadata={"help": "Run-record file to append to."})
    trainer: str | None = field(default=None, metadata={"help": "sft or causal-lm (default: from the data)."})
    packing: bool = field(default=False, metadata={"help": "Pack rows padding-free (sft only)."})
    save_subset: bool = field(default=True, metadata={"help": "Write the selected subset to the output_dir."})
    push_subset_to: str | None = field(default=None, metadata={"help": "Dataset repo to push the subset to."})

    def __post_init__(self) -> None:
        super().__post_init__()
        # TRL turns a one-item list into a str, which peft reads as a regular expression over full
        # module names; a plain module name must stay a list (``all-linear`` is peft's keyword).
        if isinstance(self.lora_target_modules, str) and self.lora_target_modules != "all-linear":
            self.lora_target_modules = [self.lora_target_modules]
        setting = str(self.decontaminate).strip().lower()
        self.decontaminate = {"true": "drop", "yes": "drop", "false": "off", "no": "off", "none": "off"}.get(
            setting, setting
        )
        if self.decontaminate not in DECONTAMINATE_MODES:
            raise ValueError(
                f"decontaminate must be one of {list(DECONTAMINATE_MODES)} (or true/false), got "
                f"{self.decontaminate!r}."
            )
        try:
            # A one-row check: find_contamination refuses bad options first, its message naming the option.
            probe = " ".join(f"word{i}" for i in range(32))  # longer than any n-gram size, so the check runs
            find_contamination([probe], {"eval": [probe]}, **self.decontamination_options())
        except ValueError as err:
            key = DECONTAMINATION_KEYS.get(str(err).split(" ", 1)[0], "decontamination")
            raise ValueError(f"{key}: {err}") from err
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
        if self.use_peft and self.lora_r < 1:
            raise ValueError(f"lora_r must be >= 1, got {self.lora_r}; for a full finetune set use_peft: false.")
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
        if (self.load_in_4bit or self.load_in_8bit) and not self.use_peft:
            raise ValueError(
                "load_in_4bit / load_in_8bit (QLoRA) train LoRA adapters on frozen quantised weights; "
                "set use_peft: true."
            )

    def decontamination_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~hf_cads.decontamination.find_contamination` this run sets.

        Example:
            >>> RunConfig(decontamination_min_overlap=0.5).decontamination_options()["min_overlap"]
            0.5
        """
        return {option: getattr(self, key) for option, key in DECONTAMINATION_KEYS.items()}

    @property
    def quantized(self) -> bool:
        """Whether the base model is loaded with 4-bit or 8-bit (bitsandbytes) weights."""
        return bool(self.load_in_4bit or self.load_in_8bit)


# -- reading a recipe -----------------------------------------------------------------------------
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
    """Read a recipe YAML into ``(RunConfig, BudgetedTrainingArguments)``; ``overrides`` are CLI flags.

    Example:
        >>> from hf_cads.package_data import find_recipe
        >>> run_config, args = parse_recipe(find_recipe("quickstart"), ["--selector", "random"])
        >>> args.selector, args.selector_kwargs  # the recipe's bm25 options stay with bm25
        ('random', None)
    """
    path = Path(path)
    data = read_yaml_file(path, "Recipe", "pass a recipe path or a shipped recipe's name (hf-cads recipes).")
    if not isinstance(data, dict):
        raise ValueError(f"Recipe {str(path)!r} must be a YAML mapping of option: value, got {type(data).__name__}.")
    return recipe_from_dict(data, overrides, source=str(path))


def overridden_selector(overrides: list[str]) -> str | None:
    """The selector ``--selector NAME`` (or ``--selector=NAME``) names in command-line flags, if any."""
    for index, flag in enumerate(overrides):
        if flag == "--selector" and index + 1 < len(overrides):
            return overrides[index + 1]
        if flag.startswith("--selector="):
            return flag.split("=", 1)[1]
    return None


def recipe_from_dict(
    data: dict[str, Any], overrides: list[str] | None = None, source: str = "<dict>"
) -> tuple[RunConfig, BudgetedTrainingArguments]:
    """:func:`parse_recipe` for a mapping already read (``source`` names it in errors).

    The mapping sets the defaults of ``TrlParser((RunConfig, BudgetedTrainingArguments))`` and the
    ``overrides`` are parsed over them, as ``trl`` scripts read ``--config``. A ``--selector`` that
    names another selector than the recipe leaves the recipe's ``selector_kwargs`` (written for
    that selector) behind, with a log line, unless ``--selector_kwargs`` comes with it.

    Example:
        >>> run_config, args = recipe_from_dict({"target": "gsm8k", "output_dir": "out"}, ["--lora_r", "4"])
        >>> run_config.target, run_config.lora_r, args.output_dir
        ('gsm8k', 4, 'out')
    """
    from trl import TrlParser

    overrides = list(overrides or [])
    data = dict(data)
    flags = {flag.removeprefix("--").split("=", 1)[0] for flag in overrides if flag.startswith("--")}
    for old, new in RENAMED_KEYS.items():
        if old in data or old in flags:
            where = f"Recipe {source!r}" if old in data else "The command line"
            raise ValueError(
                f"{where} sets {old}, which was renamed to {new} (TRL's name) in hf_cads 0.2; write {new} instead."
            )
    parser = TrlParser((RunConfig, BudgetedTrainingArguments))
    selector = overridden_selector(overrides)
    if (
        selector is not None
        and selector != data.get("selector")
        and data.get("selector_kwargs")
        and not any(flag == "--selector_kwargs" or flag.startswith("--selector_kwargs=") for flag in overrides)
    ):
        logger.info(
            "--selector %s replaces the recipe's selector %r: its selector_kwargs %s stay with it (pass "
            "--selector_kwargs for %s's options)",
            selector,
            data.get("selector"),
            data.pop("selector_kwargs"),
            selector,
        )
    # TrlParser returns the keys no dataclass field takes as ["--key", "value", ...].
    unknown = sorted(flag.removeprefix("--") for flag in parser.set_defaults_with_config(**data)[::2])
    if unknown:
        raise ValueError(
            f"Recipe {source!r} has unknown option(s) {unknown}; see `hf-cads run --help` for valid ones."
        )
    run_config, training_args = parser.parse_args_into_dataclasses(args=overrides)
    return run_config, training_args
