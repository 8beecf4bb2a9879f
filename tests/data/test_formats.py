"""Formats people have: ShareGPT conversations, preference pairs, and the pool's own ``source`` column
kept through formatting into the selection's composition, the run report and the dataset card."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml
from datasets import Dataset

from hf_cads.commands import main
from hf_cads.data import get_texts, load_examples, source_composition, standardise

QUICKSTART = Path(__file__).resolve().parents[2] / "hf_cads" / "recipes" / "quickstart.yaml"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def sharegpt_row(i):
    return {
        "conversations": [
            {"from": "system", "value": "Answer with a number."},
            {"from": "human", "value": f"What is {i} + {i}?"},
            {"from": "gpt", "value": str(2 * i)},
            {"from": "human", "value": "And times two?"},
            {"from": "gpt", "value": str(4 * i)},
        ]
    }


def test_sharegpt_conversations_become_messages_with_one_log_line(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="hf_cads.data")
    path = write_jsonl(tmp_path / "chats.jsonl", [sharegpt_row(i) for i in range(3)])
    rows, fmt = load_examples(str(path), "pool")
    assert fmt == "messages" and rows.column_names == ["messages"]
    assert [m["role"] for m in rows[1]["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert rows[1]["messages"][2] == {"role": "assistant", "content": "2"}
    assert get_texts(rows)[1].endswith("assistant: 4")
    converted = [r for r in caplog.records if "ShareGPT" in r.getMessage()]
    assert len(converted) == 1 and "pool dataset" in converted[0].getMessage()
    tool = {
        "conversations": [
            {"from": "human", "value": "x"},
            {"from": "tool", "value": "y"},
            {"from": "gpt", "value": "z"},
        ]
    }
    assert [m["role"] for m in standardise(Dataset.from_list([tool]), None, None, "pool")[0][0]["messages"]] == [
        "user",
        "tool",
        "assistant",
    ]


def test_unknown_sharegpt_speaker_is_one_line_naming_the_roles():
    rows = Dataset.from_list([{"conversations": [{"from": "bot", "value": "hi"}]}])
    with pytest.raises(ValueError, match=r"Row 0 of the pool dataset has a ShareGPT turn from 'bot'; use one of"):
        standardise(rows, None, None, "pool")


def test_preference_pairs_train_on_prompt_and_chosen(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="hf_cads.data")
    explicit = write_jsonl(
        tmp_path / "pairs.jsonl",
        [{"prompt": "Q: 2+2?\nA:", "chosen": " 4", "rejected": " 5", "score": 1.0}],
    )
    rows, fmt = load_examples(str(explicit), "pool")
    assert fmt == "prompt-completion" and rows.column_names == ["prompt", "completion"]
    assert rows[0] == {"prompt": "Q: 2+2?\nA:", "completion": " 4"}
    assert any(
        "preference pairs" in r.getMessage() and "rejected is dropped" in r.getMessage() for r in caplog.records
    )
    user = {"role": "user", "content": "2+2?"}
    implicit = Dataset.from_list(
        [
            {
                "chosen": [user, {"role": "assistant", "content": "4"}],
                "rejected": [user, {"role": "assistant", "content": "5"}],
            }
        ]
    )
    rows, fmt = standardise(implicit, None, None, "pool")
    assert fmt == "prompt-completion"
    assert rows[0]["prompt"] == [user] and rows[0]["completion"] == [{"role": "assistant", "content": "4"}]
    assert get_texts(rows) == ["user: 2+2?\nassistant: 4\n"]
    mapped = Dataset.from_list([{"question": "2+2?", "good": "4", "bad": "5"}])
    rows, _ = standardise(mapped, "preference", {"prompt": "question", "chosen": "good", "rejected": "bad"}, "pool")
    assert rows[0] == {"prompt": "2+2?", "completion": "4"}
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['bad'\] for format 'preference'"):
        standardise(mapped.remove_columns("bad"), "preference", {"chosen": "good", "rejected": "bad"}, "pool")


def test_the_source_column_is_kept_or_mapped_and_checked():
    rows = Dataset.from_list(
        [
            {"instruction": "Add.", "output": "2", "origin": "math"},
            {"instruction": "Hi.", "output": "Hey", "origin": "chat"},
        ]
    )
    kept, _ = standardise(rows.rename_column("origin", "source"), None, None, "pool")
    assert sorted(kept.column_names) == ["completion", "prompt", "source"] and kept["source"] == ["math", "chat"]
    mapped, _ = standardise(rows, None, {"source": "origin"}, "pool")
    assert source_composition(mapped) == {"chat": 1, "math": 1}
    chats = Dataset.from_list([dict(sharegpt_row(1), source="web")])
    assert standardise(chats, None, None, "pool")[0].column_names == ["messages", "source"]
    assert source_composition(rows) == {}
    with pytest.raises(ValueError, match="has no column 'where' for columns: {source: where}"):
        standardise(rows, None, {"source": "where"}, "pool")
    with pytest.raises(ValueError, match="Column 'source' of the pool dataset must hold strings"):
        standardise(Dataset.from_list([{"text": "a", "source": 3}]), None, None, "pool")


def chat_rows_with_sources(n):
    """Chats from three named sources (long enough to tokenise into a few steps)."""
    names = ("forum", "manual", "wiki")
    return [
        {
            "messages": [
                {"role": "user", "content": f"Question {i}: is the statement number {i} true or false?"},
                {"role": "assistant", "content": "True" if i % 2 else "False"},
            ],
            "source": names[i % 3],
        }
        for i in range(n)
    ]


def write_recipe(tmp_path, model_dir, **options):
    recipe = yaml.safe_load(QUICKSTART.read_text())
    for key in ("pool_sources", "max_per_source", "max_pool_chars"):
        recipe.pop(key, None)
    recipe.update(
        model_name_or_path=str(model_dir),
        output_dir=str(tmp_path / "out"),
        flop_budget=2e10,
        eval_examples=4,
        max_length=64,
        selection_fraction=0.5,
        decontaminate="off",
        **options,
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_the_pool_sources_reach_the_report_and_the_dataset_card(tmp_path, tiny_model_dir, capsys):
    pool = write_jsonl(tmp_path / "pool.jsonl", chat_rows_with_sources(30))
    target = write_jsonl(tmp_path / "target.jsonl", chat_rows_with_sources(12))
    recipe = write_recipe(tmp_path, tiny_model_dir, pool=str(pool), target=str(target))
    assert main(["select", str(recipe), "--local-dir", str(tmp_path / "subset")]) == 0
    assert "hf-cads select: kept 15 of 30 rows with bm25 {'forum': " in capsys.readouterr().out
    card = (tmp_path / "subset" / "README.md").read_text()
    row = next(line for line in card.splitlines() if line.startswith("| rows kept per source"))
    counts = dict(part.split(": ") for part in row.split("|")[2].strip().split(", "))
    assert set(counts) <= {"forum", "manual", "wiki"} and sum(map(int, counts.values())) == 15
    assert main(["run", str(recipe)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    sources = report["selected_sources"]
    assert set(sources) <= {"forum", "manual", "wiki"} and sum(sources.values()) == report["k"] == 15
    assert f"selected {report['k']}  {sources}" in printed
