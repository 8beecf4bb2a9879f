"""Several targets on one pool: `hf-cads select --targets`, select_for_targets, and the planner's
amortisation of a measured selection split over --targets."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from datasets import Dataset, concatenate_datasets, load_dataset
from huggingface_hub import DatasetCard

from hf_cads import FlopLedger, get_selector, select_for_targets
from hf_cads.cli import main
from hf_cads.data import load_bbh_examples
from hf_cads.planner import make_plan
from hf_cads.planner.recommend import affordable_k, amortised_selection_flops
from hf_cads.records import RunRecord, append_record, read_records
from hf_cads.selectors.within_budget import PER_TARGET, SCORED_ONCE
from hf_cads.testing import tiny_causal_lm

ROOT = Path(__file__).resolve().parents[2]
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LESS_OPTIONS = dict(
    projection_dim=256,
    max_length=64,
    warmup_fraction=0.2,
    warmup_epochs=2,
    learning_rate=1e-3,
    lora_r=8,
    lora_target_modules=ALL_LINEAR,
    show_progress=False,
    shard_size=48,
)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def task_files(small_pool, data_dir, tmp_path_factory):
    """A real 120-row pool file (dyck_languages, boolean_expressions, GSM8K, Code Alpaca rows) and
    two 10-row target files of held-out dyck_languages and boolean_expressions examples."""
    folder = tmp_path_factory.mktemp("multi_target_data")
    dyck, boolean = load_bbh_examples("dyck_languages", data_dir), load_bbh_examples("boolean_expressions", data_dir)
    parts = [
        dyck.select(range(30)),
        boolean.select(range(30)),
        small_pool.filter(lambda r: r["source"] == "gsm8k").select(range(30)),
        small_pool.filter(lambda r: r["source"] == "code_alpaca").select(range(30)),
    ]
    texts = concatenate_datasets([part.select_columns(["text"]) for part in parts]).shuffle(seed=0)["text"]
    pool = write_jsonl(folder / "pool.jsonl", [{"text": text} for text in texts])
    targets = {
        name: write_jsonl(folder / f"{name}.jsonl", [{"text": t} for t in rows.select(range(200, 210))["text"]])
        for name, rows in (("dyck", dyck), ("boolean", boolean))
    }
    return pool, targets


def write_recipe(tmp_path, model_dir, **options):
    recipe = yaml.safe_load((ROOT / "hf_cads" / "recipes" / "quickstart.yaml").read_text())
    for key in ("pool_sources", "max_per_source", "max_pool_chars", "selection_fraction", "selector_kwargs"):
        recipe.pop(key)
    recipe.update(
        model_name_or_path=str(model_dir),
        output_dir=str(tmp_path / "out"),
        eval_examples=4,
        max_length=64,
        selector="less",
        selector_kwargs=LESS_OPTIONS,
        selection_k=12,
        decontaminate="off",
        flop_budget=1e13,
    )
    recipe.update(options)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def card_entry(folder):
    (entry,) = DatasetCard.load(Path(folder) / "README.md").data.hf_cads
    return entry


def test_less_selects_for_two_targets_in_one_pass(tmp_path, tiny_model_dir, task_files, capsys):
    pool, targets = task_files
    recipe = write_recipe(tmp_path, tiny_model_dir)
    out = tmp_path / "subsets"
    assert (
        main(
            [
                "select",
                str(recipe),
                "--local-dir",
                str(out),
                "--pool",
                str(pool),
                "--targets",
                str(targets["dyck"]),
                str(targets["boolean"]),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "less for 2 targets in one pass" in printed
    assert (
        "pool features" in printed
        and "(paid once, here)" in printed
        and "shared with dyck, not charged again" in printed
    )
    first, second = card_entry(out / "dyck"), card_entry(out / "boolean")
    pool_part = first["extras"]["flops_split"]["pool"]
    # the pool features are charged once: the second target pays its own gradients only
    assert second["flops"]["selection"] <= 0.1 * pool_part
    assert second["flops"]["selection"] == pytest.approx(second["extras"]["flops_split"]["target"], rel=1e-9)
    assert second["extras"]["flops_split"]["pool"] == pytest.approx(pool_part, rel=1e-9)
    assert first["flops"]["selection"] == pytest.approx(pool_part + first["extras"]["flops_split"]["target"], rel=1e-9)
    assert f"{first['flops']['selection'] + second['flops']['selection']:.4g} FLOPs charged for 2 targets" in printed
    # the same subsets as one `hf-cads select --target` per target (each paying for the pool features)
    for name in ("dyck", "boolean"):
        single = tmp_path / f"single-{name}"
        assert (
            main(
                [
                    "select",
                    str(recipe),
                    "--local-dir",
                    str(single),
                    "--pool",
                    str(pool),
                    "--target",
                    str(targets[name]),
                ]
            )
            == 0
        )
        multi = load_dataset(str(out / name), "default", split="train")
        alone = load_dataset(str(single), "default", split="train")
        assert len(multi) == 12 and multi["pool_index"] == alone["pool_index"], name
        entry = card_entry(single)
        assert entry["extras"]["flops_split"] == pytest.approx(
            card_entry(out / name)["extras"]["flops_split"], rel=1e-9
        )
        assert entry["flops"]["selection"] == pytest.approx(
            pool_part + entry["extras"]["flops_split"]["target"], rel=1e-9
        )
    rows = load_dataset("json", data_files=str(pool), split="train")["text"]
    dyck_share = [
        np.mean(
            ["parentheses" in rows[i] for i in load_dataset(str(out / name), "default", split="train")["pool_index"]]
        )
        for name in ("dyck", "boolean")
    ]
    assert dyck_share[0] > dyck_share[1]


def test_bad_target_lists_name_the_fix(tmp_path, tiny_model_dir, task_files, capsys):
    pool, targets = task_files
    recipe = write_recipe(tmp_path, tiny_model_dir)
    base = ["select", str(recipe), "--local-dir", str(tmp_path / "x"), "--pool", str(pool)]
    cases = [
        (["--targets", str(targets["dyck"]), str(targets["dyck"])], "twice; list each target once"),
        (
            ["--targets", "boolean_expressions", "bbh/boolean_expressions"],
            "twice (as 'boolean_expressions' and 'bbh/boolean_expressions')",
        ),
        (["--targets", "dyck_langauges"], "nor a built-in target"),
        (["--targets", str(tmp_path / "missing.jsonl")], "does not exist"),
        (["--targets", str(targets["dyck"]), "--target", str(targets["boolean"])], "not both"),
        (["--targets", str(targets["dyck"]), "--repo-id", "me/subset"], "{target}"),
    ]
    for extra, message in cases:
        assert main(base + extra) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert not (tmp_path / "x").exists()


def test_per_target_and_scored_once_paths(small_pool, bbh_target, data_dir, tokenizer):
    pool = small_pool.select(range(0, len(small_pool), 3))
    targets = {"boolean": bbh_target[0], "dyck": load_bbh_examples("dyck_languages", data_dir).select(range(8))}
    # bm25 has no multi-target path: one selection per target, each equal to select() alone
    bm25 = get_selector("bm25", seed=0, show_progress=False)
    chosen = select_for_targets(bm25, pool, targets, FlopLedger(budget=1e12), k=10)
    assert chosen.path == PER_TARGET and chosen.score_cache is None
    for name, target in targets.items():
        assert chosen.results[name].indices.tolist() == bm25.select(pool, target=target, k=10).indices.tolist()
    # perplexity ignores the target: scored once, the other target reads the scores from the score cache
    perplexity = get_selector(
        "perplexity", model=tiny_causal_lm(tokenizer), tokenizer=tokenizer, max_length=64, show_progress=False
    )
    ledger = FlopLedger(budget=1e13)
    chosen = select_for_targets(perplexity, pool, targets, ledger, k=10)
    first, second = chosen.charges["boolean"], chosen.charges["dyck"]
    assert chosen.path == SCORED_ONCE and chosen.score_cache_temporary and perplexity.config.cache_dir is None
    assert first.flops > 0 and second.flops == 0 and second.cache_hit and second.cost == pytest.approx(first.flops)
    assert ledger.entries["selection"] == pytest.approx(first.flops)
    assert chosen.results["dyck"].indices.tolist() == chosen.results["boolean"].indices.tolist()


def test_the_budget_check_counts_every_target(task_files, tokenizer):
    pool_file, targets = task_files
    pool = load_dataset("json", data_files=str(pool_file), split="train")
    named = {name: load_dataset("json", data_files=str(path), split="train") for name, path in targets.items()}
    less = get_selector("less", model=tiny_causal_lm(tokenizer), tokenizer=tokenizer, **LESS_OPTIONS)
    splits = {name: less.estimate_flops_split(pool, target) for name, target in named.items()}
    assert (
        splits["dyck"]["pool"] == pytest.approx(splits["boolean"]["pool"])
        and splits["dyck"]["pool"] > 5 * splits["dyck"]["target"]
    )
    total = splits["dyck"]["pool"] + splits["dyck"]["target"] + splits["boolean"]["target"]
    assert less.estimate_flops(pool, named["dyck"]) == pytest.approx(splits["dyck"]["pool"] + splits["dyck"]["target"])
    # enough for one target's selection, not for both: refused before any work
    budget = splits["dyck"]["pool"] + splits["dyck"]["target"] + 0.5 * splits["boolean"]["target"]
    less.warmup = lambda *args, **kwargs: pytest.fail(
        "the warmup started although the budget cannot pay for both targets"
    )
    with pytest.raises(
        ValueError, match=re.escape(f"for 2 targets on this pool ({total:.4g} FLOPs: pool features ") + ".* once"
    ):
        select_for_targets(less, pool, named, FlopLedger(budget=budget), k=5)


# -- the planner -------------------------------------------------------------------------------
def split_records(pool_flops=8e12, target_flops=1e12, with_split=True):
    """LESS and BM25 runs at four sizes on a known curve; LESS's records carry a measured split."""
    records = []
    for selector, selection, split in (("less", pool_flops + target_flops, with_split), ("bm25", 1e8, False)):
        for k in (50, 100, 200, 400):
            train = 1e11 * k
            loss = 2.0 - 0.5 * (1 - np.exp(-3 * (train + selection) / 1e14)) - (0.1 if selector == "less" else 0.0)
            records.append(
                RunRecord(
                    selector=selector,
                    selector_config={},
                    model="m",
                    model_params=1000,
                    selection_model_params=100 if selector == "less" else 0,
                    pool_size=1000,
                    k=k,
                    tokens_trained=100 * k,
                    selection_flops=selection,
                    train_flops=train,
                    metrics={"target_loss": float(loss)},
                    baseline_metrics={"target_loss": 2.0},
                    seed=0,
                    target="t",
                    selection_split={"pool": pool_flops, "target": target_flops} if split else None,
                )
            )
    return records


