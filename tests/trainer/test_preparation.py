"""The preparation both budgeted trainers share, and where they put the model (no hard-coded device)."""

import re
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import TrainingArguments

import hf_cads.trainer.sft as sft_module
import hf_cads.trainer.trainer as trainer_module
from hf_cads import BudgetedSFTConfig, BudgetedSFTTrainer, BudgetedTrainer, BudgetedTrainingArguments
from hf_cads.flops import FlopProfile
from hf_cads.testing import tiny_causal_lm, tiny_tokenizer
from hf_cads.trainer.preparation import model_loading_options

TEXTS = ["the cat sat on the mat", "a dog ran in the park", "one two three four five"] * 4
TRAINER_CODE = Path(trainer_module.__file__).parent


@pytest.fixture(scope="module")
def small_tokenizer():
    return tiny_tokenizer(TEXTS, vocab_size=300)


def common(tmp_path, **overrides):
    options = dict(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, use_cpu=True, report_to="none"
    )
    options.update(overrides)
    return options


def test_both_trainers_call_the_one_preparation_function(tmp_path, small_tokenizer, monkeypatch):
    calls = []
    original = trainer_module.prepare_model

    def spy(*args, **kwargs):
        calls.append(kwargs["add_adapter"] if "add_adapter" in kwargs else True)
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "prepare_model", spy)
    monkeypatch.setattr(sft_module, "prepare_model", spy)
    rows = Dataset.from_dict({"text": TEXTS})
    BudgetedTrainer(
        tiny_causal_lm(small_tokenizer),
        BudgetedTrainingArguments(**common(tmp_path)),
        train_dataset=rows,
        processing_class=small_tokenizer,
    )
    BudgetedSFTTrainer(
        tiny_causal_lm(small_tokenizer),
        BudgetedSFTConfig(**common(tmp_path), bf16=False),
        train_dataset=rows,
        processing_class=small_tokenizer,
    )
    assert calls == [True, False]  # SFTTrainer adds the adapter itself
    assert "BudgetedTrainer" not in re.sub(r'""".*?"""', "", (TRAINER_CODE / "sft.py").read_text(), flags=re.S)


def test_loading_options_follow_the_training_device():
    on_cpu = TrainingArguments("out", use_cpu=True, report_to="none")
    options = model_loading_options(None, on_cpu)
    assert options["device_map"] is None and options["dtype"] is torch.float32
    assert options["trust_remote_code"] is False
    assert model_loading_options({"device_map": {"": 0}}, on_cpu)["device_map"] == {"": 0}  # what the user set


def test_quantization_options_from_json_become_a_bitsandbytes_config():
    from transformers import BitsAndBytesConfig

    options = model_loading_options({"quantization_config": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}})
    assert isinstance(options["quantization_config"], BitsAndBytesConfig)
    assert options["quantization_config"].load_in_4bit


def test_an_unknown_dtype_name_is_refused():
    with pytest.raises(ValueError, match="dtype must be 'auto' or one of"):
        model_loading_options({"dtype": "float8"})


def test_no_hard_coded_device_in_the_trainer_code():
    # The device comes from accelerate (Trainer.args.device, accelerator.device) or the model.
    hard_coded = re.compile(
        r"""\.cuda\(|\.cpu\(\)|device\s*=\s*["'](cpu|cuda)|\.to\(\s*["'](cpu|cuda)|torch\.device\(["']"""
    )
    found = [
        f"{path.name}:{number}: {line.strip()}"
        for path in sorted(TRAINER_CODE.glob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if hard_coded.search(line)
    ]
    assert not found, found


def test_a_bf16_model_trains_under_a_budget_on_cpu(tmp_path, small_tokenizer):
    model = tiny_causal_lm(small_tokenizer).to(torch.bfloat16)
    rows = Dataset.from_dict({"text": TEXTS})
    per_step = FlopProfile.from_model(model).train_step_flops(4, 8)
    trainer = BudgetedTrainer(
        model,
        BudgetedTrainingArguments(**common(tmp_path, max_steps=-1), flop_budget=40 * per_step, max_length=8),
        train_dataset=rows,
        processing_class=small_tokenizer,
    )
    trainer.train()
    assert trainer.model.dtype == torch.bfloat16
    assert 0.8 * trainer.flop_ledger.budget <= trainer.flop_ledger.spent <= trainer.flop_ledger.budget
