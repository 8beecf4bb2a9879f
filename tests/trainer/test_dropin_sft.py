"""BudgetedSFTTrainer is a drop-in trl.SFTTrainer: without a budget and a selector, every behaviour
checked here holds for the parent class and for ours (each test runs against both).

The behaviours are those TRL's own SFT tests check: language-modelling, conversational and
prompt-completion data, completion-only and assistant-only loss, packing and padding-free batches,
truncation, formatting functions, pre-tokenised rows, LoRA through ``peft_config`` (also on a 4-bit
bitsandbytes model), a model given by path with ``model_init_kwargs``, plain ``TrainingArguments``,
evaluation, checkpoints and resuming. A tiny Llama and its tokenizer are built here; nothing is
downloaded.
"""

import gc

import pytest
import torch
from datasets import Dataset, IterableDataset
from peft import LoraConfig
from transformers import TrainerCallback, TrainingArguments
from trl import SFTConfig, SFTTrainer

from hf_cads import BudgetedSFTConfig, BudgetedSFTTrainer
from hf_cads.testing import tiny_causal_lm, tiny_tokenizer

FLAVOURS = {
    "parent": (SFTTrainer, SFTConfig),
    "budgeted": (BudgetedSFTTrainer, BudgetedSFTConfig),
}

QUESTIONS = ["Can llamas code?", "Can llamas fly?", "Can llamas swim?", "Can llamas talk?"]
ANSWERS = ["Yes, they code well.", "No, they cannot fly.", "Yes, they swim a bit.", "No, they only hum."]
TEXTS = [f"Question: {q} Answer: {a}" for q, a in zip(QUESTIONS, ANSWERS)]

# A chat template whose assistant turns sit inside {% generation %} markers, as assistant-only loss needs.
MARKED_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}<|assistant|>{% generation %}"
    "{{ message['content'] }}</s>{% endgeneration %}{% else %}<|{{ message['role'] }}|>{{ message['content'] }}"
    "</s>{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(params=sorted(FLAVOURS), ids=str)
def flavour(request):
    return FLAVOURS[request.param]


@pytest.fixture(scope="module", autouse=True)
def frozen_heap():
    # Every train() ends in accelerate's gc.collect(), which walks the whole heap of torch and
    # transformers (~1 s a call here); frozen objects are skipped, so the suite stays fast.
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(scope="module")
def sft_tokenizer():
    return tiny_tokenizer(TEXTS * 4 + ["<|user|> <|assistant|>"], vocab_size=320)


@pytest.fixture
def model(sft_tokenizer):
    return tiny_causal_lm(sft_tokenizer)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, sft_tokenizer):
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_causal_lm(sft_tokenizer, attn_implementation="sdpa").save_pretrained(folder)
    sft_tokenizer.save_pretrained(folder)
    return folder


def text_rows(repeat=4):
    return Dataset.from_dict({"text": TEXTS * repeat})


def chat_rows(repeat=4):
    return Dataset.from_dict(
        {
            "messages": [
                [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
                for q, a in zip(QUESTIONS * repeat, ANSWERS * repeat)
            ]
        }
    )


def prompt_completion_rows(repeat=4):
    return Dataset.from_dict(
        {"prompt": [f"Question: {q} Answer:" for q in QUESTIONS] * repeat, "completion": ANSWERS * repeat}
    )


def make_config(config_class, tmp_path, **overrides):
    options = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        max_steps=4,
        max_length=64,
        report_to="none",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        logging_steps=1,
    )
    options.update(overrides)
    return config_class(**options)