def test_planner_amortises_the_measured_pool_part_over_targets(tmp_path, capsys):
    path = tmp_path / "runs.jsonl"
    for record in split_records():
        append_record(path, record)
    records = read_records(path)
    assert records[0].selection_split == {"pool": 8e12, "target": 1e12}
    budget, targets = 4e13, 4
    plan = make_plan(records, budget=budget, targets=targets)
    less, bm25 = plan.fits["less"], plan.fits["bm25"]
    assert less.selection_pool_flops == 8e12 and less.split_runs == 4 and bm25.selection_pool_flops is None
    options = {o.label: o for o in plan.recommendation.options}
    assert options["less"].selection_flops == pytest.approx(8e12 / targets + 1e12, rel=1e-12)  # pool / T + target
    assert options["bm25"].selection_flops == pytest.approx(1e8 / targets, rel=1e-12)  # no split: the old rule
    assert options["less"].k == affordable_k(less, budget, 9e12, targets) == int((budget - 3e12) // 1e11)
    assert amortised_selection_flops(less, 18e12, 3) == pytest.approx(
        16e12 / 3 + 2e12
    )  # an override keeps the measured share
    report = plan.format()
    assert "pool / 4 + target" in report and "measured split" in report and "no split: C_select / T" in report
    assert plan.to_dict()["selection_per_target"]["less"]["per_target"] == pytest.approx(3e12)
    # a family where one run lacks the split falls back to C_select / T, and says so
    mixed = split_records()
    mixed[0].selection_split = None
    plan = make_plan(mixed, budget=budget, targets=targets)
    assert {o.label: o for o in plan.recommendation.options}["less"].selection_flops == pytest.approx(9e12 / targets)
    assert "(3 of 4 runs have one)" in plan.format()
    assert main(["plan", str(path), "--budget", str(budget), "--targets", "4", "--plot", str(tmp_path / "p.png")]) == 0
    assert "measured split" in capsys.readouterr().out
    with pytest.raises(ValueError, match="selection_split must be"):
        RunRecord.from_dict({**records[0].to_dict(), "selection_split": {"pool": 1.0}})


# -- one pool for several targets --------------------------------------------------------------
def test_the_shared_pool_leaves_out_every_target_task(data_dir):
    from hf_cads.data import load_targets_data, load_task_data

    boolean, dyck = load_targets_data(
        ["boolean_expressions", "bbh/dyck_languages"], data_dir=data_dir, max_per_source=40, seed=0
    )
    assert boolean.pool is dyck.pool and "dyck_languages" in dyck.descriptions["target"]
    assert not {"boolean_expressions", "dyck_languages"} & set(boolean.pool["subtask"])
    alone = load_task_data("boolean_expressions", data_dir=data_dir, max_per_source=40, seed=0)
    assert "dyck_languages" in set(alone.pool["subtask"]) and "boolean_expressions" not in set(alone.pool["subtask"])
    assert alone.validation["text"] == boolean.validation["text"] and alone.test["text"] == boolean.test["text"]


def test_pool_rows_overlapping_any_targets_test_rows_are_dropped():
    from hf_cads.commands.select import decontaminate_targets
    from hf_cads.data import TaskData
    from hf_cads.pipeline import RunConfig

    sentence = "the quick brown fox number {} jumps over the lazy dog while the farmer counts {} sheep in the field"
    rows = lambda numbers: Dataset.from_dict({"text": [sentence.format(n, n) for n in numbers]})  # noqa: E731
    pool = rows(range(10))
    tasks = {"a": TaskData(rows([100, 101]), rows([3]), pool), "b": TaskData(rows([200]), rows([7, 300]), pool)}
    validations, kept, found = decontaminate_targets(RunConfig(decontaminate="drop"), tasks)
    assert kept["text"] == [sentence.format(n, n) for n in (0, 1, 2, 4, 5, 6, 8, 9)]
    summary = found["b"].summary()
    assert summary["pool_rows_dropped"] == 2 and [e["test_set"] for e in summary["examples"]] == ["a eval", "b eval"]
    assert found["a"].kept_pool_rows == [0, 1, 2, 4, 5, 6, 8, 9] and len(validations["a"]) == 2
    validations, same, found = decontaminate_targets(RunConfig(decontaminate="report"), tasks)
    assert (
        same is pool
        and found["a"].summary()["pool_rows_overlapping"] == 2
        and found["a"].summary()["pool_rows_dropped"] == 0
    )
