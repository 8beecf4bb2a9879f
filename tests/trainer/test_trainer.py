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
        max_length=96,
        seed=0,
        disable_tqdm=True,
    )
    options.update(overrides)
    return BudgetedTrainingArguments(**options)


def lora():
    return LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def test_is_a_drop_in_trainer():
    assert issubclass(BudgetedTrainer, Trainer)
    from hf_cads import BudgetedTrainingArguments as Args  # noqa: F401


@pytest.mark.parametrize("accumulation", [1, 3])
def test_budget_is_never_exceeded_and_mostly_used(tmp_path, small_pool, bbh_target, tokenizer, tiny_lm, accumulation):
    budget = 6e10
    args = make_args(
        tmp_path, flop_budget=budget, selector="bm25", selection_fraction=0.5, gradient_accumulation_steps=accumulation
    )
    trainer = BudgetedTrainer(
        model=tiny_lm,
        args=args,
        train_dataset=small_pool,
        processing_class=tokenizer,
        selection_target=bbh_target[0],
        peft_config=lora(),
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


def test_duplicated_pool_rows_are_dropped_recorded_and_carded(tmp_path, small_pool, bbh_target, tokenizer, tiny_lm):
    from datasets import concatenate_datasets

    from hf_cads import push_selection, record_from_trainer
    from hf_cads.testing import tiny_causal_lm

    pool = concatenate_datasets([small_pool, small_pool.select(range(7))])  # 7 exact copies
    args = make_args(tmp_path, flop_budget=3e10, selector="bm25", selection_fraction=0.25, deduplicate="drop")
    assert args.selector_kwargs == {"deduplicate": "drop"}  # the recipe key travels as the selector option
    trainer = BudgetedTrainer(
        model=tiny_lm,
        args=args,
        train_dataset=pool,
        processing_class=tokenizer,
        selection_target=bbh_target[0],
        peft_config=lora(),
    )
    charge = trainer.flop_ledger.selection
    assert charge.duplicates_dropped == 7 and charge.k == round(0.25 * len(small_pool))
    assert trainer.selection_result.indices.max() < len(small_pool)  # no copy was chosen
    trainer.train()
    assert record_from_trainer(trainer, {"target_loss": 1.0}).duplicates_dropped == 7
    folder = push_selection(trainer.selection_result, "me/subset", parent=pool, local_dir=tmp_path / "subset")
    assert "| duplicated parent rows dropped before scoring | 7 |" in (folder / "README.md").read_text()
    with pytest.raises(ValueError, match="7 duplicated row"):
        BudgetedTrainer(
            model=tiny_causal_lm(tokenizer),
            args=make_args(tmp_path, flop_budget=3e10, selector="bm25", selection_fraction=0.25, deduplicate="error"),
            train_dataset=pool,
            processing_class=tokenizer,
            selection_target=bbh_target[0],
            peft_config=lora(),
        )
