"""QLoRA on CPU: a 4-bit (bitsandbytes nf4) tiny model with LoRA adapters trains under the FLOP budget."""

import pytest
import torch
from peft import LoraConfig

from hf_cads import BudgetedSFTConfig, BudgetedSFTTrainer, BudgetedTrainer, BudgetedTrainingArguments
from hf_cads.flops import FlopProfile

pytest.importorskip("bitsandbytes")


def load_4bit(folder):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True,
    )
    return AutoModelForCausalLM.from_pretrained(folder, quantization_config=quantization, device_map={"": "cpu"})


def lora():
    return LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")


def test_4bit_lora_training_stops_at_the_cap(tmp_path, tiny_model_dir, small_pool, bbh_target, tokenizer):
    import bitsandbytes as bnb
    from peft import prepare_model_for_kbit_training

    model = load_4bit(tiny_model_dir)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    # Matmul FLOPs are those of the float model: the 4-bit layers keep their shapes.
    float_profile = FlopProfile.from_config(model.config)
    assert FlopProfile.from_model(model).forward_flops(2, 32) == pytest.approx(
        float_profile.forward_flops(2, 32), rel=1e-9
    )
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    budget = 4e10
    args = BudgetedTrainingArguments(
        output_dir=str(tmp_path / "out"),
        flop_budget=budget,
        selector="bm25",
        selection_fraction=0.5,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        max_length=96,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = BudgetedTrainer(
        model=model,
        args=args,
        train_dataset=small_pool,
        processing_class=tokenizer,
        selection_target=bbh_target[0],
        peft_config=lora(),
    )
    output = trainer.train()
    ledger = trainer.flop_ledger
    assert 0.9 * budget <= ledger.spent <= budget, ledger.breakdown()
    assert ledger.training.stopped_by_budget and torch.isfinite(torch.tensor(output.training_loss))


def test_4bit_model_without_adapters_is_refused(tmp_path, tiny_model_dir, small_pool, tokenizer):
    model = load_4bit(tiny_model_dir)
    with pytest.raises(ValueError, match="loaded in 4-bit/8-bit.*peft_config=LoraConfig"):
        BudgetedTrainer(
            model=model,
            args=BudgetedTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"),
            train_dataset=small_pool,
            processing_class=tokenizer,
        )
    with pytest.raises(ValueError, match="loaded in 4-bit/8-bit.*peft_config=LoraConfig"):
        BudgetedSFTTrainer(
            model=model,
            args=BudgetedSFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none"),
            train_dataset=small_pool.select_columns(["text"]),
            processing_class=tokenizer,
        )
