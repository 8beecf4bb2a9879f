"""The main job: select from the multi-source pool for a BBH (or GSM8K) target and LoRA-finetune under
a FLOP budget, reporting target loss before/after and the ledger.

A recipe YAML holds the fields of :class:`RunConfig` and :class:`BudgetedTrainingArguments` side by
side (flat, TRL style); :func:`parse_recipe` reads it and rejects unknown keys.

Example:
    >>> from hf_cads.pipeline import parse_recipe, run_budgeted_finetune  # doctest: +SKIP
    >>> run_config, training_args = parse_recipe("recipes/quickstart.yaml")  # doctest: +SKIP
    >>> report = run_budgeted_finetune(run_config, training_args)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import build_multisource_pool, column_values, load_bbh_target, load_gsm8k, POOL_SOURCES
from .evaluation import answers_fit, exact_match, question_answer_pairs
from .flops import FlopLedger, FlopProfile
from .lora import DEFAULT_LORA_R, DEFAULT_LORA_TARGET_MODULES
from .records import RECORDS_FILE, append_record, experiment_key, record_from_trainer
from .selectors.scoring import CausalLMScorer
from .trainer import BudgetedTrainer, BudgetedTrainingArguments

logger = logging.getLogger(__name__)


MODEL_DTYPES = ("float32", "bfloat16", "float16")
QUICKSTART = "quickstart.yaml"


def find_recipe(name: str, hint: str) -> Path:
    """``recipes/<name>`` of the current directory or of the checkout; ``hint`` says what to pass instead."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
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
        target: a BBH task name (validation = its cot-prompt exemplars, test = its examples) or ``gsm8k``.
        pool_sources: which shared-data sources make up the pool.
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
            adapters on it (needs ``lora_r > 0``, a CUDA GPU and ``pip install 'hf_cads[qlora]'``).
        bnb_4bit_quant_type / bnb_4bit_compute_dtype / bnb_4bit_use_double_quant: the 4-bit format
            (``nf4`` or ``fp4``), the dtype matmuls run in, and nested quantisation of the scales.
        bnb_4bit_quant_storage: dtype the packed 4-bit weights are stored in; ``bfloat16`` lets FSDP
            and DeepSpeed ZeRO-3 shard them (``None``: ``uint8``, for one GPU or DDP).
        run_records: JSON-lines file to append this run's record to (``None``: ``<output_dir>/runs.jsonl``).
    """

    model_name_or_path: str = "smollm2-135m-instruct"
    target: str = "boolean_expressions"
    pool_sources: list[str] = field(default_factory=lambda: list(POOL_SOURCES))
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

    def __post_init__(self) -> None:
        if self.eval_examples < 1:
            raise ValueError(f"eval_examples must be >= 1, got {self.eval_examples}.")
        if self.exact_match_max_new_tokens < 0:
            raise ValueError(f"exact_match_max_new_tokens must be >= 0 (0 = no exact match), got {self.exact_match_max_new_tokens}.")
        if self.max_per_source is not None and self.max_per_source < 1:
            raise ValueError(f"max_per_source must be >= 1 or null, got {self.max_per_source}.")
        if self.lora_r < 0:
            raise ValueError(f"lora_r must be >= 0 (0 = full finetune), got {self.lora_r}.")
        for name, allowed in (("dtype", (None, *MODEL_DTYPES, "auto")), ("bnb_4bit_compute_dtype", MODEL_DTYPES),
                              ("bnb_4bit_quant_storage", (None, "uint8", *MODEL_DTYPES)), ("bnb_4bit_quant_type", ("nf4", "fp4"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {[a for a in allowed if a]}, got {getattr(self, name)!r}.")
        if self.load_in_4bit and self.lora_r == 0:
            raise ValueError("load_in_4bit (QLoRA) trains LoRA adapters on frozen 4-bit weights; set lora_r > 0.")


def parse_recipe(path: str | os.PathLike, overrides: list[str] | None = None) -> tuple[RunConfig, BudgetedTrainingArguments]:
    """Read a recipe YAML into ``(RunConfig, BudgetedTrainingArguments)``; ``overrides`` are CLI flags."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Recipe {str(path)!r} does not exist; pass the path to a recipe YAML (see recipes/).")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"Recipe {str(path)!r} is not valid YAML: {err}") from err
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
        raise ValueError(f"Recipe {source!r} has unknown option(s) {unknown}; see `hf-cads run --help` for valid ones.")
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


