"""BudgetedTrainer is a drop-in transformers.Trainer: without a budget and a selector, every behaviour
checked here holds for the parent class and for ours (each test runs against both).

The behaviours are those transformers' own trainer tests check with their regression models
(a torch map-style dataset of floats, a plain ``nn.Module``, a ``PreTrainedModel`` whose config has no
transformer shape, ``model_init``, gradient accumulation, checkpoints and resuming, callbacks,
metrics, custom collators and optimizers), plus a tiny causal LM on pre-tokenised rows.
Everything is built here; nothing is downloaded.
"""

import gc
import math

import numpy as np
import pytest
import torch
from datasets import Dataset
from torch import nn
from transformers import (
    PretrainedConfig,
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from hf_cads import BudgetedTrainer, BudgetedTrainingArguments
from hf_cads.testing import tiny_causal_lm, tiny_tokenizer

FLAVOURS = {
    "parent": (Trainer, TrainingArguments),
    "budgeted": (BudgetedTrainer, BudgetedTrainingArguments),
}


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


# -- local models and data ------------------------------------------------------------------------
class LinearData(torch.utils.data.Dataset):
    """``y = 2 x + 3`` plus a little noise, as a map-style torch dataset of dict rows."""

    def __init__(self, length=32, seed=0):
        rng = np.random.default_rng(seed)
        self.x = rng.normal(size=length).astype(np.float32)
        self.y = (2.0 * self.x + 3.0 + rng.normal(scale=0.1, size=length)).astype(np.float32)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        return {"input_x": self.x[index], "labels": self.y[index]}


class LineModel(nn.Module):
    """``a x + b`` with a mean-squared-error loss: a model with no config at all."""

    def __init__(self, a=0.0, b=0.0):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(float(a)))
        self.b = nn.Parameter(torch.tensor(float(b)))

    def forward(self, input_x, labels=None):
        y = self.a * input_x + self.b
        if labels is None:
            return (y,)
        return (nn.functional.mse_loss(y, labels), y)


class LineConfig(PretrainedConfig):
    model_type = "hf-cads-test-line"

    def __init__(self, a=0.0, b=0.0, **kwargs):
        self.a, self.b = a, b
        super().__init__(**kwargs)


class LinePretrainedModel(PreTrainedModel):
    """The same line as a ``PreTrainedModel``: a config without any transformer shape fields."""

    config_class = LineConfig
    base_model_prefix = "line"

    def __init__(self, config):
        super().__init__(config)
        self.a = nn.Parameter(torch.tensor(float(config.a)))
        self.b = nn.Parameter(torch.tensor(float(config.b)))
        self.post_init()

    def _init_weights(self, module):
        pass

    def forward(self, input_x, labels=None):
        y = self.a * input_x + self.b
        if labels is None:
            return (y,)
        return (nn.functional.mse_loss(y, labels), y)


def line_dataset(length=32, seed=0):
    data = LinearData(length, seed)
    return Dataset.from_dict({"input_x": data.x.tolist(), "labels": data.y.tolist()})


def make_args(args_class, tmp_path, **overrides):
    options = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        optim="sgd",
        max_grad_norm=0.0,
        learning_rate=0.2,
        lr_scheduler_type="constant",
        num_train_epochs=3,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        logging_steps=2,
    )
    options.update(overrides)
    return args_class(**options)


def line_params(model):
    return torch.stack([model.a.detach(), model.b.detach()])


@pytest.fixture(scope="module")
def lm_tokenizer():
    return tiny_tokenizer(["the cat sat on the mat", "a dog ran in the park", "one two three four"], 300)


def lm_rows(tokenizer, count=16):
    texts = ["the cat sat on the mat", "a dog ran in the park", "one two three four five"]
    ids = [tokenizer(texts[i % len(texts)])["input_ids"][:8] for i in range(count)]
    width = min(len(i) for i in ids)
    ids = [i[:width] for i in ids]  # equal lengths, so the parent's padding collator needs no labels padding
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


