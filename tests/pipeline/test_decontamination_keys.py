"""The recipe's decontamination keys reach find_contamination (one target and ``--targets``), and
renamed trainer keys are refused with their new name."""

import pytest
from datasets import Dataset

from hf_cads.commands.select import decontaminate_targets
from hf_cads.data import TaskData
from hf_cads.pipeline import decontaminate_run_data, recipe_from_dict

WORDS = [f"w{i}" for i in range(200)]
TEST_ROW = " ".join(WORDS[:20])
# The test row's first 12 words: 5 of its 13 distinctive 8-grams (a share of 0.38).
PARTIAL_COPY = " ".join(WORDS[:12] + WORDS[100:110])
PREAMBLE = WORDS[150:164]  # 14 words every test row starts with: template text


def run_config(**keys):
    run, _ = recipe_from_dict({"output_dir": "out", **keys})
    return run


def task(pool, test):
    return TaskData(
        validation=Dataset.from_dict({"text": [" ".join(WORDS[120:140])]}),
        test=Dataset.from_dict({"text": test}),
        pool=Dataset.from_dict({"text": pool}),
    )


def pool_rows_dropped(run, data):
    _, pool, found = decontaminate_run_data(run, data)
    assert found.pool_report.summary()["min_overlap"] == run.decontamination_min_overlap
    return len(data.pool) - len(pool)


def test_min_overlap_key_decides_whether_a_partial_copy_is_dropped():
    data = task([PARTIAL_COPY, " ".join(WORDS[60:80])], [TEST_ROW])
    assert pool_rows_dropped(run_config(), data) == 1  # 0.38 >= the default 0.25
    assert pool_rows_dropped(run_config(decontamination_min_overlap=0.5), data) == 0


def test_template_keys_decide_whether_a_shared_preamble_counts():
    tests = [" ".join(PREAMBLE + WORDS[6 * i : 6 * i + 6]) for i in range(6)]
    data = task([" ".join(PREAMBLE + WORDS[100:106]), " ".join(WORDS[60:80])], tests)
    assert pool_rows_dropped(run_config(), data) == 0  # the preamble is in all 6 rows: template
    no_filter = run_config(decontamination_template_rows=None, decontamination_template_share=None)
    assert pool_rows_dropped(no_filter, data) == 1  # 7 of each test row's 13 8-grams are the preamble
    assert pool_rows_dropped(run_config(decontamination_template_rows=7, decontamination_template_share=None), data)


def test_targets_report_uses_the_recipe_keys():
    pool = [PARTIAL_COPY, " ".join(WORDS[60:80])]
    tasks = {"a": task(pool, [TEST_ROW]), "b": task(pool, [" ".join(WORDS[30:50])])}
    run = run_config(decontamination_min_overlap=0.3, decontamination_ngram=6)
    _, kept_pool, found = decontaminate_targets(run, tasks)
    summary = found["a"].summary()
    assert (summary["min_overlap"], summary["ngram_size"]) == (0.3, 6)
    assert len(kept_pool) == 1
    _, kept_pool, _ = decontaminate_targets(run_config(decontamination_min_overlap=0.6), tasks)
    assert len(kept_pool) == 2


@pytest.mark.parametrize(
    ("keys", "overrides", "message"),
    [
        ({"max_seq_length": 64}, [], "Recipe .* sets max_seq_length, which was renamed to max_length"),
        ({"text_column": "body"}, [], "text_column, which was renamed to dataset_text_field"),
        ({}, ["--max_seq_length", "64"], "The command line sets max_seq_length, .* write max_length instead"),
        ({"decontamination_min_overlap": 2}, [], "^decontamination_min_overlap: min_overlap must be a share"),
        ({"decontamination_template_rows": 1}, [], "^decontamination_template_rows: template_rows must be"),
    ],
)
def test_bad_recipe_keys_name_the_fix(keys, overrides, message):
    with pytest.raises(ValueError, match=message):
        recipe_from_dict({"output_dir": "out", **keys}, overrides)


def test_new_trainer_keys_reach_the_arguments():
    _, args = recipe_from_dict({"output_dir": "out", "max_length": 64, "dataset_text_field": "body"})
    assert (args.max_length, args.dataset_text_field) == (64, "body")
