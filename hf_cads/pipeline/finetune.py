"""The main job: select from the pool for the target and finetune under a FLOP budget, reporting
target loss (and exact match) before/after, the ledger, and a run record for the planner.

Example:
    >>> from hf_cads.package_data import find_recipe  # doctest: +SKIP
    >>> from hf_cads.pipeline import format_report, parse_recipe, run_budgeted_finetune  # doctest: +SKIP
    >>> run_config, training_args = parse_recipe(find_recipe("quickstart"))  # doctest: +SKIP
    >>> print(format_report(run_budgeted_finetune(run_config, training_args)))  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from typing import Any

from .._quiet import late_bar_delay
from ..data import get_texts, source_composition
from ..evaluation import answers_fit, exact_match, question_answer_pairs
from ..flops import FlopLedger, FlopProfile
from ..records import RECORDS_FILE, append_record, experiment_key, record_from_trainer
from ..selectors.scoring import CausalLMScorer
from ..trainer import BudgetedSFTTrainer, BudgetedTrainer, BudgetedTrainingArguments, sft_config_from
from ..trainer.tokenization import has_completions, tokenize_for_causal_lm
from .inputs import RunInputs, load_run_inputs, on_loaded_pool
from .outputs import keep_run_outputs
from .recipe import DECONTAMINATION_KEYS, RunConfig


def target_loss(
    model: Any, tokenizer: Any, texts: list[str], ledger: FlopLedger, batch_size: int, max_length: int
) -> float:
    """Mean per-example loss on the target test texts, charged to the ledger's ``eval`` phase."""
    losses, flops = CausalLMScorer(model, tokenizer, batch_size, max_length, show_progress=False).losses(
        texts, desc="target loss"
    )
    ledger.charge("eval", flops)
    return float(losses.mean())


def exact_match_applies(run: RunConfig, tokenizer: Any, test: Any) -> bool:
    """Whether the target's answers are short enough for exact match (see ``exact_match_max_new_tokens``)."""
    if run.exact_match_max_new_tokens == 0:
        return False
    try:
        _, answers = question_answer_pairs(test, tokenizer)
    except ValueError:
        return False
    return answers_fit(tokenizer, answers, run.exact_match_max_new_tokens)


def evaluate_target(
    model: Any, tokenizer: Any, test: Any, run: RunConfig, args: BudgetedTrainingArguments
) -> tuple[dict[str, float], float]:
    """``{"target_loss": ..., "exact_match": ...}`` on the test rows (exact match only where
    :func:`exact_match_applies`) and the FLOPs that cost. A large test set shows a progress bar once it
    has run a few seconds (:func:`hf_cads._quiet.late_bar_delay`); a short one stays quiet."""
    delay = late_bar_delay()
    scorer = CausalLMScorer(
        model, tokenizer, args.per_device_eval_batch_size, args.max_length, show_progress=True, progress_delay=delay
    )
    if has_completions(test) and not args.train_on_prompt:
        # Chat / prompt-completion targets: the loss of the completion tokens, tokenised exactly as in training.
        encoded = tokenize_for_causal_lm(test, tokenizer, args.max_length, role="eval")
        losses, flops = scorer.losses(
            None, desc="target loss", token_ids=encoded["input_ids"], labels=encoded["labels"]
        )
    else:
        # Rendered as in training (chat template; prompt + completion), so loss and training agree.
        losses, flops = scorer.losses(get_texts(test, tokenizer=tokenizer, role="eval"), desc="target loss")
    metrics = {"target_loss": float(losses.mean())}
    if exact_match_applies(run, tokenizer, test):
        result = exact_match(
            model,
            tokenizer,
            test,
            max_new_tokens=run.exact_match_max_new_tokens,
            batch_size=args.per_device_eval_batch_size,
            max_length=args.max_length,
            show_progress=True,
            progress_delay=delay,
        )
        flops += result.flops
        metrics["exact_match"] = result.accuracy
    return metrics, float(flops)


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
        # A full finetune keeps the key it had as ``lora_r: 0``.
        "lora_r": run.lora_r if run.use_peft else 0,
        "num_train_epochs": args.num_train_epochs,
        # The setting is max_length; the record keeps the 0.1 key, so recorded runs keep their key.
        "max_seq_length": args.max_length,
        "learning_rate": args.learning_rate,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        # Only when set, so the keys of runs recorded before these options existed stay the same.
        **({"dtype": run.dtype} if run.dtype else {}),
        **({"pool": run.pool} if run.pool not in (None, "shared-mix") else {}),
        **({"eval": run.eval} if run.eval is not None else {}),
        **({"selection_text": run.selection_text} if run.selection_text != "example" else {}),
        **({"decontaminate": run.decontaminate} if run.decontaminate != "drop" else {}),
        **({} if run.decontaminate == "off" else _changed_decontamination_options(run)),
        **({"train_on_prompt": True} if args.train_on_prompt else {}),
        **({"load_in_4bit": run.bnb_4bit_quant_type} if run.load_in_4bit else {}),
        **({"load_in_8bit": True} if run.load_in_8bit else {}),
        **(
            {"lora_variant": "dora" if run.use_dora else "rslora"}
            if run.use_peft and (run.use_dora or run.use_rslora)
            else {}
        ),
        **({"trainer": run.trainer} if run.trainer else {}),
        **({"packing": True} if run.packing else {}),
    }


