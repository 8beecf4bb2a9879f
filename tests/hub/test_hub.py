"""Sharing selections: parquet shards + dataset card in a local folder (what a push uploads), pushes
through a stand-in for ``huggingface_hub.HfApi``, the ``select`` / ``push`` commands, and the budget
section of BudgetedTrainer's model card."""

import logging
from pathlib import Path

import numpy as np
import pytest
from datasets import load_dataset
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, DatasetCard, ModelCard

from hf_cads import BudgetedTrainer, BudgetedTrainingArguments, get_selector
from hf_cads.cli import main
from hf_cads.hub import DatasetReference, push_saved_selection, push_selection, save_selection
from hf_cads.testing import tiny_causal_lm

FAKE_TOKEN = "hf_" + "Q7x" * 12
BUDGET = 1e13


class FakeHubApi:
    """The five ``HfApi`` calls a push makes, on an in-memory dataset repository."""

    def __init__(self, root):
        self.root = Path(root)
        self.files: dict[str, bytes] = {}
        self.commits: list[list] = []

    def create_repo(self, repo_id, repo_type, private, exist_ok):
        assert repo_type == "dataset" and exist_ok
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def create_branch(self, *args, **kwargs):
        raise AssertionError("no revision was asked for")

    def list_repo_files(self, repo_id, repo_type, revision):
        return sorted(self.files)

    def hf_hub_download(self, repo_id, filename, repo_type, revision):
        path = self.root / f"download-{len(self.commits)}-{filename}"
        path.write_bytes(self.files[filename])
        return str(path)

    def create_commit(self, repo_id, operations, repo_type, revision, create_pr, commit_message):
        self.commits.append(list(operations))
        for operation in operations:
            if isinstance(operation, CommitOperationDelete):
                del self.files[operation.path_in_repo]
            else:
                source = operation.path_or_fileobj
                self.files[operation.path_in_repo] = source if isinstance(source, bytes) else Path(source).read_bytes()
        return type("CommitInfo", (), {"commit_url": f"https://hub.test/{repo_id}/commit/{len(self.commits)}"})()

    def checkout(self, folder):
        for path, content in self.files.items():
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            (folder / path).write_bytes(content)
        return folder


@pytest.fixture(scope="module")
def bm25_selection(small_pool, bbh_target):
    return get_selector("bm25", aggregate="max", show_progress=False).select(
        small_pool, target=bbh_target[0], fraction=0.1
    )


def reload(folder, config="default", tmp_path=None):
    return load_dataset(str(folder), config, split="train", cache_dir=str(Path(tmp_path or folder) / ".cache"))


def test_local_dir_reloads_rows_and_card(bm25_selection, small_pool, bbh_target, tmp_path):
    result, validation = bm25_selection, bbh_target[0]
    folder = push_selection(
        result, "me/bbh-bm25", parent=small_pool, target=validation, flop_budget=BUDGET, local_dir=tmp_path / "subset"
    )

    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "README.md",
        "data/train-00000-of-00001.parquet",
    ]
    rows = reload(folder, tmp_path=tmp_path)
    assert rows["pool_index"] == result.indices.tolist()
    assert np.allclose(rows["score"], result.scores)
    assert rows["text"] == small_pool.select(rows["pool_index"])["text"]
    assert rows.column_names == small_pool.column_names + ["score", "pool_index"]

    card = DatasetCard.load(folder / "README.md")
    assert {"hf-cads", "data-selection"} <= set(card.data.tags) and card.data.size_categories == ["n<1K"]
    (entry,) = card.data.hf_cads
    assert entry["selector"] == "bm25" and entry["selector_config"] == result.config and entry["seed"] == 42
    assert entry["parent"] == {
        "name": "in-memory dataset",
        "revision": None,
        "fingerprint": small_pool._fingerprint,
        "num_rows": len(small_pool),
    }
    assert entry["target"]["fingerprint"] == validation._fingerprint and entry["target"]["num_rows"] == len(validation)
    assert (entry["k"], entry["pool_size"]) == (len(result), len(small_pool))
    assert entry["fraction"] == pytest.approx(len(result) / len(small_pool))
    assert entry["flops"]["selection"] == pytest.approx(result.flops) and result.flops > 0
    assert entry["flops"]["planned_training"] == pytest.approx(BUDGET - result.flops)
    assert entry["flops"]["budget"] == BUDGET
    assert entry["hf_cads_version"] == __import__("hf_cads").__version__
    histogram = entry["scores"]["histogram"]
    assert sum(histogram["all"]) == len(small_pool) and sum(histogram["kept"]) == len(result)
    text = card.text
    assert 'load_dataset("me/bbh-bm25", "default", split="train")' in text
    assert f"{len(result)} of {len(small_pool)} parent rows" in text and "kept / all" in text and "█" in text
    assert result.extras["hub"] == {
        "repo_id": "me/bbh-bm25",
        "config_name": "default",
        "local_dir": str(folder),
        "pushed": False,
    }


