"""Modules split by job keep every public name importable from their old path."""

import importlib

import pytest

OLD_PATHS = {
    # Modules split by job keep every name importable where user code and benchmarks import it.
    "hf_cads.flops": [
        "BudgetExceededError",
        "FlopLedger",
        "FlopProfile",
        "LinearLayer",
        "LoraSpec",
        "PHASES",
        "bm25_flops",
        "matmul_flops",
        "validate_budget",
    ],
    "hf_cads.pipeline": [
        "RunConfig",
        "RunInputs",
        "Decontamination",
        "parse_recipe",
        "recipe_from_dict",
        "find_recipe",
        "default_recipe",
        "load_run_data",
        "load_run_inputs",
        "decontaminate_run_data",
        "model_load_options",
        "run_budgeted_finetune",
        "format_report",
        "target_loss",
        "evaluate_target",
        "exact_match_applies",
        "expected_run_key",
        "run_setup",
        "run_records_path",
        "resolve_trainer",
        "build_trainer",
        "sft_view",
    ],
    "hf_cads.selectors.base": [
        "INDEX_COLUMN",
        "SCORE_COLUMN",
        "SelectorConfig",
        "ScoreOutput",
        "PreparedScoring",
        "SelectionResult",
        "Selector",
        "Deduplication",
        "affects_result",
        "result_options",
        "family_options",
        "build_config",
        "build_result",
        "check_shard_output",
        "resolve_k",
        "top_k_indices",
        "restore_pool_rows",
        "deduplicate_pool",
        "duplicate_rows",
        "check_no_duplicates",
        "validate_dataset",
    ],
    "hf_cads.selectors.less": [
        "LESSSelector",
        "LESSSelectorConfig",
        "LESSInputs",
        "WarmupCheckpoint",
        "influence_scores",
        "linear_schedule",
    ],
}


@pytest.mark.parametrize("module", sorted(OLD_PATHS))
def test_split_modules_keep_their_old_import_paths(module):
    imported = importlib.import_module(module)
    missing = [name for name in OLD_PATHS[module] if not hasattr(imported, name)]
    assert not missing, f"{module} no longer provides {missing}"
