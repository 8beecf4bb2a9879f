"""The bad-input matrix: every case must fail with an error that names the problem and the fix,
before any work that could leave partial output behind."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset, DatasetDict

from hf_cads import BudgetedTrainer, BudgetedTrainingArguments, get_selector
from hf_cads.cli import main
from hf_cads.flops import validate_budget
from hf_cads.pipeline import RunConfig, parse_recipe
from hf_cads.testing import tiny_causal_lm

TEXTS = Dataset.from_dict({"text": ["solve 2 + 3", "write a poem about the sea", "sort this list"]})
TARGET = Dataset.from_dict({"text": ["solve 4 + 4"]})


def training_args(tmp_path, **overrides):
    options = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        max_length=64,
        disable_tqdm=True,
    )
    options.update(overrides)
    return BudgetedTrainingArguments(**options)


# -- selectors --------------------------------------------------------------------------------
SELECTOR_CASES = {
    "pool is a list": (
        lambda: get_selector("bm25").select(["a", "b"], target=TARGET, k=1),
        TypeError,
        "pool must be a datasets.Dataset",
    ),
    "pool is a DatasetDict": (
        lambda: get_selector("bm25").select(DatasetDict({"train": TEXTS}), target=TARGET, k=1),
        TypeError,
        r"select a split",
    ),
    "empty pool": (
        lambda: get_selector("bm25").select(TEXTS.select([]), target=TARGET, k=1),
        ValueError,
        "pool dataset is empty",
    ),
    "missing text column": (
        lambda: get_selector("bm25").select(Dataset.from_dict({"body": ["x", "y"]}), target=TARGET, k=1),
        ValueError,
        "no 'text' or 'messages' column.*text_column",
    ),
    "named column absent": (
        lambda: get_selector("bm25", text_column="content").select(TEXTS, target=TARGET, k=1),
        ValueError,
        "Column 'content' is not in the pool",
    ),
    "non-text column": (
        lambda: get_selector("bm25").select(Dataset.from_dict({"text": [1, 2]}), target=TARGET, k=1),
        TypeError,
        "must hold strings",
    ),
    "malformed messages": (
        lambda: get_selector("bm25").select(Dataset.from_dict({"messages": [[{"role": "user"}]]}), target=TARGET, k=1),
        TypeError,
        "list of {'role', 'content'} dicts",
    ),
    "empty target": (
        lambda: get_selector("bm25").select(TEXTS, target=TARGET.select([]), k=1),
        ValueError,
        "target dataset is empty",
    ),
    "no target for a targeted selector": (
        lambda: get_selector("embedding").select(TEXTS, k=1),
        ValueError,
        "needs target=",
    ),
    "target without words": (
        lambda: get_selector("bm25").select(TEXTS, target=Dataset.from_dict({"text": ["?!", ""]}), k=1),
        ValueError,
        "no word tokens",
    ),
    "duplicated rows refused": (
        lambda: get_selector("random", deduplicate="error").select(Dataset.from_dict({"text": ["a", "b", "a"]}), k=1),
        ValueError,
        r"1 duplicated row\(s\).*deduplicate='drop'.*allow_duplicates=True",
    ),
    "bad deduplicate value": (
        lambda: get_selector("random", deduplicate="keep"),
        ValueError,
        "deduplicate must be 'drop' or 'error'",
    ),
    "k above the unique rows": (
        lambda: get_selector("random").select(Dataset.from_dict({"text": ["a", "b", "a"]}), k=3),
        ValueError,
        "larger than the pool.*2 unique rows after dropping 1 duplicates",
    ),
    "k larger than pool": (lambda: get_selector("random").select(TEXTS, k=10), ValueError, "larger than the pool"),
    "k zero": (lambda: get_selector("random").select(TEXTS, k=0), ValueError, "k must be >= 1"),
    "k as a string": (lambda: get_selector("random").select(TEXTS, k="2"), TypeError, "k must be an integer"),
    "fraction zero": (
        lambda: get_selector("random").select(TEXTS, fraction=0.0),
        ValueError,
        r"fraction must be in \(0, 1\]",
    ),
    "fraction above one": (
        lambda: get_selector("random").select(TEXTS, fraction=1.5),
        ValueError,
        r"fraction must be in \(0, 1\]",
    ),
    "fraction NaN": (
        lambda: get_selector("random").select(TEXTS, fraction=float("nan")),
        TypeError,
        "fraction must be a number",
    ),
    "both k and fraction": (
        lambda: get_selector("random").select(TEXTS, k=1, fraction=0.5),
        ValueError,
        "either k or fraction",
    ),
    "neither k nor fraction": (lambda: get_selector("random").select(TEXTS), ValueError, "Pass k"),
    "unknown selector": (
        lambda: get_selector("bm26"),
        ValueError,
        r"Unknown selector 'bm26'; registered selectors: \[.*'bm25'",
    ),
    "empty selector name": (lambda: get_selector("  "), ValueError, "non-empty string; registered selectors"),
    "unknown selector option": (
        lambda: get_selector("bm25", k2=1.0),
        TypeError,
        r"Unknown option.*'k2'.*valid options",
    ),
    "bad option value": (
        lambda: get_selector("bm25", aggregate="median"),
        ValueError,
        "aggregate must be 'mean', 'max' or 'round_robin', got 'median'",
    ),
    "model for a model-free selector": (lambda: get_selector("bm25", model=object()), TypeError, "uses no model"),
    "model path that does not exist": (
        lambda: get_selector("perplexity", model_name_or_path="./no/such/model").select(TEXTS, k=1),
        FileNotFoundError,
        "does not exist.*built-in offline models",
    ),
}


@pytest.mark.parametrize("case", list(SELECTOR_CASES))
def test_selector_bad_inputs(case):
    call, error, message = SELECTOR_CASES[case]
    with pytest.raises(error, match=message):
        call()


def test_unreachable_hub_model():
    from hf_cads.models import load_causal_lm

    with pytest.raises(OSError, match="Could not load model 'no-such-org/no-such-model'.*offline"):
        load_causal_lm("no-such-org/no-such-model")


def test_texts_too_short_for_a_language_model(tokenizer):
    pool = Dataset.from_dict({"text": ["", "a longer sentence with words"]})
    selector = get_selector("perplexity", model=tiny_causal_lm(tokenizer), tokenizer=tokenizer, show_progress=False)
    with pytest.raises(ValueError, match=r"Rows \[0\] of the pool tokenise to fewer than 2 tokens"):
        selector.select(pool, k=1)


# -- budgets and trainer ------------------------------------------------------------------------
@pytest.mark.parametrize("budget", [0, -5, float("nan"), float("inf"), "lots", None, True, [1e12]])
def test_bad_budget_values(budget):
    with pytest.raises((ValueError, TypeError), match="flop_budget"):
        validate_budget(budget)


@pytest.mark.parametrize("budget", [0, float("nan"), float("inf")])
def test_bad_budget_in_arguments(tmp_path, budget):
    with pytest.raises(ValueError, match="flop_budget must be a finite number > 0"):
        training_args(tmp_path, flop_budget=budget)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"selector": "nope", "selection_fraction": 0.1}, "registered selectors"),
        ({"selector": "bm25"}, "needs selection_fraction or selection_k"),
        ({"selector_kwargs": "{not json"}, "selector_kwargs must be a JSON object"),
        ({"max_length": 1}, "max_length must be >= 2"),
    ],
)
def test_bad_training_arguments(tmp_path, options, message):
    with pytest.raises((ValueError, TypeError), match=message):
        training_args(tmp_path, **options)


def test_budget_below_selection_cost_fails_before_any_work(tmp_path, small_pool, bbh_target, tokenizer, tiny_lm):
    args = training_args(tmp_path, flop_budget=1e6, selector="perplexity", selection_fraction=0.1)
    with pytest.raises(ValueError, match="smaller than the cost of the 'perplexity' selector"):
        BudgetedTrainer(
            model=tiny_lm,
            args=args,
            train_dataset=small_pool,
            processing_class=tokenizer,
            selection_target=bbh_target[0],
        )
    assert not (tmp_path / "out").exists()


def test_budget_with_no_room_for_a_training_step(tmp_path, small_pool, tokenizer, tiny_lm):
    with pytest.raises(ValueError, match="less than one training step"):
        BudgetedTrainer(
            model=tiny_lm,
            args=training_args(tmp_path, flop_budget=1e6),
            train_dataset=small_pool,
            processing_class=tokenizer,
        )


def test_mismatched_tokenizer(tmp_path, small_pool, tokenizer):
    with pytest.raises(ValueError, match="does not belong to this model"):
        BudgetedTrainer(
            model=tiny_causal_lm(vocab_size=100),
            args=training_args(tmp_path),
            train_dataset=small_pool,
            processing_class=tokenizer,
        )


def test_text_dataset_without_tokenizer(tmp_path, small_pool, tiny_lm):
    with pytest.raises(ValueError, match="pass processing_class="):
        BudgetedTrainer(model=tiny_lm, args=training_args(tmp_path), train_dataset=small_pool)


def test_peft_config_that_does_not_fit(tmp_path, small_pool, tokenizer, tiny_lm):
    from peft import LoraConfig

    with pytest.raises(ValueError, match="peft_config does not fit this model"):
        BudgetedTrainer(
            model=tiny_lm,
            args=training_args(tmp_path),
            train_dataset=small_pool,
            processing_class=tokenizer,
            peft_config=LoraConfig(r=4, target_modules=["no_such_proj"]),
        )


def test_missing_model_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BudgetedTrainer(model="./missing/model", args=training_args(tmp_path))


# -- recipes and CLI ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content,message",
    [
        ("flop_budget: 1e12\nnot_an_option: 3\n", r"unknown option\(s\) \['not_an_option'\]"),
        ("flop_budget: [1, 2\n", "not valid YAML"),
        ("- a\n- b\n", "must be a YAML mapping"),
        ("eval_examples: 0\n", "eval_examples must be >= 1"),
        ("flop_budget: -3\n", "flop_budget must be a finite number > 0"),
    ],
)
def test_bad_recipes(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        parse_recipe(path)


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err


def test_cli_unknown_command(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_missing_shared_data_path(tmp_path):
    from hf_cads.data import build_multisource_pool

    with pytest.raises(FileNotFoundError, match="is built in, but its data folder .* does not exist"):
        build_multisource_pool(data_dir=tmp_path / "nowhere")


def test_unknown_bbh_target():
    from hf_cads.data import load_bbh_target

    with pytest.raises(ValueError, match="Unknown BBH task 'nope'; available tasks"):
        load_bbh_target("nope")


def test_failed_run_leaves_no_report(tmp_path):
    from hf_cads.pipeline import run_budgeted_finetune

    run_config = RunConfig(model_name_or_path=str(tmp_path / "missing-model"))
    args = training_args(tmp_path, flop_budget=1e12)
    with pytest.raises(FileNotFoundError):
        run_budgeted_finetune(run_config, args)
    assert not (tmp_path / "out" / "report.json").exists()
    assert json.dumps(run_config.__dict__)  # the config itself stays serialisable for records