def test_configs_accumulate_and_overwrite_needs_consent(bm25_selection, small_pool, bbh_target, tmp_path):
    folder = tmp_path / "subsets"
    save_selection(bm25_selection, folder, parent=small_pool, target=bbh_target[0])
    randomly = get_selector("random", seed=3, show_progress=False).select(small_pool, k=7)
    save_selection(randomly, folder, parent=DatasetReference("org/pool", revision="abc123"), config_name="random-7")

    assert reload(folder, "random-7", tmp_path)["pool_index"] == randomly.indices.tolist()
    assert reload(folder, "default", tmp_path)["pool_index"] == bm25_selection.indices.tolist()
    card = DatasetCard.load(folder / "README.md")
    assert [e["config_name"] for e in card.data.hf_cads] == ["default", "random-7"]
    assert card.data.hf_cads[1]["parent"]["revision"] == "abc123" and card.data.hf_cads[1]["target"] is None
    assert "org/pool @ revision abc123" in card.text and "none (untargeted selector)" in card.text

    with pytest.raises(FileExistsError, match=r"already has config\(s\) \['random-7'\].*overwrite=True"):
        save_selection(bm25_selection, folder, parent=small_pool, config_name="random-7")
    save_selection(bm25_selection, folder, parent=small_pool, config_name="random-7", overwrite=True)
    assert reload(folder, "random-7", tmp_path)["pool_index"] == bm25_selection.indices.tolist()
    assert len(DatasetCard.load(folder / "README.md").data.hf_cads) == 2

    with pytest.raises(ValueError, match="pool of 190 rows"):
        save_selection(bm25_selection, tmp_path / "other", parent=small_pool.select(range(10)))
    with pytest.raises(ValueError, match="config_name must be"):
        save_selection(bm25_selection, tmp_path / "other", parent=small_pool, config_name="a b")


def test_push_uploads_exactly_the_local_dir_and_never_the_token(
    bm25_selection, small_pool, bbh_target, tmp_path, caplog
):
    result, validation = bm25_selection, bbh_target[0]
    result.extras["auth_token"] = FAKE_TOKEN  # a selector that kept a secret must not leak it
    try:
        local = save_selection(
            result, tmp_path / "local", parent=small_pool, target=validation, repo_id="me/subset", flop_budget=BUDGET
        )
        api = FakeHubApi(tmp_path)
        with caplog.at_level(logging.DEBUG):
            commit = push_selection(
                result,
                "me/subset",
                parent=small_pool,
                target=validation,
                flop_budget=BUDGET,
                token=FAKE_TOKEN,
                api=api,
            )
    finally:
        del result.extras["auth_token"]
    assert commit.commit_url.endswith("/1")
    assert sorted(api.files) == ["README.md", "data/train-00000-of-00001.parquet"]
    assert api.files["README.md"] == (local / "README.md").read_bytes()
    assert "<redacted>" in api.files["README.md"].decode()
    assert FAKE_TOKEN not in api.files["README.md"].decode() and FAKE_TOKEN not in caplog.text
    assert reload(api.checkout(tmp_path / "hub"), tmp_path=tmp_path)["pool_index"] == result.indices.tolist()
    assert result.extras["hub"]["pushed"] and result.extras["hub"]["repo_id"] == "me/subset"

    # A second config joins the repository; the first one is refused unless overwrite=True.
    other = get_selector("random", seed=1, show_progress=False).select(small_pool, k=5)
    push_selection(other, "me/subset", parent=small_pool, config_name="random-5", api=api)
    assert [
        e["config_name"] for e in DatasetCard.load(api.checkout(tmp_path / "hub2") / "README.md").data.hf_cads
    ] == ["default", "random-5"]
    with pytest.raises(FileExistsError, match=r"me/subset already has config\(s\) \['default'\]"):
        push_selection(other, "me/subset", parent=small_pool, api=api)
    api.files["data/train-00001-of-00002.parquet"] = b"stale shard of an earlier upload"
    push_selection(other, "me/subset", parent=small_pool, api=api, overwrite=True)
    assert any(
        isinstance(op, CommitOperationDelete) and op.path_in_repo == "data/train-00001-of-00002.parquet"
        for op in api.commits[-1]
    )
    assert reload(api.checkout(tmp_path / "hub3"), tmp_path=tmp_path)["pool_index"] == other.indices.tolist()
    assert sum(isinstance(op, CommitOperationAdd) for op in api.commits[-1]) == 2


