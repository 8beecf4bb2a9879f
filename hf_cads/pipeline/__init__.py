"""The main job: select from the multi-source pool for a BBH (or GSM8K) target and LoRA-finetune under
a FLOP budget, reporting target loss before/after and the ledger.

A recipe YAML holds the fields of :class:`RunConfig` and :class:`BudgetedTrainingArguments` side by
side (flat, TRL style); :func:`parse_recipe` reads it and rejects unknown keys.

By job: :mod:`~hf_cads.pipeline.recipe` (recipes and :class:`RunConfig`),
:mod:`~hf_cads.pipeline.inputs` (target, pool, decontamination, model loading) and
:mod:`~hf_cads.pipeline.finetune` (select, train, evaluate, report, record).

Example:
    >>> from hf_cads.pipeline import parse_recipe, run_budgeted_finetune  # doctest: +SKIP
    >>> run_config, training_args = parse_recipe("recipes/quickstart.yaml")  # doctest: +SKIP
    >>> report = run_budgeted_finetune(run_config, training_args)  # doctest: +SKIP
"""

from .inputs import (
    Decontamination,
    RunInputs,
    decontaminate_run_data,
    load_run_data,
    load_run_inputs,
    model_load_options,
)
from .recipe import (
    DECONTAMINATE_MODES,
    MODEL_DTYPES,
    QUICKSTART,
    TRAINERS,
    RunConfig,
    default_recipe,
    find_recipe,
    parse_recipe,
    read_yaml_file,
    recipe_from_dict,
)
from .finetune import (
    build_trainer,
    evaluate_target,
    exact_match_applies,
    expected_run_key,
    format_report,
    resolve_trainer,
    run_budgeted_finetune,
    run_records_path,
    run_setup,
    sft_view,
    target_loss,
)

__all__ = [
    "DECONTAMINATE_MODES",
    "MODEL_DTYPES",
    "QUICKSTART",
    "TRAINERS",
    "Decontamination",
    "RunConfig",
    "RunInputs",
    "build_trainer",
    "decontaminate_run_data",
    "default_recipe",
    "evaluate_target",
    "exact_match_applies",
    "expected_run_key",
    "find_recipe",
    "format_report",
    "load_run_data",
    "load_run_inputs",
    "model_load_options",
    "parse_recipe",
    "read_yaml_file",
    "recipe_from_dict",
    "resolve_trainer",
    "run_budgeted_finetune",
    "run_records_path",
    "run_setup",
    "sft_view",
    "target_loss",
]
