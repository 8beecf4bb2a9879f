import pytest
from peft import LoraConfig
from transformers import Trainer

from hf_cads import BudgetedTrainer, BudgetedTrainingArguments


def make_args(tmp_path, **overrides):
    options = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=2,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        max_seq_length=96,
        seed=0,
        disable_tqdm=True,
    )
    options.update(overrides)
    return BudgetedTrainingArguments(**options)


def lora():
    return LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def test_is_a_drop_in_trainer():
    assert issubclass(BudgetedTrainer, Trainer)
    from hf_cads import BudgetedTrainingArguments as Args, get_selector  # noqa: F401


@pytest.mark.parametrize("accumulation", [1, 3])
def test_budget_is_never_exceeded_and_mostly_used(tmp_path, small_pool, bbh_target, tokenizer, tiny_lm, accumulation):
    budget = 6e10
    args = make_args(tmp_path, flop_budget=budget, selector="bm25", selection_fraction=0.5, gradient_accumulation_steps=accumulation)
    trainer = BudgetedTrainer(
        model=tiny_lm, args=args, train_dataset=small_pool, processing_class=tokenizer,
        selection_target=bbh_target[0], peft_config=lora(),
    )
    assert trainer.flop_ledger.entries["selection"] > 0
    trainer.train()
    ledger = trainer.flop_ledger
    assert ledger.spent <= budget
    assert ledger.spent >= 0.95 * budget, ledger.breakdown()
    assert ledger.breakdown()["total"] == pytest.approx(ledger.entries["selection"] + ledger.entries["train"])
    logged = [entry for entry in trainer.state.log_history if "flops_train" in entry]
    assert len(logged) >= 2 and logged[-1]["flops_budget_used"] <= 1.0
    assert trainer.selection_result is not None and len(trainer.selection_result) == len(small_pool) // 2


def test_full_finetune_without_selector(tmp_path, small_pool, tokenizer, tiny_lm):
    args = make_args(tmp_path, flop_budget=4e10)
    trainer = BudgetedTrainer(model=tiny_lm, args=args, train_dataset=small_pool, processing_class=tokenizer)
    trainer.train()
    assert 0.95 * 4e10 <= trainer.flop_ledger.spent <= 4e10
    assert trainer.flop_ledger.entries["selection"] == 0