# -- behaviours -------------------------------------------------------------------------------------
def test_plain_module_on_torch_dataset_learns(flavour, tmp_path):
    trainer_class, args_class = flavour
    trainer = trainer_class(model=LineModel(), args=make_args(args_class, tmp_path), train_dataset=LinearData())
    output = trainer.train()
    assert output.global_step == 3 * math.ceil(32 / 8)
    assert torch.allclose(line_params(trainer.model), torch.tensor([2.0, 3.0]), atol=0.5)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses[-1] < losses[0]


def test_pretrained_model_without_transformer_config_learns(flavour, tmp_path):
    trainer_class, args_class = flavour
    trainer = trainer_class(
        model=LinePretrainedModel(LineConfig()), args=make_args(args_class, tmp_path), train_dataset=LinearData()
    )
    trainer.train()
    assert torch.allclose(line_params(trainer.model), torch.tensor([2.0, 3.0]), atol=0.5)


def test_datasets_dataset_of_floats(flavour, tmp_path):
    trainer_class, args_class = flavour
    trainer = trainer_class(model=LineModel(), args=make_args(args_class, tmp_path), train_dataset=line_dataset())
    trainer.train()
    assert torch.allclose(line_params(trainer.model), torch.tensor([2.0, 3.0]), atol=0.5)


def test_model_init_without_model(flavour, tmp_path):
    trainer_class, args_class = flavour
    built = []

    def model_init():
        built.append(LinePretrainedModel(LineConfig()))
        return built[-1]

    trainer = trainer_class(model_init=model_init, args=make_args(args_class, tmp_path), train_dataset=LinearData())
    trainer.train()
    assert len(built) == 2  # once at construction, once more when train() starts afresh
    assert trainer.model is built[-1]
    assert torch.allclose(line_params(trainer.model), torch.tensor([2.0, 3.0]), atol=0.5)


def test_max_steps_overrides_epochs(flavour, tmp_path):
    trainer_class, args_class = flavour
    args = make_args(args_class, tmp_path, max_steps=5)
    trainer = trainer_class(model=LineModel(), args=args, train_dataset=LinearData())
    assert trainer.train().global_step == 5


def test_steps_per_epoch_follow_batch_size(flavour, tmp_path):
    trainer_class, args_class = flavour
    args = make_args(args_class, tmp_path, per_device_train_batch_size=5, num_train_epochs=2)
    trainer = trainer_class(model=LineModel(), args=args, train_dataset=LinearData(length=23))
    assert trainer.train().global_step == 2 * math.ceil(23 / 5)


def test_gradient_accumulation_matches_a_larger_batch(flavour, tmp_path):
    trainer_class, args_class = flavour
    big = trainer_class(
        model=LineModel(),
        args=make_args(args_class, tmp_path / "big", per_device_train_batch_size=16, learning_rate=0.05),
        train_dataset=LinearData(),
    )
    big.train()
    accumulated = trainer_class(
        model=LineModel(),
        args=make_args(
            args_class,
            tmp_path / "acc",
            per_device_train_batch_size=4,
            gradient_accumulation_steps=4,
            learning_rate=0.05,
        ),
        train_dataset=LinearData(),
    )
    accumulated.train()
    assert big.state.global_step == accumulated.state.global_step
    assert torch.allclose(line_params(big.model), line_params(accumulated.model), rtol=1e-4, atol=1e-5)


def test_same_seed_same_weights(flavour, tmp_path):
    trainer_class, args_class = flavour
    runs = []
    for index in range(2):
        trainer = trainer_class(
            model=LineModel(), args=make_args(args_class, tmp_path / str(index)), train_dataset=LinearData()
        )
        trainer.train()
        runs.append(line_params(trainer.model))
    assert torch.equal(runs[0], runs[1])


def test_evaluate_with_compute_metrics(flavour, tmp_path):
    trainer_class, args_class = flavour
    seen = []

    def compute_metrics(prediction):
        seen.append(prediction)
        return {"mae": float(np.abs(prediction.predictions - prediction.label_ids).mean())}

    trainer = trainer_class(
        model=LineModel(2.0, 3.0),
        args=make_args(args_class, tmp_path),
        eval_dataset=LinearData(length=20, seed=1),
        compute_metrics=compute_metrics,
    )
    metrics = trainer.evaluate()
    assert seen and seen[0].predictions.shape == (20,)
    assert metrics["eval_mae"] < 0.2 and metrics["eval_loss"] < 0.05