def _changed_decontamination_options(run: RunConfig) -> dict[str, Any]:
    # Different options drop different rows: a different experiment. Defaults stay out of the key.
    default = RunConfig()
    return {
        key: getattr(run, key) for key in DECONTAMINATION_KEYS.values() if getattr(run, key) != getattr(default, key)
    }


def expected_run_key(run: RunConfig, args: BudgetedTrainingArguments) -> str:
    """The key the record of this run will carry, computed without running it."""
    setup = {k: v for k, v in run_setup(run, args).items() if k != "flop_budget"}
    return experiment_key(
        args.selector,
        args.selector_kwargs,
        args.seed,
        args.selection_fraction,
        args.selection_k,
        run.model_name_or_path,
        run.target,
        args.flop_budget,
        setup,
    )


def run_records_path(run: RunConfig, args: BudgetedTrainingArguments) -> str:
    """Where this run's record goes: ``run.run_records`` or ``<output_dir>/runs.jsonl``."""
    return run.run_records or os.path.join(args.output_dir, RECORDS_FILE)


def resolve_trainer(run: RunConfig, pool: Any) -> str:
    """Which trainer a run uses: ``run.trainer``, else ``sft`` for packing or data without a
    ``text`` column (chat / prompt-completion rows), else ``causal-lm``."""
    if run.trainer is not None:
        return run.trainer
    return "sft" if run.packing or "text" not in pool.column_names else "causal-lm"


def sft_view(pool: Any) -> Any:
    """The shared pool as SFTTrainer prompt-completion rows (``prompt``, ``completion``; loss on the
    completion only), keeping ``text`` for the selector and ``source`` for the report. Other
    datasets pass unchanged."""
    columns = pool.column_names
    if not {"prompt", "response"} <= set(columns) or "completion" in columns:
        return pool
    view = pool.rename_column("response", "completion")
    return view.remove_columns([c for c in ("messages",) if c in columns])


def build_trainer(
    run: RunConfig,
    args: BudgetedTrainingArguments,
    model: Any,
    tokenizer: Any,
    pool: Any,
    target: Any,
    peft_config: Any,
    selector_model: Any = None,
) -> Any:
    """The run's budgeted trainer (see :func:`resolve_trainer`), selection already charged."""
    if resolve_trainer(run, pool) == "sft":
        return BudgetedSFTTrainer(
            model=model,
            args=sft_config_from(args, packing=run.packing),
            train_dataset=sft_view(pool),
            processing_class=tokenizer,
            selection_target=target,
            peft_config=peft_config,
            selector_model=selector_model,
        )
    return BudgetedTrainer(
        model=model,
        args=args,
        train_dataset=pool,
        processing_class=tokenizer,
        selection_target=target,
        peft_config=peft_config,
        selector_model=selector_model,
    )