def load_target(run: RunConfig) -> tuple[Any, Any]:
    """``(validation, test)`` for the configured target."""
    if run.target == "gsm8k":
        test = load_gsm8k("test", run.data_dir)
        return test.select(range(8)), test.select(range(8, len(test)))
    return load_bbh_target(run.target, run.data_dir)


def target_loss(model: Any, tokenizer: Any, texts: list[str], ledger: FlopLedger, batch_size: int, max_length: int) -> float:
    """Mean per-example loss on the target test texts, charged to the ledger's ``eval`` phase."""
    losses, flops = CausalLMScorer(model, tokenizer, batch_size, max_length, show_progress=False).losses(texts, desc="target loss")
    ledger.charge("eval", flops)
    return float(losses.mean())


def exact_match_applies(run: RunConfig, tokenizer: Any, test: Any) -> bool:
    """Whether the target's answers are short enough for exact match (see ``exact_match_max_new_tokens``)."""
    if run.exact_match_max_new_tokens == 0:
        return False
    try:
        _, answers = question_answer_pairs(test)
    except ValueError:
        return False
    return answers_fit(tokenizer, answers, run.exact_match_max_new_tokens)


def evaluate_target(model: Any, tokenizer: Any, test: Any, run: RunConfig, args: BudgetedTrainingArguments) -> tuple[dict[str, float], float]:
    """``{"target_loss": ..., "exact_match": ...}`` on the test rows (exact match only where
    :func:`exact_match_applies`) and the FLOPs that cost."""
    scorer = CausalLMScorer(model, tokenizer, args.per_device_eval_batch_size, args.max_seq_length, show_progress=False)
    losses, flops = scorer.losses(list(test["text"]), desc="target loss")
    metrics = {"target_loss": float(losses.mean())}
    if exact_match_applies(run, tokenizer, test):
        result = exact_match(
            model, tokenizer, test, max_new_tokens=run.exact_match_max_new_tokens,
            batch_size=args.per_device_eval_batch_size, max_length=args.max_seq_length,
        )
        flops += result.flops
        metrics["exact_match"] = result.accuracy
    return metrics, float(flops)


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
    baselines: dict[tuple[Any, ...], tuple[dict[str, float], float]] = field(default_factory=dict)
    """Target metrics of the untrained ``model`` and their FLOPs, by evaluation settings (measured once)."""


def load_run_data(run: RunConfig, seed: int) -> tuple[Any, Any, Any]:
    """``(validation, test, pool)`` of a run: the target splits (test cut to ``eval_examples``) and
    the pool (seeded by ``seed``)."""
    pool_sources = run.pool_sources
    target_task = None if run.target == "gsm8k" else run.target
    validation, test = load_target(run)
    pool = build_multisource_pool(
        target_task, run.data_dir, sources=pool_sources, max_per_source=run.max_per_source,
        max_chars=run.max_pool_chars, seed=seed,
    )
    if run.target == "gsm8k" and "gsm8k" in pool_sources:
        logger.warning("GSM8K train is in the pool for a GSM8K target: it is in-distribution data, not leakage of test rows.")
    return validation, test.select(range(min(run.eval_examples, len(test)))), pool