def test_eval_datasets_by_name(flavour, tmp_path):
    trainer_class, args_class = flavour
    trainer = trainer_class(
        model=LineModel(2.0, 3.0),
        args=make_args(args_class, tmp_path),
        eval_dataset={"near": LinearData(8, seed=1), "far": LinearData(8, seed=2)},
    )
    metrics = trainer.evaluate()
    assert {"eval_near_loss", "eval_far_loss"} <= set(metrics)


def test_predict_returns_predictions_and_metrics(flavour, tmp_path):
    trainer_class, args_class = flavour
    trainer = trainer_class(model=LineModel(2.0, 3.0), args=make_args(args_class, tmp_path))
    data = LinearData(length=12, seed=3)
    output = trainer.predict(data)
    np.testing.assert_allclose(output.predictions, 2.0 * data.x + 3.0, rtol=1e-5)
    assert output.metrics["test_loss"] < 0.05


def test_evaluation_during_training(flavour, tmp_path):
    trainer_class, args_class = flavour
    args = make_args(args_class, tmp_path, eval_strategy="steps", eval_steps=4, max_steps=8)
    trainer = trainer_class(
        model=LineModel(), args=args, train_dataset=LinearData(), eval_dataset=LinearData(16, seed=1)
    )
    trainer.train()
    evaluated = [e["step"] for e in trainer.state.log_history if "eval_loss" in e]
    assert evaluated == [4, 8]


def test_save_model_and_reload(flavour, tmp_path):
    trainer_class, args_class = flavour
    trainer = trainer_class(
        model=LinePretrainedModel(LineConfig()), args=make_args(args_class, tmp_path), train_dataset=LinearData()
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    reloaded = LinePretrainedModel.from_pretrained(str(tmp_path / "saved"))
    assert torch.equal(line_params(reloaded), line_params(trainer.model))


def test_resume_from_checkpoint_gives_the_same_weights(flavour, tmp_path):
    trainer_class, args_class = flavour

    def run(folder):
        args = make_args(args_class, tmp_path / folder, save_strategy="steps", save_steps=4)
        return trainer_class(model=LinePretrainedModel(LineConfig()), args=args, train_dataset=LinearData())

    whole = run("whole")
    whole.train()
    resumed = run("whole")  # the checkpoints the first run wrote
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "out" / "checkpoint-8"))
    assert resumed.state.global_step == whole.state.global_step
    assert torch.allclose(line_params(resumed.model), line_params(whole.model), rtol=1e-5, atol=0)


def test_callbacks_see_every_step(flavour, tmp_path):
    trainer_class, args_class = flavour

    class Counter(TrainerCallback):
        steps = 0
        began = ended = False

        def on_train_begin(self, args, state, control, **kwargs):
            Counter.began = True

        def on_step_end(self, args, state, control, **kwargs):
            Counter.steps += 1

        def on_train_end(self, args, state, control, **kwargs):
            Counter.ended = True

    trainer = trainer_class(
        model=LineModel(),
        args=make_args(args_class, tmp_path, max_steps=6),
        train_dataset=LinearData(),
        callbacks=[Counter],
    )
    trainer.train()
    assert Counter.began and Counter.ended and Counter.steps == 6