def weights(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def changed(before, model):
    return {name for name, p in model.named_parameters() if name in before and not torch.equal(before[name], p)}


def batch_labels(trainer):
    return next(iter(trainer.get_train_dataloader()))


# -- data formats and losses ------------------------------------------------------------------------
def test_text_dataset_trains_every_weight(flavour, tmp_path, model, sft_tokenizer):
    trainer_class, config_class = flavour
    before = weights(model)
    trainer = trainer_class(
        model=model,
        args=make_config(config_class, tmp_path),
        train_dataset=text_rows(),
        processing_class=sft_tokenizer,
    )
    trainer.train()
    assert trainer.state.global_step == 4
    assert changed(before, trainer.model) == set(before)
    assert all("loss" in e for e in trainer.state.log_history[:4])


def test_dataset_text_field_names_the_column(flavour, tmp_path, model, sft_tokenizer):
    trainer_class, config_class = flavour
    rows = text_rows().rename_column("text", "body")
    trainer = trainer_class(
        model=model,
        args=make_config(config_class, tmp_path, dataset_text_field="body"),
        train_dataset=rows,
        processing_class=sft_tokenizer,
    )
    assert "input_ids" in trainer.train_dataset.column_names
    trainer.train()


def test_conversational_rows_use_the_chat_template(flavour, tmp_path, model, sft_tokenizer):
    trainer_class, config_class = flavour
    trainer = trainer_class(
        model=model,
        args=make_config(config_class, tmp_path),
        train_dataset=chat_rows(),
        processing_class=sft_tokenizer,
    )
    first = sft_tokenizer.decode(trainer.train_dataset[0]["input_ids"])
    assert first.startswith("<|user|>") and "<|assistant|>" in first
    trainer.train()


def test_prompt_completion_trains_on_the_completion_only(flavour, tmp_path, model, sft_tokenizer):
    trainer_class, config_class = flavour
    trainer = trainer_class(
        model=model,
        args=make_config(config_class, tmp_path),
        train_dataset=prompt_completion_rows(),
        processing_class=sft_tokenizer,
    )
    row = trainer.train_dataset[0]
    prompt_length = len(sft_tokenizer(row["prompt"])["input_ids"])
    labels = trainer.data_collator([{k: row[k] for k in ("input_ids", "labels")}])["labels"][0]
    assert (labels[:prompt_length] == -100).all() and (labels[prompt_length:] != -100).all()
    trainer.train()


def test_completion_only_loss_can_be_switched_off(flavour, tmp_path, model, sft_tokenizer):
    trainer_class, config_class = flavour
    trainer = trainer_class(
        model=model,
        args=make_config(config_class, tmp_path, completion_only_loss=False),
        train_dataset=prompt_completion_rows(),
        processing_class=sft_tokenizer,
    )
    batch = batch_labels(trainer)
    real = batch["attention_mask"].bool()
    assert torch.equal(batch["labels"][real], batch["input_ids"][real])


def test_assistant_only_loss_masks_user_turns(flavour, tmp_path, model, sft_tokenizer):
    trainer_class, config_class = flavour
    tokenizer = sft_tokenizer
    original = tokenizer.chat_template
    tokenizer.chat_template = MARKED_TEMPLATE
    try:
        trainer = trainer_class(
            model=model,
            args=make_config(config_class, tmp_path, assistant_only_loss=True),
            train_dataset=chat_rows(),
            processing_class=tokenizer,
        )
        batch = batch_labels(trainer)
        trained = tokenizer.decode(batch["labels"][0][batch["labels"][0] != -100])
        assert trained.strip() and "Can llamas" not in trained
        trainer.train()
    finally:
        tokenizer.chat_template = original


def test_max_length_truncates(flavour, tmp_path, model, sft_tokenizer):
    trainer_class, config_class = flavour
    trainer = trainer_class(
        model=model,
        args=make_config(config_class, tmp_path, max_length=6),
        train_dataset=text_rows(),
        processing_class=sft_tokenizer,
    )
    assert max(len(ids) for ids in trainer.train_dataset["input_ids"]) == 6


def test_formatting_func_builds_the_text(flavour, tmp_path, model, sft_tokenizer):
    trainer_class, config_class = flavour
    rows = Dataset.from_dict({"question": QUESTIONS * 4, "answer": ANSWERS * 4})
    trainer = trainer_class(
        model=model,
        args=make_config(config_class, tmp_path),
        train_dataset=rows,
        processing_class=sft_tokenizer,
        formatting_func=lambda row: f"Question: {row['question']} Answer: {row['answer']}",
    )
    assert sft_tokenizer.decode(trainer.train_dataset[0]["input_ids"]).startswith("Question: Can llamas code?")
    trainer.train()


def test_pretokenised_rows_pass_through(flavour, tmp_path, model, sft_tokenizer):
    trainer_class, config_class = flavour
    ids = [sft_tokenizer(t)["input_ids"] for t in TEXTS * 4]
    trainer = trainer_class(
        model=model,
        args=make_config(config_class, tmp_path),
        train_dataset=Dataset.from_dict({"input_ids": ids}),
        processing_class=sft_tokenizer,
    )
    assert trainer.train_dataset["input_ids"][0][: len(ids[0])] == ids[0]
    trainer.train()


# -- packing ------------------------------------------------------------------------------------------
def test_packing_merges_rows_into_fewer_sequences(flavour, tmp_path, model, sft_tokenizer):
    trainer_class, config_class = flavour
    trainer = trainer_class(
        model=model,
        args=make_config(config_class, tmp_path, packing=True, max_length=48, per_device_train_batch_size=2),
        train_dataset=text_rows(),
        processing_class=sft_tokenizer,
    )
    assert len(trainer.train_dataset) < len(TEXTS) * 4
    batch = batch_labels(trainer)
    assert batch["input_ids"].shape[0] == 1 and int((batch["position_ids"][0] == 0).sum()) >= 2
    trainer.train()


def test_padding_free_batches_have_no_padding(flavour, tmp_path, model, sft_tokenizer):
    trainer_class, config_class = flavour
    trainer = trainer_class(
        model=model,
        args=make_config(config_class, tmp_path, padding_free=True, max_length=None),
        train_dataset=text_rows(),
        processing_class=sft_tokenizer,
    )
    batch = batch_labels(trainer)
    assert batch["input_ids"].shape[0] == 1 and (batch["input_ids"] != sft_tokenizer.pad_token_id).all()


# -- models and adapters ------------------------------------------------------------------------------
def test_peft_config_trains_only_the_adapter(flavour, tmp_path, model, sft_tokenizer):
    trainer_class, config_class = flavour
    trainer = trainer_class(
        model=model,
        args=make_config(config_class, tmp_path),
        train_dataset=text_rows(),
        processing_class=sft_tokenizer,
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    before = weights(trainer.model)
    trainer.train()
    moved = changed(before, trainer.model)
    assert moved and all("lora_" in name for name in moved)


def test_model_path_is_loaded_with_model_init_kwargs(flavour, tmp_path, model_dir):
    trainer_class, config_class = flavour
    args = make_config(config_class, tmp_path, model_init_kwargs={"dtype": "bfloat16", "attn_implementation": "eager"})
    trainer = trainer_class(model=str(model_dir), args=args, train_dataset=text_rows())
    assert trainer.model.dtype == torch.bfloat16
    assert trainer.model.config._attn_implementation == "eager"  # saved as sdpa
    assert args.model_init_kwargs == {"dtype": "bfloat16", "attn_implementation": "eager"}


def test_model_path_defaults_to_float32(flavour, tmp_path, model_dir):
    trainer_class, config_class = flavour
    trainer = trainer_class(model=str(model_dir), args=make_config(config_class, tmp_path), train_dataset=text_rows())
    assert trainer.model.dtype == torch.float32 and trainer.processing_class.pad_token == "<pad>"


def quantization():
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)


def test_4bit_model_with_peft_config_is_qlora(flavour, tmp_path, model_dir):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM

    trainer_class, config_class = flavour
    four_bit = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quantization(), device_map=None)
    trainer = trainer_class(
        model=four_bit,
        args=make_config(config_class, tmp_path, max_steps=2),
        train_dataset=text_rows(),
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    before = weights(trainer.model)
    trainer.train()
    moved = changed(before, trainer.model)
    assert moved and all("lora_" in name for name in moved)


def test_quantization_config_for_a_model_path(flavour, tmp_path, model_dir):
    pytest.importorskip("bitsandbytes")
    trainer_class, config_class = flavour
    trainer = trainer_class(
        model=str(model_dir),
        args=make_config(config_class, tmp_path, max_steps=1),
        train_dataset=text_rows(),
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
        quantization_config=quantization(),
    )
    assert trainer.model.base_model.model.is_loaded_in_4bit
    trainer.train()


# -- arguments ----------------------------------------------------------------------------------------
def test_plain_training_arguments_are_converted(flavour, tmp_path, model, sft_tokenizer):
    trainer_class, _ = flavour
    args = TrainingArguments(
        str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4, use_cpu=True, report_to="none"
    )
    trainer = trainer_class(model=model, args=args, train_dataset=text_rows(), processing_class=sft_tokenizer)
    assert isinstance(trainer.args, SFTConfig) and trainer.args.max_steps == 2
    assert trainer.train().global_step == 2


def test_output_dir_is_the_first_positional_argument(flavour, tmp_path):
    _, config_class = flavour
    config = config_class(str(tmp_path / "positional"), use_cpu=True, bf16=False, report_to="none")
    assert config.output_dir == str(tmp_path / "positional")


# -- the Trainer around it ---------------------------------------------------------------------------
def test_evaluate_reports_eval_loss(flavour, tmp_path, model, sft_tokenizer):
    trainer_class, config_class = flavour
    trainer = trainer_class(
        model=model,
        args=make_config(config_class, tmp_path, max_steps=8),
        train_dataset=text_rows(),
        eval_dataset=text_rows(1),
        processing_class=sft_tokenizer,
    )
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert trainer.evaluate()["eval_loss"] < before


def test_eval_datasets_by_name(flavour, tmp_path, model, sft_tokenizer):
    trainer_class, config_class = flavour
    trainer = trainer_class(
        model=model,
        args=make_config(config_class, tmp_path),
        train_dataset=text_rows(),
        eval_dataset={"text": text_rows(1), "chat": chat_rows(1)},
        processing_class=sft_tokenizer,
    )
    assert {"eval_text_loss", "eval_chat_loss"} <= set(trainer.evaluate())


def test_gradient_accumulation_takes_fewer_steps(flavour, tmp_path, model, sft_tokenizer):
    trainer_class, config_class = flavour
    args = make_config(
        config_class,
        tmp_path,
        max_steps=-1,
        num_train_epochs=1,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
    )
    trainer = trainer_class(model=model, args=args, train_dataset=text_rows(), processing_class=sft_tokenizer)
    assert trainer.train().global_step == 16 // 4


def test_iterable_dataset_with_max_steps(flavour, tmp_path, model, sft_tokenizer):
    trainer_class, config_class = flavour
    rows = IterableDataset.from_generator(lambda: ({"text": t} for t in TEXTS * 8))
    trainer = trainer_class(
        model=model,
        args=make_config(config_class, tmp_path, max_steps=3),
        train_dataset=rows,
        processing_class=sft_tokenizer,
    )
    assert trainer.train().global_step == 3


def test_callbacks_see_every_step(flavour, tmp_path, model, sft_tokenizer):
    trainer_class, config_class = flavour
    steps = []

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps.append(state.global_step)

    trainer = trainer_class(
        model=model,
        args=make_config(config_class, tmp_path),
        train_dataset=text_rows(),
        processing_class=sft_tokenizer,
        callbacks=[Record()],
    )
    trainer.train()
    assert steps == [1, 2, 3, 4]


def test_save_model_and_reload(flavour, tmp_path, model, sft_tokenizer):
    from transformers import AutoModelForCausalLM

    trainer_class, config_class = flavour
    trainer = trainer_class(
        model=model,
        args=make_config(config_class, tmp_path),
        train_dataset=text_rows(),
        processing_class=sft_tokenizer,
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    trained = trainer.model.state_dict()
    assert all(torch.equal(p, trained[name]) for name, p in reloaded.state_dict().items())


def test_resume_from_checkpoint_gives_the_same_weights(flavour, tmp_path, sft_tokenizer):
    trainer_class, config_class = flavour

    def run():
        args = make_config(config_class, tmp_path, max_steps=6, save_strategy="steps", save_steps=3)
        return trainer_class(
            model=tiny_causal_lm(sft_tokenizer), args=args, train_dataset=text_rows(), processing_class=sft_tokenizer
        )

    whole = run()
    whole.train()
    resumed = run()
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-3"))
    assert resumed.state.global_step == 6
    final, expected = resumed.model.state_dict(), whole.model.state_dict()
    for name, value in expected.items():
        torch.testing.assert_close(final[name], value, rtol=1e-5, atol=1e-7)


# -- ours only: what the drop-in adds ---------------------------------------------------------------
def test_budgeted_training_arguments_are_translated(tmp_path, model, sft_tokenizer):
    from hf_cads import BudgetedTrainingArguments

    args = BudgetedTrainingArguments(
        str(tmp_path / "out"), max_steps=2, max_length=10, use_cpu=True, report_to="none", flop_budget=1e12
    )
    trainer = BudgetedSFTTrainer(model=model, args=args, train_dataset=text_rows(), processing_class=sft_tokenizer)
    assert isinstance(trainer.args, BudgetedSFTConfig) and trainer.args.max_length == 10
    assert trainer.flop_ledger.budget == 1e12
