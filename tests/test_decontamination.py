"""Decontamination on the real shared data: injected test rows are found, a clean pool yields
nothing, task templates are no match, and every built-in target keeps its validation rows."""

import pytest
from datasets import Dataset, concatenate_datasets

from hf_cads.data import bbh_tasks, build_multisource_pool, format_qa, load_bbh_examples, load_bbh_target, load_gsm8k
from hf_cads.decontamination import decontaminate, find_contamination, normalise_text


@pytest.fixture(scope="module")
def test_sets(data_dir):
    return {
        "boolean_expressions": load_bbh_examples("boolean_expressions", data_dir),
        "logical_deduction_three_objects": load_bbh_examples("logical_deduction_three_objects", data_dir),
        "gsm8k": load_gsm8k("test", data_dir),
    }


def test_a_pool_without_the_target_tasks_is_clean(small_pool, test_sets):
    # small_pool: gsm8k train, code, alpaca seeds and the BBH tasks other than boolean_expressions.
    report = find_contamination(
        small_pool, {"boolean_expressions": test_sets["boolean_expressions"], "gsm8k": test_sets["gsm8k"]}
    )
    assert report.matches == [] and report.drop_rows == [] and len(report.keep_rows) == len(small_pool)
    assert report.test_sizes == {"boolean_expressions": 250, "gsm8k": 1319}


def test_injected_test_rows_are_found_with_their_test_row(small_pool, test_sets):
    bbh, gsm8k = test_sets["boolean_expressions"], test_sets["gsm8k"]
    injected = [
        # a BBH test row re-cased and re-punctuated: an exact match after normalisation
        format_qa(bbh[7]["input"].upper(), bbh[7]["target"] + "!!"),
        # a GSM8K test question inside a longer instruction: a 13-gram overlap
        f"Solve this carefully, showing work.\n\n{gsm8k[42]['question']}\n\nAnswer: 12",
        format_qa(gsm8k[100]["question"], "I do not know."),
    ]
    extra = Dataset.from_list(
        [{**{c: small_pool[0][c] for c in small_pool.column_names}, "text": t} for t in injected]
    )
    pool = concatenate_datasets([small_pool, extra])
    tests = {name: test_sets[name] for name in ("boolean_expressions", "gsm8k")}
    report = find_contamination(pool, tests)
    n = len(small_pool)
    found = {(m.pool_row, m.test_set, m.test_row, m.kind) for m in report.matches}
    assert found == {
        (n, "boolean_expressions", 7, "exact"),
        (n + 1, "gsm8k", 42, "ngram"),
        (n + 2, "gsm8k", 100, "ngram"),
    }
    assert report.drop_rows == [n, n + 1, n + 2] and report.counts == {"boolean_expressions": 1, "gsm8k": 2}
    assert all(m.overlap in normalise_text(pool[m.pool_row]["text"]) for m in report.matches)
    clean, again = decontaminate(pool, tests)
    assert len(clean) == n and clean["text"] == small_pool["text"] and again.drop_rows == report.drop_rows


def test_shared_task_templates_are_no_match(data_dir, test_sets):
    # BBH's logical-deduction tasks share a 13-word preamble: any-13-gram matching flags every row
    # of the five- and seven-object variants (legitimate training data); the template filter keeps
    # them but for a few that share an eval row's objects and options (1%).
    pool = build_multisource_pool(None, data_dir, sources=("bbh",), max_chars=1500, seed=0)
    eval_rows = {"eval": test_sets["logical_deduction_three_objects"].select(range(32))}
    subtasks = pool["subtask"]
    variants = {"logical_deduction_five_objects", "logical_deduction_seven_objects"}
    in_variants = sum(task in variants for task in subtasks)
    loose = find_contamination(pool, eval_rows, ngram_size=13, min_overlap=0, template_share=None, template_rows=None)
    assert sum(subtasks[row] in variants for row in loose.drop_rows) == in_variants == 500
    report = find_contamination(pool, eval_rows)
    assert sum(subtasks[row] in variants for row in report.drop_rows) <= 0.02 * in_variants
    assert {subtasks[row] for row in report.drop_rows} <= variants | {"logical_deduction_three_objects"}
    exact = [m for m in report.matches if m.kind == "exact"]
    assert len(exact) == 32 and all(subtasks[m.pool_row] == "logical_deduction_three_objects" for m in exact)
    assert all(m.share >= report.min_overlap for m in report.matches)


def test_every_builtin_target_keeps_validation_rows_under_default_decontamination(data_dir):
    # What `hf-cads select` / `run` check by default: the target's validation rows against its first
    # eval_examples (32) test rows. Any-13-gram matching left no row for 16 of the 24 BBH tasks.
    kept = {}
    for task in [*bbh_tasks(data_dir), "gsm8k"]:
        if task == "gsm8k":
            validation, test = load_gsm8k("train", data_dir).select(range(3)), load_gsm8k("test", data_dir)
        else:
            validation, test = load_bbh_target(task, data_dir)
        report = find_contamination(validation, {"eval": test.select(range(min(32, len(test))))})
        kept[task] = len(report.keep_rows)
    assert len(kept) == 25 and min(kept.values()) >= 1, kept
    # The exemplars dropped hold an eval item's own story / table (same item, another question).
    assert sum(kept.values()) >= 3 * 25 - 8, kept  # 6 of 75 dropped today


def test_short_rows_normalisation_and_bad_inputs():
    report = find_contamination(["A b", "a, B.", "x y"], ["a b"], ngram_size=2)
    assert report.drop_rows == [0, 1] and {m.kind for m in report.matches} == {"exact"}
    assert (
        find_contamination(["one two three"], {"t": ["two three four"]}, ngram_size=2).matches[0].overlap
        == "two three"
    )
    assert find_contamination(["one two three"], {"t": ["two three four"]}, ngram_size=3).matches == []
    with pytest.raises(ValueError, match="ngram_size"):
        find_contamination(["a"], ["a"], ngram_size=0)
    with pytest.raises(ValueError, match="min_overlap"):
        find_contamination(["a"], ["a"], min_overlap=2)
    with pytest.raises(TypeError, match="Row 1 of the pool"):
        find_contamination(["a", 3], ["a"])
    with pytest.raises(ValueError, match="tests is empty"):
        find_contamination(["a"], {})


@pytest.mark.parametrize("target", ["logical_deduction_three_objects", "causal_judgement"])
def test_select_runs_with_default_decontamination_on_templated_targets(target, tmp_path, capsys):
    # Issue 33.1: these stopped with "No target row is left after decontamination".
    from hf_cads.cli import main

    flags = ["--target", target, "--selector", "bm25", "--selection_fraction", "0.1", "--max_per_source", "30"]
    assert main(["select", *flags, "--local-dir", str(tmp_path / "sel")]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "decontamination (drop)" in printed and "hf-cads select: kept" in printed
    assert list((tmp_path / "sel").rglob("*.parquet"))