def test_callback_can_stop_training(flavour, tmp_path):
    trainer_class, args_class = flavour

    class StopAtThree(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                control.should_training_stop = True

    trainer = trainer_class(
        model=LineModel(), args=make_args(args_class, tmp_path), train_dataset=LinearData(), callbacks=[StopAtThree()]
    )
    assert trainer.train().global_step == 3


def test_custom_data_collator_is_used(flavour, tmp_path):
    trainer_class, args_class = flavour
    calls = []

    def collate(rows):
        calls.append(len(rows))
        return {
            "input_x": torch.tensor([r["input_x"] for r in rows]),
            "labels": torch.tensor([r["labels"] for r in rows]),
        }

    trainer = trainer_class(
        model=LineModel(),
        args=make_args(args_class, tmp_path, max_steps=3),
        data_collator=collate,
        train_dataset=LinearData(),
    )
    trainer.train()
    assert calls[:3] == [8, 8, 8]


def test_custom_optimizer_and_scheduler(flavour, tmp_path):
    trainer_class, args_class = flavour
    model = LineModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    trainer = trainer_class(
        model=model,
        args=make_args(args_class, tmp_path, max_steps=4),
        train_dataset=LinearData(),
        optimizers=(optimizer, scheduler),
    )
    trainer.train()
    assert trainer.optimizer.optimizer is optimizer or trainer.optimizer is optimizer
    assert {e["learning_rate"] for e in trainer.state.log_history if "learning_rate" in e} == {0.05}


def test_training_arguments_are_left_untouched(flavour, tmp_path):
    trainer_class, args_class = flavour
    args = make_args(args_class, tmp_path)
    before = args.to_dict()
    trainer_class(model=LineModel(), args=args, train_dataset=LinearData()).train()
    assert args.to_dict() == before


def test_output_dir_is_the_first_positional_argument(flavour, tmp_path):
    _, args_class = flavour
    args = args_class(str(tmp_path / "positional"), use_cpu=True, report_to="none")
    assert args.output_dir == str(tmp_path / "positional")


def test_causal_lm_on_pretokenised_rows(flavour, tmp_path, lm_tokenizer):
    trainer_class, args_class = flavour
    rows = lm_rows(lm_tokenizer)
    trainer = trainer_class(
        model=tiny_causal_lm(lm_tokenizer),
        args=make_args(args_class, tmp_path, learning_rate=3e-3, per_device_train_batch_size=4, num_train_epochs=4),
        train_dataset=rows,
        eval_dataset=rows,
        processing_class=lm_tokenizer,
    )
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert trainer.evaluate()["eval_loss"] < before


def test_processing_class_is_saved_with_the_model(flavour, tmp_path, lm_tokenizer):
    trainer_class, args_class = flavour
    trainer = trainer_class(
        model=tiny_causal_lm(lm_tokenizer),
        args=make_args(args_class, tmp_path, max_steps=1, per_device_train_batch_size=4),
        train_dataset=lm_rows(lm_tokenizer),
        processing_class=lm_tokenizer,
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    assert (tmp_path / "saved" / "tokenizer.json").is_file() and (tmp_path / "saved" / "config.json").is_file()


# -- ours only: what the drop-in adds ---------------------------------------------------------------
def test_plain_training_arguments_are_accepted(tmp_path):
    args = make_args(TrainingArguments, tmp_path, max_steps=2)
    trainer = BudgetedTrainer(model=LineModel(), args=args, train_dataset=LinearData())
    assert isinstance(trainer.args, BudgetedTrainingArguments) and trainer.args.max_steps == 2
    assert trainer.train().global_step == 2


def test_a_budget_on_a_model_without_a_flop_profile_names_the_fix(tmp_path):
    with pytest.raises(ValueError, match="cannot be profiled.*flop_profile=FlopProfile.from_config"):
        BudgetedTrainer(
            model=LineModel(),
            args=make_args(BudgetedTrainingArguments, tmp_path, flop_budget=1e9),
            train_dataset=LinearData(),
        )


def test_a_budget_with_an_explicit_flop_profile_trains_within_it(tmp_path, lm_tokenizer):
    from hf_cads.flops import FlopProfile

    model = tiny_causal_lm(lm_tokenizer)
    profile = FlopProfile.from_model(model)
    rows = lm_rows(lm_tokenizer)
    budget = 6 * profile.train_step_flops(4, len(rows[0]["input_ids"]))
    trainer = BudgetedTrainer(
        model=model,
        args=make_args(BudgetedTrainingArguments, tmp_path, flop_budget=budget, per_device_train_batch_size=4),
        train_dataset=rows,
        processing_class=lm_tokenizer,
        flop_profile=profile,
    )
    trainer.train()
    assert trainer.state.global_step == 6 and trainer.flop_ledger.spent <= budget