def test_real_hub_client_fails_cleanly_offline(bm25_selection, small_pool, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    folder = save_selection(bm25_selection, tmp_path / "s", parent=small_pool)
    with pytest.raises(OSError, match="offline mode is enabled") as error:
        push_saved_selection(folder, "me/subset", token=FAKE_TOKEN)  # the real HfApi client
    assert FAKE_TOKEN not in str(error.value)
    with pytest.raises(FileNotFoundError, match="hf-cads select --local-dir"):
        push_saved_selection(tmp_path, "me/subset", api=FakeHubApi(tmp_path))


def test_select_and_push_commands(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    folder = tmp_path / "selection"
    code = main(
        [
            "select",
            "--local-dir",
            str(folder),
            "--repo-id",
            "me/qs",
            "--max_per_source",
            "30",
            "--output_dir",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert "hf-cads select: kept" in capsys.readouterr().out
    (entry,) = DatasetCard.load(folder / "README.md").data.hf_cads
    assert entry["selector"] == "bm25" and entry["selector_config"]["aggregate"] == "max"
    assert entry["flops"]["budget"] == 1.2e13 and entry["parent"]["name"].startswith(
        "hf_cads shared pool [gsm8k, code_alpaca"
    )
    assert entry["target"]["name"] == "BBH boolean_expressions validation set (chain-of-thought exemplars)"
    assert len(reload(folder, tmp_path=tmp_path)) == entry["k"]

    assert (
        main(["select", "--local-dir", str(folder), "--max_per_source", "30", "--output_dir", str(tmp_path / "out")])
        == 2
    )
    assert "overwrite=True" in capsys.readouterr().err
    assert main(["push", str(folder), "me/qs"]) == 2
    error = capsys.readouterr().err
    assert "hf-cads push: error:" in error and FAKE_TOKEN not in error


def test_model_card_gets_the_budget_section(small_pool, bbh_target, tokenizer, tmp_path):
    args = BudgetedTrainingArguments(
        output_dir=str(tmp_path / "model"),
        flop_budget=3e9,
        selector="bm25",
        selection_fraction=0.1,
        per_device_train_batch_size=4,
        max_length=48,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
    )
    from peft import LoraConfig

    trainer = BudgetedTrainer(
        model=tiny_causal_lm(tokenizer),
        args=args,
        train_dataset=small_pool,
        processing_class=tokenizer,
        selection_target=bbh_target[0],
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
    )
    trainer.train()
    card_path = tmp_path / "model" / "README.md"
    trainer.create_model_card()
    assert "not pushed to the Hub" in card_path.read_text()

    push_selection(
        trainer.selection_result, "me/subset", parent=small_pool, ledger=trainer.flop_ledger, api=FakeHubApi(tmp_path)
    )
    trainer.create_model_card()
    trainer.create_model_card()  # replaces its section, does not stack a second one
    card = ModelCard.load(card_path)
    assert card.text.count("## Compute budget (hf_cads)") == 1
    assert "[me/subset](https://huggingface.co/datasets/me/subset)" in card.text
    assert (
        "- data selector: `bm25`" in card.text and f"optimizer steps taken: {trainer.state.global_step}" in card.text
    )
    assert {"hf-cads", "budgeted-finetuning"} <= set(card.data.tags) and card.data.datasets == ["me/subset"]
    assert card.data.hf_cads["ledger"] == pytest.approx(trainer.flop_ledger.breakdown())
    assert card.data.hf_cads["k"] == len(trainer.selection_result)
    total = f"| **total** | {trainer.flop_ledger.spent:.4g} |"
    assert total in card.text
