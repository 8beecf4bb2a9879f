"""What a run loads before it trains: the target splits and pool (from presets or your own sources),
decontaminated against the test rows, and the model with the recipe's dtype / 4-bit options.

Example:
    >>> from hf_cads.package_data import find_recipe  # doctest: +SKIP
    >>> from hf_cads.pipeline import load_run_inputs, parse_recipe  # doctest: +SKIP
    >>> run_config, training_args = parse_recipe(find_recipe("quickstart"))  # doctest: +SKIP
    >>> inputs = load_run_inputs(run_config, training_args)  # doctest: +SKIP
    >>> len(inputs.pool), inputs.decontamination.summary()["pool_rows_dropped"]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from ..data import TaskData, load_task_data
from ..decontamination import ContaminationReport, find_contamination
from ..models import check_bitsandbytes
from ..selectors.result import restore_pool_rows
from ..trainer import BudgetedTrainingArguments
from .recipe import RunConfig

logger = logging.getLogger(__name__)


@dataclass
class RunInputs:
    """What a run loads before it trains: the target splits, the pool and the model.

    :func:`run_budgeted_finetune` loads them itself; a caller running many configurations (the
    sweep) loads them once with :func:`load_run_inputs` and passes them in; each run then trains
    a copy of ``model``.
    """

    validation: Any
    test: Any
    pool: Any
    model: Any
    tokenizer: Any
    data: TaskData | None = None
    decontamination: Decontamination | None = None
    baselines: dict[tuple[Any, ...], tuple[dict[str, float], float]] = field(default_factory=dict)
    """Target metrics of the untrained ``model`` and their FLOPs, by evaluation settings (measured once)."""
    selector_model: Any = None
    """A model object the LM-based selectors (perplexity, LESS, CADS) score with instead of the trained
    model: e.g. a smaller selection model (its own tokenizer is loaded by the selector's
    ``model_name_or_path``). ``None``: they score with the trained model."""


def load_run_data(run: RunConfig, seed: int) -> TaskData:
    """A run's target splits (test cut to ``eval_examples``) and pool (seeded by ``seed``), from
    presets or your own sources (:func:`hf_cads.data.load_task_data`)."""
    return load_task_data(
        run.target,
        run.pool,
        run.eval,
        data_dir=run.data_dir,
        pool_sources=run.pool_sources,
        max_per_source=run.max_per_source,
        max_pool_chars=run.max_pool_chars,
        eval_examples=run.eval_examples,
        seed=seed,
    )


@dataclass
class Decontamination:
    """What decontamination found and the pool / target rows selection runs on (all rows under ``report``)."""

    pool_report: ContaminationReport
    target_report: ContaminationReport
    kept_pool_rows: list[int]
    mode: str

    @property
    def dropped(self) -> int:
        return len(self.pool_report.matches) if self.mode == "drop" else 0

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "ngram_size": self.pool_report.ngram_size,
            "min_overlap": self.pool_report.min_overlap,
            "template_rows": self.pool_report.template_rows,
            "template_share": self.pool_report.template_share,
            "pool_rows_overlapping": len(self.pool_report.matches),
            "pool_rows_dropped": self.dropped,
            "target_rows_overlapping": len(self.target_report.matches),
            "examples": self.pool_report.examples(3),
        }


def on_loaded_pool(result: Any, loaded_pool: Any, decontamination: Decontamination | None) -> Any:
    """A selection made on the decontaminated pool re-expressed on the pool as loaded: its
    ``pool_index`` points at the rows the user gave (``decontamination`` ``None``: unchanged)."""
    if decontamination is None:
        return result
    rows = decontamination.kept_pool_rows if decontamination.mode == "drop" else list(range(len(loaded_pool)))
    return restore_pool_rows(result, loaded_pool, rows, {"decontamination": decontamination.summary()})


def decontaminate_run_data(run: RunConfig, data: TaskData) -> tuple[Any, Any, Decontamination | None]:
    """``(validation, pool)`` to select with: without the rows that overlap the test rows
    (``decontaminate: drop``), and what was found (``None`` when off)."""
    if run.decontaminate == "off":
        return data.validation, data.pool, None
    tests = {"eval": data.test}
    options = run.decontamination_options()
    pool_report = find_contamination(data.pool, tests, **options)
    target_report = find_contamination(data.validation, tests, **options)
    for name, report in (("pool", pool_report), ("target", target_report)):
        if report.matches:
            logger.warning("%s: %s", name, report.format())
        else:
            logger.info("decontamination: no %s row overlaps the %d eval rows", name, len(data.test))
    result = Decontamination(pool_report, target_report, pool_report.keep_rows, run.decontaminate)
    if run.decontaminate == "report":
        return data.validation, data.pool, result
    if target_report.matches and not target_report.keep_rows:
        raise ValueError(
            f"No target row is left after decontamination: all {len(data.validation)} overlap the eval rows. Pass a "
            "target set distinct from eval:, or set decontaminate: report to keep them."
        )
    validation = data.validation.select(target_report.keep_rows) if target_report.matches else data.validation
    pool = data.pool.select(pool_report.keep_rows) if pool_report.matches else data.pool
    if len(pool) == 0:
        raise ValueError(
            "No pool row is left after decontamination: every one overlaps the eval rows; check that pool and eval "
            "differ."
        )
    return validation, pool, result


def model_load_options(run: RunConfig) -> dict[str, Any]:
    """``from_pretrained`` options for the run's revision, attention kernel, dtype and 4-bit / 8-bit
    (QLoRA) loading: the ``BitsAndBytesConfig`` is TRL's ``get_quantization_config`` of the run, with
    the run's ``bnb_4bit_compute_dtype``.

    Quantised loading needs bitsandbytes (>= 0.48, whose 4-bit layers run on CPU as well as CUDA);
    without it this raises an error saying so (rather than failing inside ``from_pretrained``).

    Example:
        >>> from hf_cads.pipeline import RunConfig
        >>> model_load_options(RunConfig(attn_implementation="eager", dtype="float32"))
        {'attn_implementation': 'eager', 'dtype': torch.float32}
    """
    import torch

    options: dict[str, Any] = {}
    if run.model_revision not in (None, "main"):
        options["revision"] = run.model_revision
    if run.attn_implementation:
        options["attn_implementation"] = run.attn_implementation
    if run.dtype:
        options["dtype"] = run.dtype if run.dtype == "auto" else getattr(torch, run.dtype)
    if run.quantized:
        check_bitsandbytes()
        from trl import get_quantization_config

        quantization = get_quantization_config(run)
        if run.load_in_4bit:
            quantization.bnb_4bit_compute_dtype = getattr(torch, run.bnb_4bit_compute_dtype)
        options["quantization_config"] = quantization
        sharded = any(
            os.environ.get(flag, "").lower() == "true" for flag in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED")
        )
        if not sharded:
            # Every process holds a whole 4-bit copy on its own GPU (or in CPU memory, where bitsandbytes'
            # CPU backend runs it); FSDP and ZeRO-3 place shards themselves.
            options["device_map"] = {
                "": int(os.environ.get("LOCAL_RANK", "0")) if torch.cuda.is_available() else "cpu"
            }
    return options


def load_run_inputs(
    run: RunConfig, args: BudgetedTrainingArguments, model_and_tokenizer: tuple[Any, Any] | None = None
) -> RunInputs:
    """Load the target, the pool (seeded by ``args.seed``) and, unless given, the model."""
    from ..models import load_causal_lm

    data = load_run_data(run, args.seed)
    validation, pool, decontamination = decontaminate_run_data(run, data)
    if model_and_tokenizer is None:
        model, tokenizer = load_causal_lm(run.model_name_or_path, **model_load_options(run))
        if run.quantized:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=bool(args.gradient_checkpointing)
            )
        model_and_tokenizer = (model, tokenizer)
    return RunInputs(validation, data.test, pool, *model_and_tokenizer, data=data, decontamination=decontamination)
