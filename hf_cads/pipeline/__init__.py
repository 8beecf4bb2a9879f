"""The main job: select from the pool for a target and finetune under a FLOP budget, reporting target
loss before/after and the ledger, and keeping the model and the subset it was trained on.

A recipe YAML holds the fields of :class:`RunConfig` (TRL's ``ModelConfig`` plus the data options)
and :class:`BudgetedTrainingArguments` side by side (flat, TRL style); :func:`parse_recipe` reads it
with TRL's ``TrlParser`` and rejects unknown keys. The shipped recipes are package data
(:mod:`hf_cads.package_data`, listed by ``hf-cads recipes``).

By job: :mod:`~hf_cads.pipeline.recipe` (recipes and :class:`RunConfig`),
:mod:`~hf_cads.pipeline.inputs` (target, pool, decontamination, model loading),
:mod:`~hf_cads.pipeline.finetune` (select, train, evaluate, report, record) and
:mod:`~hf_cads.pipeline.outputs` (model, tokenizer, card, subset; Hub pushes).

Example:
    >>> from hf_cads.package_data import find_recipe
    >>> from hf_cads.pipeline import parse_recipe, run_budgeted_finetune
    >>> run_config, training_args = parse_recipe(find_recipe("quickstart"))
    >>> report = run_budgeted_finetune(run_config, training_args)  # doctest: +SKIP
"""

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
from .inputs import (
    Decontamination,
    RunInputs,
    decontaminate_run_data,
    load_run_data,
    load_run_inputs,
    model_load_options,
    on_loaded_pool,
)
from .outputs import SUBSET_FOLDER, keep_run_outputs, save_subset
from .recipe import (
    DECONTAMINATE_MODES,
    MODEL_DTYPES,
    TRAINERS,
    RunConfig,
    parse_recipe,
    read_yaml_file,
    recipe_from_dict,
)

__all__ = [
    "DECONTAMINATE_MODES",
    "MODEL_DTYPES",
    "SUBSET_FOLDER",
    "TRAINERS",
    "Decontamination",
    "RunConfig",
    "RunInputs",
    "build_trainer",
    "decontaminate_run_data",
    "evaluate_target",
    "exact_match_applies",
    "expected_run_key",
    "format_report",
    "keep_run_outputs",
    "load_run_data",
    "load_run_inputs",
    "model_load_options",
    "on_loaded_pool",
    "parse_recipe",
    "read_yaml_file",
    "recipe_from_dict",
    "resolve_trainer",
    "run_budgeted_finetune",
    "run_records_path",
    "run_setup",
    "save_subset",
    "sft_view",
    "target_loss",
]
