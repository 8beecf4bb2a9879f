"""Your own data: sources, formats, completion-only labels and decontamination in selection runs."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from datasets import Dataset

from hf_cads.cli import main
from hf_cads.data import example_segments, load_examples
from hf_cads.trainer.tokenization import tokenize_for_causal_lm

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "hf_cads" / "recipes" / "quickstart.yaml"
WORDS = ["true", "false", "not", "and", "or"]


def question(i):
    """A boolean-expression question of 14+ words (long enough for 13-gram decontamination)."""
    terms = [WORDS[(i * 7 + j * 3) % 5] for j in range(6)]
    return f"Evaluate the result of a random Boolean expression number {i} : " + " ".join(terms) + " is"


def chat_rows(n, start=0):
    return [
        {
            "messages": [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": question(i)},
                {"role": "assistant", "content": "True" if i % 2 else "False"},
            ]
        }
        for i in range(start, start + n)
    ]


def prompt_completion_rows(n, start=0):
    return [
        {"prompt": f"Q: {question(i)}\nA:", "completion": " True" if i % 2 else " False"}
        for i in range(start, start + n)
    ]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def own_data(tmp_path):
    """A chat pool (JSONL) holding one eval question verbatim, a prompt-completion target (parquet)
    and an eval set (a saved dataset folder)."""
    pool_rows = chat_rows(40)
    contaminated = len(pool_rows)
    pool_rows.append(
        {"messages": [{"role": "user", "content": question(1000)}, {"role": "assistant", "content": "False"}]}
    )
    pool = write_jsonl(tmp_path / "pool.jsonl", pool_rows)
    target = tmp_path / "target.parquet"
    Dataset.from_list(prompt_completion_rows(12, start=500)).to_parquet(str(target))
    eval_dir = tmp_path / "eval_set"
    Dataset.from_list(prompt_completion_rows(6, start=1000)).save_to_disk(str(eval_dir))
    return pool, target, eval_dir, contaminated


def test_formats_are_detected_and_logged(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="hf_cads.data")
    pool, target, eval_dir, _ = own_data(tmp_path)
    chats, fmt = load_examples(str(pool), "pool")
    assert fmt == "messages" and chats.column_names == ["messages"] and len(chats) == 41
    assert "pool dataset: 41 rows, format 'messages' (detected from the columns)" in caplog.text
    pc, fmt = load_examples({"path": "parquet", "data_files": str(target), "split": "train"}, "target")
    assert fmt == "prompt-completion" and pc.column_names == ["prompt", "completion"]
    folder, fmt = load_examples(str(eval_dir), "eval")
    assert fmt == "prompt-completion" and len(folder) == 6
    alpaca = tmp_path / "alpaca.csv"
    alpaca.write_text("instruction,input,output\nAdd the numbers.,2 and 3,5\nName a colour.,,Red\n", encoding="utf-8")
    rows, fmt = load_examples(str(alpaca), "pool")
    assert fmt == "prompt-completion" and rows[0] == {"prompt": "Add the numbers.\n\n2 and 3\n", "completion": "5"}
    assert rows[1]["prompt"] == "Name a colour.\n"
    mapped = write_jsonl(tmp_path / "qa.jsonl", [{"question": "2+2?", "answer": "4", "id": 1}])
    rows, fmt = load_examples(
        {
            "path": str(mapped),
            "format": "prompt-completion",
            "columns": {"prompt": "question", "completion": "answer"},
        },
        "target",
    )
    assert (
        fmt == "prompt-completion" and rows.column_names == ["prompt", "completion"] and rows[0]["completion"] == "4"
    )
    text = write_jsonl(tmp_path / "text.jsonl", [{"text": "hello world", "meta": 3}])
    assert load_examples(str(text), "pool")[1] == "text"


def test_completion_only_labels_mask_prompt_system_user_and_padding(tokenizer):
    rows = Dataset.from_list(prompt_completion_rows(3) + [])
    encoded = tokenize_for_causal_lm(rows, tokenizer, 128)
    for row, features in zip(rows, encoded):
        labels, ids = features["labels"], features["input_ids"]
        assert len(labels) == len(ids) and labels[0] == -100
        trained = [t for t, label in zip(ids, labels) if label != -100]
        # what is trained on is the completion (and EOS), nothing of the prompt
        assert tokenizer.decode(trained[:-1]).strip() == row["completion"].strip()
        assert trained[-1] == tokenizer.eos_token_id
    whole = tokenize_for_causal_lm(rows, tokenizer, 128, train_on_prompt=True)
    assert all(f["labels"] == f["input_ids"] for f in whole)
    assert [f["input_ids"] for f in whole] == [f["input_ids"] for f in encoded]  # same tokens, same FLOPs
    chats = Dataset.from_list(chat_rows(2))
    segments = example_segments(chats[0])  # no tokenizer: ``role: content`` lines
    assert [flag for _, flag in segments] == [False, True] and segments[1][0].strip() == "False"
    assert segments[0][0].endswith("assistant: ") and "Answer briefly" in segments[0][0]
    chat_features = tokenize_for_causal_lm(chats, tokenizer, 128)[0]
    trained = [t for t, label in zip(chat_features["input_ids"], chat_features["labels"]) if label != -100]
    assert tokenizer.decode(trained, skip_special_tokens=True).strip() == "False"  # the template's end tokens too
    from hf_cads.trainer import CausalLMCollator

    batch = CausalLMCollator(tokenizer.pad_token_id)([dict(f) for f in encoded])
    assert ((batch["labels"] == -100) | (batch["attention_mask"] == 1)).all()  # padding never trained on
    # text data keeps its old tokenisation (whole sequence, no labels column)
    assert tokenize_for_causal_lm(Dataset.from_dict({"text": ["a b"]}), tokenizer, 16).column_names == ["input_ids"]


def test_chat_template_assistant_turns_are_the_only_labels():
    from hf_cads.models import load_tokenizer

    smol = load_tokenizer("smollm2-135m-instruct")
    row = {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
        ]
    }
    segments = example_segments(row, smol)
    assert "".join(t for t, _ in segments) == smol.apply_chat_template(row["messages"], tokenize=False)
    assert [t.replace("<|im_end|>", "").strip() for t, flag in segments if flag] == ["Hello!", "4"]
    features = tokenize_for_causal_lm(Dataset.from_list([row]), smol, 256)[0]
    trained = smol.decode([t for t, label in zip(features["input_ids"], features["labels"]) if label != -100])
    assert "Hello!" in trained and "4" in trained and "2+2?" not in trained and "Hi" not in trained


def write_recipe(tmp_path, model_dir, **options):
    recipe = yaml.safe_load((QUICKSTART).read_text())
    for key in ("pool_sources", "max_per_source", "max_pool_chars"):
        recipe.pop(key)
    recipe.update(
        model_name_or_path=str(model_dir),
        output_dir=str(tmp_path / "out"),
        flop_budget=2e10,
        eval_examples=6,
        max_length=96,
        logging_steps=2,
        selection_fraction=0.25,
    )
    recipe.update(options)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_run_on_own_files_drops_contaminated_pool_rows(tmp_path, tiny_model_dir, capsys):
    pool, target, eval_dir, contaminated = own_data(tmp_path)
    recipe = write_recipe(
        tmp_path,
        tiny_model_dir,
        pool={"path": "json", "data_files": str(pool), "split": "train"},
        target=str(target),
        eval=str(eval_dir),
    )
    assert main(["run", str(recipe)]) == 0
    printed = capsys.readouterr().out
    assert "1 pool rows overlap eval rows, 1 dropped" in printed
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["pool_size"] == 41 and report["formats"] == {
        "target": "prompt-completion",
        "eval": "prompt-completion",
        "pool": "messages",
    }
    assert report["decontamination"]["examples"][0]["pool_row"] == contaminated
    assert report["k"] == 10 and report["train_steps"] > 0 and report["ledger"]["total"] <= 2e10
    assert "exact_match_after" in report  # short completions: judged by exact match, prompted as trained
    record = json.loads((tmp_path / "out" / "runs.jsonl").read_text().splitlines()[-1])
    assert record["contaminated_dropped"] == 1 and record["pool_size"] == 41


def test_select_command_shorthands_card_and_original_pool_index(tmp_path, tiny_model_dir, capsys):
    pool, target, eval_dir, contaminated = own_data(tmp_path)
    recipe = write_recipe(tmp_path, tiny_model_dir)
    out = tmp_path / "subset"
    argv = [
        "select",
        str(recipe),
        "--local-dir",
        str(out),
        "--pool",
        str(pool),
        "--target",
        str(target),
        "--eval",
        str(eval_dir),
        "--selection_fraction",
        "0.5",
    ]
    assert main(argv) == 0
    assert "1 pool rows overlap the eval rows, 1 dropped" in capsys.readouterr().out
    from datasets import load_dataset

    subset = load_dataset(str(out), "default", split="train")
    originals = [json.loads(line) for line in pool.read_text().splitlines()]
    assert contaminated not in subset["pool_index"] and len(subset) == 20
    assert all(originals[i]["messages"] == m for i, m in zip(subset["pool_index"], subset["messages"]))
    card = (out / "README.md").read_text()
    assert "| parent rows overlapping eval rows (decontamination) | 1 dropped" in card
    assert f"parent row {contaminated} ~ eval row 0" in card
    # report-only: the row is listed but may be selected
    assert (
        main(
            [
                *argv[:3],
                str(tmp_path / "subset2"),
                *argv[4:],
                "--decontaminate",
                "report",
                "--selection_fraction",
                "1.0",
            ]
        )
        == 0
    )
    assert contaminated in load_dataset(str(tmp_path / "subset2"), "default", split="train")["pool_index"]


def test_prompt_only_scoring_changes_what_selectors_see(tmp_path, tiny_model_dir):
    from hf_cads.data import get_texts

    chats = Dataset.from_list(chat_rows(2))
    prompts = get_texts(chats, "prompt")
    assert all(p.endswith("assistant: ") and "Answer briefly" in p for p in prompts)  # up to the reply, without it
    pcs = Dataset.from_list(prompt_completion_rows(2))
    assert get_texts(pcs, "prompt") == pcs["prompt"] and get_texts(pcs) == [
        p + c for p, c in zip(pcs["prompt"], pcs["completion"])
    ]
    pool, target, eval_dir, _ = own_data(tmp_path)
    out = tmp_path / "subset"
    recipe = write_recipe(tmp_path, tiny_model_dir)
    assert (
        main(
            [
                "select",
                str(recipe),
                "--local-dir",
                str(out),
                "--pool",
                str(pool),
                "--target",
                str(target),
                "--selection_text",
                "prompt",
            ]
        )
        == 0
    )
    card = (out / "README.md").read_text()
    assert "text_column: prompt" in card and "target_text_column: prompt" in card


# -- bad input: one clear line naming the fix -----------------------------------------------------
def test_bad_sources_name_the_problem_and_the_fix(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist; check the path"):
        load_examples(str(tmp_path / "missing.jsonl"), "pool")
    with pytest.raises(FileNotFoundError, match="do not exist; check data_files"):
        load_examples({"path": "json", "data_files": str(tmp_path / "missing.jsonl")}, "pool")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConnectionError, match="from the Hub while offline.*pass a local file or folder"):
        load_examples("no-such-org/no-such-dataset:train", "target")
    from datasets import DatasetDict

    folder = tmp_path / "dd"
    DatasetDict(
        {"train": Dataset.from_list(prompt_completion_rows(2)), "test": Dataset.from_list(prompt_completion_rows(2))}
    ).save_to_disk(str(folder))
    with pytest.raises(ValueError, match=r"has no split 'validation'; its splits are \['train', 'test'\]"):
        load_examples({"path": str(folder), "split": "validation"}, "target")
    assert len(load_examples({"path": str(folder), "split": "test"}, "target")[0]) == 2
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"foo": "x", "bar": "y"}])
    with pytest.raises(
        ValueError, match=r"No recognisable format in columns \['foo', 'bar'\]; accepted formats: text.*messages"
    ):
        load_examples(str(odd), "pool")
    empty = tmp_path / "empty.parquet"
    Dataset.from_dict({"text": []}).to_parquet(str(empty))
    with pytest.raises(ValueError, match="empty after loading"):
        load_examples(str(empty), "pool")
    bad_role = write_jsonl(
        tmp_path / "role.jsonl",
        [{"messages": [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "yo"}]}],
    )
    with pytest.raises(
        ValueError, match="Row 0 of the pool dataset has a message with unknown role 'human'; use one of"
    ):
        load_examples(str(bad_role), "pool")
    no_reply = write_jsonl(tmp_path / "noreply.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(ValueError, match="Row 0 of the pool dataset has no assistant turn"):
        load_examples(str(no_reply), "pool")


def test_target_with_no_rows_left_after_decontamination(tmp_path, tiny_model_dir):
    from hf_cads.pipeline import decontaminate_run_data, load_run_data, parse_recipe

    pool, target, _, _ = own_data(tmp_path)
    recipe = write_recipe(
        tmp_path, tiny_model_dir, pool=str(pool), target=str(target), eval=str(target), eval_examples=32
    )
    run, args = parse_recipe(recipe)
    with pytest.raises(
        ValueError, match="No target row is left after decontamination.*Pass a target set distinct from eval"
    ):
        decontaminate_run_data(run, load_run_data(run, args.seed))
    run, args = parse_recipe(recipe, ["--decontaminate", "false"])
    assert run.decontaminate == "off" and decontaminate_run_data(run, load_run_data(run, args.seed))[2] is None


def test_presets_still_load_as_before(tmp_path):
    from hf_cads.pipeline import load_run_data, parse_recipe

    run, args = parse_recipe(QUICKSTART, ["--max_per_source", "20", "--target", "bbh/boolean_expressions"])
    data = load_run_data(run, args.seed)
    assert data.presets and len(data.validation) == 3 and len(data.test) == 32 and "text" in data.pool.column_names
    assert set(data.pool["source"]) == {"gsm8k", "code_alpaca", "alpaca_seed", "bbh"}


@pytest.mark.slow
def test_run_own_chat_pool_and_prompt_completion_target_on_smollm2(tmp_path):
    pool, target, eval_dir, _ = own_data(tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hf_cads.cli",
            "run",
            str(QUICKSTART),
            "--pool",
            str(pool),
            "--target",
            str(target),
            "--eval",
            str(eval_dir),
            "--output_dir",
            str(tmp_path / "out"),
            "--flop_budget",
            "2e12",
            "--eval_examples",
            "6",
            "--selection_fraction",
            "0.5",
            "--max_length",
            "128",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["decontamination"]["pool_rows_dropped"] == 1 and report["k"] == 20
    assert report["train_steps"] > 0 and report["ledger"]["total"] <= 2e12
    assert report["target_loss_after"] < report["target_loss_before"]


def test_completion_only_target_loss_matches_the_models_own_loss(tokenizer, tiny_lm):
    import torch

    from hf_cads.selectors.scoring import CausalLMScorer

    encoded = tokenize_for_causal_lm(Dataset.from_list(prompt_completion_rows(3)), tokenizer, 128)
    scorer = CausalLMScorer(tiny_lm, tokenizer, batch_size=2, show_progress=False)
    masked, flops = scorer.losses(None, token_ids=encoded["input_ids"], labels=encoded["labels"])
    whole, whole_flops = scorer.losses(None, token_ids=encoded["input_ids"])
    assert flops == whole_flops and not (abs(masked - whole) < 1e-6).all()
    with torch.no_grad():
        for row, features in enumerate(encoded):
            expected = tiny_lm(
                input_ids=torch.tensor([features["input_ids"]]), labels=torch.tensor([features["labels"]])
            ).loss.item()
            assert abs(masked[row] - expected) <= 1e-4 * max(1.0, abs(expected))


def test_exact_match_prompts_of_chat_rows_end_with_the_generation_prompt(tokenizer):
    from datasets import Dataset

    from hf_cads.data import prompt_answer_pairs

    chat = Dataset.from_dict(
        {
            "messages": [
                [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "2+2?"},
                    {"role": "assistant", "content": " 4 "},
                ]
            ]
        }
    )
    prompts, answers = prompt_answer_pairs(chat, tokenizer)
    expected = tokenizer.apply_chat_template(chat[0]["messages"][:2], tokenize=False, add_generation_prompt=True)
    assert prompts == [expected] and expected.endswith("<|assistant|>") and answers == ["4"]
