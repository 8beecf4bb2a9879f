"""The training FLOPs the ledger charges equal what the model computes, counted by FlopCounterMode.

A tiny random Llama (eager attention, so the counter sees attention) with LoRA trains a few steps
through BudgetedTrainer and BudgetedSFTTrainer: packed (TRL's BFD packing, padding-free rows),
padded, and padding-free without packing; each with and without gradient checkpointing (on by
default in ``SFTConfig``). The count is :func:`hf_cads.flops.profile.flop_counter`, FlopCounterMode
plus the in-place ``addmm_`` TRL's fused LM head runs its backward with on a CPU.
"""

import pytest
from peft import LoraConfig

from hf_cads import BudgetedSFTConfig, BudgetedSFTTrainer, BudgetedTrainer, BudgetedTrainingArguments
from hf_cads.flops.profile import flop_counter

STEPS = 2
SFT_LAYOUTS = {
    "packed": dict(packing=True, max_length=128),
    "padded": dict(packing=False, max_length=128),
    "padding_free": dict(padding_free=True, max_length=None),
}


def common_options(tmp_path, checkpointing):
    return dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=STEPS,
        learning_rate=1e-3,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=0,
        disable_tqdm=True,
        gradient_checkpointing=checkpointing,
    )


def lora():
    return LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")


def charged_and_counted(trainer):
    with flop_counter() as counter:
        trainer.train()
    return trainer.flop_ledger.entries["train"], counter.get_total_flops()


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
@pytest.mark.parametrize("layout", sorted(SFT_LAYOUTS))
def test_sft_charge_equals_flop_counter(tmp_path, small_pool, tokenizer, tiny_lm, layout, checkpointing):
    args = BudgetedSFTConfig(**common_options(tmp_path, checkpointing), **SFT_LAYOUTS[layout], dataset_num_proc=None)
    trainer = BudgetedSFTTrainer(
        model=tiny_lm,
        args=args,
        train_dataset=small_pool.select_columns(["messages"]),
        processing_class=tokenizer,
        peft_config=lora(),
    )
    assert trainer.padding_free == (layout != "padded")
    charged, counted = charged_and_counted(trainer)
    assert trainer.state.global_step == STEPS
    assert charged == pytest.approx(counted, rel=0.01)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
def test_trainer_charge_equals_flop_counter(tmp_path, small_pool, tokenizer, tiny_lm, checkpointing):
    args = BudgetedTrainingArguments(**common_options(tmp_path, checkpointing), max_length=128)
    trainer = BudgetedTrainer(
        model=tiny_lm, args=args, train_dataset=small_pool, processing_class=tokenizer, peft_config=lora()
    )
    charged, counted = charged_and_counted(trainer)
    assert trainer.state.global_step == STEPS
    assert charged == pytest.approx(counted, rel=0.01)