def run_budgeted_finetune(
    run: RunConfig, args: BudgetedTrainingArguments, inputs: RunInputs | None = None
) -> dict[str, Any]:
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
    from trl import get_peft_config

    peft_config = get_peft_config(run)
    baseline_key = (args.per_device_eval_batch_size, args.max_length, run.exact_match_max_new_tokens)
    if baseline_key not in inputs.baselines:
        # The untrained model scores the same in every run that shares these inputs: measure it once.
        inputs.baselines[baseline_key] = evaluate_target(model, tokenizer, test, run, args)
    before, before_flops = inputs.baselines[baseline_key]
    if run.selection_text == "prompt" and args.selector is not None:
        args = copy.copy(args)  # the caller's arguments stay as they were
        args.selector_kwargs = {
            **(args.selector_kwargs or {}),
            "text_column": "prompt",
            "target_text_column": "prompt",
        }
    trainer = build_trainer(
        run, args, model, tokenizer, pool, validation, peft_config, selector_model=inputs.selector_model
    )
    train_output = trainer.train()
    parent_pool = inputs.data.pool if inputs.data is not None else pool
    decontamination = inputs.decontamination
    if trainer.selection_result is not None:
        # Selection ran on the decontaminated pool; its pool_index must point at the rows the user gave.
        trainer.selection_result = on_loaded_pool(trainer.selection_result, parent_pool, decontamination)
    after, after_flops = evaluate_target(trainer.model, tokenizer, test, run, args)
    ledger = trainer.flop_ledger
    ledger.charge("eval", before_flops + after_flops)
    selection = trainer.selection_result
    report = {
        "model": run.model_name_or_path,
        "model_params": FlopProfile.from_model(model).num_params,
        "target": run.target,
        "pool_size": len(parent_pool),
        "pool_sources": pool_sources if run.pool in (None, "shared-mix") else None,
        **(
            {"pool": inputs.data.descriptions.get("pool"), "formats": inputs.data.formats}
            if inputs.data is not None and inputs.data.formats
            else {}
        ),
        "decontamination": decontamination.summary() if decontamination is not None else None,
        "selector": args.selector,
        "selector_config": selection.config if selection else None,
        "k": len(selection) if selection else len(pool),
        "duplicates_dropped": ledger.selection.duplicates_dropped if ledger.selection is not None else 0,
        "selected_sources": source_composition(selection.dataset if selection else pool),
        "trainer": type(trainer).__name__,
        "train_steps": trainer.state.global_step,
        "train_loss": float(train_output.training_loss),
        "target_loss_before": before["target_loss"],
        "target_loss_after": after["target_loss"],
        **(
            {"exact_match_before": before["exact_match"], "exact_match_after": after["exact_match"]}
            if "exact_match" in after
            else {}
        ),
        "ledger": ledger.breakdown(),
        "seed": args.seed,
        "seconds": round(time.time() - started, 1),
        "cpu_seconds": round(time.process_time() - cpu_started, 1),
        "run_records": run_records_path(run, args),
    }
    report["outputs"] = keep_run_outputs(trainer, run, args, inputs.data, validation)
    if trainer.is_world_process_zero():
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, "report.json"), "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
        record = record_from_trainer(
            trainer,
            after,
            model=run.model_name_or_path,
            target=run.target,
            baseline_metrics=before,
            setup=run_setup(run, args),
            seconds=report["seconds"],
        )
        append_record(run_records_path(run, args), record)
    return report


def _decontamination_line(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "decontamination: off"
    line = (
        f"decontamination ({summary['ngram_size']}-grams, {summary['mode']}): {summary['pool_rows_overlapping']} "
        f"pool rows overlap eval rows, {summary['pool_rows_dropped']} dropped; "
        f"{summary['target_rows_overlapping']} target rows overlap"
    )
    for example in summary["examples"]:
        line += (
            f"\n  pool row {example['pool_row']} ~ eval[{example['test_row']}] ({example['kind']}): "
            f"{example['overlap'][:70]!r}"
        )
    return line


def _outputs_line(outputs: dict[str, Any] | None) -> str:
    if not outputs:
        return ""
    line = f"model, tokenizer and model card saved to {outputs['model']}"
    if outputs.get("model_repo"):
        line += f" and pushed to https://huggingface.co/{outputs['model_repo']}"
    if outputs.get("subset"):
        line += f"\nselected subset saved to {outputs['subset']}"
    if outputs.get("subset_repo"):
        line += f"\nselected subset pushed to https://huggingface.co/datasets/{outputs['subset_repo']}"
    return line


def format_report(report: dict[str, Any]) -> str:
    """The text `hf-cads run` prints for a finished run: selection, metrics before and after, the ledger."""
    lines = [
        f"target: {report['target']}   model: {report['model']}   selector: {report['selector']}",
        f"pool: {report['pool_size']} rows -> selected {report['k']}  {report['selected_sources']}"
        + (f"  ({report['duplicates_dropped']} duplicated rows dropped)" if report.get("duplicates_dropped") else ""),
        _decontamination_line(report.get("decontamination")),
        f"trainer: {report.get('trainer', 'BudgetedTrainer')}   train steps: {report['train_steps']}   "
        f"train loss: {report['train_loss']:.4f}",
        f"target loss before: {report['target_loss_before']:.4f}   after: {report['target_loss_after']:.4f}   "
        f"(ppl {math.exp(report['target_loss_before']):.2f} -> {math.exp(report['target_loss_after']):.2f})",
        f"exact match before: {report['exact_match_before']:.3f}   after: {report['exact_match_after']:.3f}"
        if "exact_match_after" in report
        else "",
        "FLOP ledger:",
        FlopLedger.format_breakdown(report["ledger"]),
        f"wall time: {report['seconds']} s",
        f"run record appended to {report['run_records']} (hf-cads plan reads it)" if "run_records" in report else "",
        _outputs_line(report.get("outputs")),
    ]
    return "\n".join(line for line in lines if line)