def model_load_options(run: RunConfig) -> dict[str, Any]:
    """``from_pretrained`` options for the run's attention kernel, dtype and 4-bit (QLoRA) loading.

    4-bit loading needs bitsandbytes and a CUDA GPU; without them this raises an error saying so
    (rather than failing inside ``from_pretrained``).
    """
    import importlib.util

    import torch

    options: dict[str, Any] = {}
    if run.attn_implementation:
        options["attn_implementation"] = run.attn_implementation
    if run.dtype:
        options["dtype"] = run.dtype if run.dtype == "auto" else getattr(torch, run.dtype)
    if run.load_in_4bit:
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ImportError("load_in_4bit (QLoRA) needs bitsandbytes: pip install 'hf_cads[qlora]' (on a machine with a CUDA GPU).")
        if not torch.cuda.is_available():
            raise ValueError(
                "load_in_4bit (QLoRA) needs a CUDA GPU: bitsandbytes' 4-bit kernels do not run on this machine. "
                "Set load_in_4bit: false to LoRA-finetune the unquantised model, or run the recipe on a GPU."
            )
        from transformers import BitsAndBytesConfig

        options["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=run.bnb_4bit_quant_type,
            bnb_4bit_compute_dtype=getattr(torch, run.bnb_4bit_compute_dtype),
            bnb_4bit_use_double_quant=run.bnb_4bit_use_double_quant,
            bnb_4bit_quant_storage=getattr(torch, run.bnb_4bit_quant_storage or "uint8"),
        )
        sharded = any(os.environ.get(flag, "").lower() == "true" for flag in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"))
        if not sharded:
            # Every process holds a whole 4-bit copy on its own GPU; FSDP and ZeRO-3 place shards themselves.
            options["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    return options


def load_run_inputs(run: RunConfig, args: BudgetedTrainingArguments, model_and_tokenizer: tuple[Any, Any] | None = None) -> RunInputs:
    """Load the target, the pool (seeded by ``args.seed``) and, unless given, the model."""
    from .models import load_causal_lm

    validation, test, pool = load_run_data(run, args.seed)
    if model_and_tokenizer is None:
        model, tokenizer = load_causal_lm(run.model_name_or_path, **model_load_options(run))
        if run.load_in_4bit:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(args.gradient_checkpointing))
        model_and_tokenizer = (model, tokenizer)
    return RunInputs(validation, test, pool, *model_and_tokenizer)


def run_setup(run: RunConfig, args: BudgetedTrainingArguments) -> dict[str, Any]:
    """The settings besides selector, size, seed, model and target that make two runs different
    experiments (part of a run record's key)."""
    return {
        "flop_budget": args.flop_budget,
        "pool_sources": list(run.pool_sources),
        "max_per_source": run.max_per_source,
        "max_pool_chars": run.max_pool_chars,
        "eval_examples": run.eval_examples,
        "exact_match_max_new_tokens": run.exact_match_max_new_tokens,
        "lora_r": run.lora_r,
        "num_train_epochs": args.num_train_epochs,
        "max_seq_length": args.max_seq_length,
        "learning_rate": args.learning_rate,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        # Only when set, so the keys of runs recorded before these options existed stay the same.
        **({"dtype": run.dtype} if run.dtype else {}),
        **({"load_in_4bit": run.bnb_4bit_quant_type} if run.load_in_4bit else {}),
    }


def expected_run_key(run: RunConfig, args: BudgetedTrainingArguments) -> str:
    """The key the record of this run will carry, computed without running it."""
    setup = {k: v for k, v in run_setup(run, args).items() if k != "flop_budget"}
    return experiment_key(
        args.selector, args.selector_kwargs, args.seed, args.selection_fraction, args.selection_k,
        run.model_name_or_path, run.target, args.flop_budget, setup,
    )


def run_records_path(run: RunConfig, args: BudgetedTrainingArguments) -> str:
    """Where this run's record goes: ``run.run_records`` or ``<output_dir>/runs.jsonl``."""
    return run.run_records or os.path.join(args.output_dir, RECORDS_FILE)


def run_budgeted_finetune(run: RunConfig, args: BudgetedTrainingArguments, inputs: RunInputs | None = None) -> dict[str, Any]:
    """Select, train under ``args.flop_budget``, evaluate; returns (and writes) the report and
    appends a run record to :func:`run_records_path`. ``inputs`` reuses loaded data and model."""
    started, cpu_started = time.time(), time.process_time()
    pool_sources = run.pool_sources
    if inputs is None:
        inputs = load_run_inputs(run, args)
        model = inputs.model
    else:
        model = copy.deepcopy(inputs.model)  # training changes the weights (and peft injects adapters)
    validation, test, pool, tokenizer = inputs.validation, inputs.test, inputs.pool, inputs.tokenizer
    peft_config = None
    if run.lora_r > 0:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=run.lora_r, lora_alpha=run.lora_alpha, lora_dropout=run.lora_dropout,
            target_modules=list(run.lora_target_modules), task_type="CAUSAL_LM",
        )
    baseline_key = (args.per_device_eval_batch_size, args.max_seq_length, run.exact_match_max_new_tokens)
    if baseline_key not in inputs.baselines:
        # The untrained model scores the same in every run that shares these inputs: measure it once.
        inputs.baselines[baseline_key] = evaluate_target(model, tokenizer, test, run, args)
    before, before_flops = inputs.baselines[baseline_key]
    trainer = BudgetedTrainer(
        model=model, args=args, train_dataset=pool, processing_class=tokenizer,
        selection_target=validation, peft_config=peft_config,
    )
    train_output = trainer.train()
    after, after_flops = evaluate_target(trainer.model, tokenizer, test, run, args)
    ledger = trainer.flop_ledger
    ledger.charge("eval", before_flops + after_flops)
    selection = trainer.selection_result
    report = {
        "model": run.model_name_or_path,
        "model_params": FlopProfile.from_model(model).num_params,
        "target": run.target,
        "pool_size": len(pool),
        "pool_sources": pool_sources,
        "selector": args.selector,
        "selector_config": selection.config if selection else None,
        "k": len(selection) if selection else len(pool),
        "duplicates_dropped": ledger.selection.duplicates_dropped if ledger.selection is not None else 0,
        "selected_sources": _count(column_values(selection.dataset, "source")) if selection else _count(column_values(pool, "source")),
        "train_steps": trainer.state.global_step,
        "train_loss": float(train_output.training_loss),
        "target_loss_before": before["target_loss"],
        "target_loss_after": after["target_loss"],
        **({"exact_match_before": before["exact_match"], "exact_match_after": after["exact_match"]} if "exact_match" in after else {}),
        "ledger": ledger.breakdown(),
        "seed": args.seed,
        "seconds": round(time.time() - started, 1),
        "cpu_seconds": round(time.process_time() - cpu_started, 1),
        "run_records": run_records_path(run, args),
    }
    if trainer.is_world_process_zero():
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, "report.json"), "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
        record = record_from_trainer(
            trainer, after, model=run.model_name_or_path, target=run.target,
            baseline_metrics=before, setup=run_setup(run, args),
            seconds=report["seconds"],
        )
        append_record(run_records_path(run, args), record)
    return report


def _count(values: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return dict(sorted(counts.items()))


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"target: {report['target']}   model: {report['model']}   selector: {report['selector']}",
        f"pool: {report['pool_size']} rows -> selected {report['k']}  {report['selected_sources']}"
        + (f"  ({report['duplicates_dropped']} duplicated rows dropped)" if report.get("duplicates_dropped") else ""),
        f"train steps: {report['train_steps']}   train loss: {report['train_loss']:.4f}",
        f"target loss before: {report['target_loss_before']:.4f}   after: {report['target_loss_after']:.4f}   "
        f"(ppl {math.exp(report['target_loss_before']):.2f} -> {math.exp(report['target_loss_after']):.2f})",
        f"exact match before: {report['exact_match_before']:.3f}   after: {report['exact_match_after']:.3f}"
        if "exact_match_after" in report else "",
        "FLOP ledger:",
        FlopLedger.format_breakdown(report["ledger"]),
        f"wall time: {report['seconds']} s",
        f"run record appended to {report['run_records']} (hf-cads plan reads it)" if "run_records" in report else "",
    ]
    return "\n".join(line for line in lines if line)
