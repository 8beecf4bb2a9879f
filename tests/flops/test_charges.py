"""One selection path (select_within_budget), the typed budget plan on the ledger, and CADS taking its
training budget from what BudgetedTrainer's flop_budget leaves."""

import json

import numpy as np
import pytest
from peft import LoraConfig

from hf_cads import BudgetedTrainer, BudgetedTrainingArguments, FlopLedger, get_selector
from hf_cads.flops.charges import SelectionCharge, TrainingPlan
from hf_cads.selectors import build_selector, select_within_budget, solve_budget_split


def test_select_within_budget_charges_the_ledger_and_returns_the_typed_charge(small_pool, bbh_target):
    selector = build_selector("bm25", {"aggregate": "max"}, seed=3)
    assert selector.config.seed == 3 and selector.config.aggregate == "max"
    ledger = FlopLedger(budget=1e12)
    result, charge = select_within_budget(selector, small_pool, bbh_target[0], ledger, fraction=0.25)
    assert isinstance(charge, SelectionCharge) and ledger.selection is charge
    assert charge.selector == "bm25" and charge.k == len(result) == round(0.25 * len(small_pool))
    assert charge.pool_size == len(small_pool) and charge.model_params == 0
    assert charge.flops == result.flops == ledger.entries["selection"] > 0
    assert charge.estimated_flops == pytest.approx(charge.flops, rel=1e-9)  # BM25's estimate is its exact cost
    assert charge.cost == charge.flops and not charge.cache_hit


def test_select_within_budget_refuses_a_budget_below_the_estimate_before_any_work(small_pool, bbh_target):
    selector = build_selector("bm25", seed=0)
    estimate = selector.estimate_flops(small_pool, bbh_target[0])
    ledger = FlopLedger(budget=estimate)  # nothing would be left for training
    scored = []
    selector.score_rows = lambda *args, **kwargs: scored.append(args)  # must never be reached
    with pytest.raises(ValueError, match="smaller than the cost of the 'bm25' selector.*Raise flop_budget"):
        select_within_budget(selector, small_pool, bbh_target[0], ledger, k=5)
    assert not scored and ledger.spent == 0 and ledger.selection is None


@pytest.mark.parametrize(
    "slope, fixed, available", [(0.0, 0.0, 1e6), (0.25, 10.0, 1010.0), (1.9, 3e8, 7.3e12), (0.01, 5e3, 2e4)]
)
def test_solve_budget_split_spends_the_whole_budget(slope, fixed, available):
    overhead = lambda c: slope * c + fixed  # noqa: E731
    c = solve_budget_split(overhead, available)
    assert c + overhead(c) <= available
    assert c + overhead(c) == pytest.approx(available, rel=1e-5)
    assert c == pytest.approx((available - fixed) / (1 + slope), rel=1e-5)


def test_solve_budget_split_says_when_the_overhead_leaves_nothing():
    with pytest.raises(ValueError, match="leaves nothing to train with"):
        solve_budget_split(lambda c: 2e6, 1e6)

    def too_small(c):  # like CADS's pilot check: an error below some C
        if c < 900:
            raise ValueError("too small")
        return 0.5 * c

    with pytest.raises(ValueError, match="leaves nothing to train with"):
        solve_budget_split(too_small, 1000.0)


def test_ledger_round_trips_the_typed_plan_and_loads_old_ledgers(tmp_path):
    ledger = FlopLedger(budget=1e12)
    ledger.charge("selection", 5e10)
    ledger.selection = SelectionCharge(
        "bm25", k=7, pool_size=70, estimated_flops=5e10, flops=5e10, stages={"idf": 1.0}
    )
    ledger.training = TrainingPlan(
        planned_steps=12, expected_step_flops=7e10, stopped_by_budget=True, tokens_trained=900
    )
    ledger.notes["mine"] = "kept"
    path = tmp_path / "ledger.json"
    ledger.save(str(path))
    loaded = FlopLedger.load(str(path))
    assert loaded == ledger and json.loads(path.read_text())["format"] == 2

    # A ledger of another format (an older hf_cads) is refused with one line saying to rerun.
    path.write_text(json.dumps({"budget": 1e12, "entries": {"train": 8e11}, "notes": {"planned_steps": 14}}))
    with pytest.raises(ValueError, match="another hf_cads version; rerun"):
        FlopLedger.load(str(path))


def test_budgeted_trainer_plans_training_into_the_ledger_and_the_checkpoint(
    tmp_path, small_pool, bbh_target, tokenizer, tiny_lm
):
    args = BudgetedTrainingArguments(
        output_dir=str(tmp_path / "out"),
        flop_budget=3e10,
        selector="random",
        selection_fraction=0.25,
        per_device_train_batch_size=4,
        max_length=64,
        report_to="none",
        use_cpu=True,
        save_strategy="steps",
        save_steps=2,
        disable_tqdm=True,
        seed=0,
    )
    trainer = BudgetedTrainer(model=tiny_lm, args=args, train_dataset=small_pool, processing_class=tokenizer)
    plan = trainer.flop_ledger.training
    assert plan.planned_steps == trainer.args.max_steps and plan.expected_step_flops > 0
    assert trainer.flop_ledger.selection.selector == "random" and trainer.flop_ledger.selection.k == len(
        trainer.selection_result
    )
    trainer.train()
    assert plan.tokens_trained > 0 and plan.stopped_by_budget and trainer.flop_ledger.spent <= 3e10
    saved = FlopLedger.load(str(tmp_path / "out" / "checkpoint-2" / "flop_ledger.json"))
    assert saved.training.planned_steps == plan.planned_steps and saved.selection == trainer.flop_ledger.selection
    assert 0 < saved.training.tokens_trained < plan.tokens_trained


def test_cads_in_budgeted_trainer_takes_its_training_budget_from_flop_budget(
    tmp_path, small_pool, bbh_target, tokenizer, tiny_lm
):
    budget = 9e10
    args = BudgetedTrainingArguments(
        output_dir=str(tmp_path / "out"),
        flop_budget=budget,
        selector="cads-s",
        per_device_train_batch_size=4,
        selector_kwargs={"outer_steps": 3, "max_length": 96, "show_progress": False},  # no train_budget
        max_length=96,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    trainer = BudgetedTrainer(
        model=tiny_lm,
        args=args,
        train_dataset=small_pool,
        processing_class=tokenizer,
        selection_target=bbh_target[0],
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    c = trainer.selection_result.config["train_budget"]
    overhead = trainer.flop_ledger.selection.estimated_flops  # CADS's estimate when planning for C
    # C + overhead(C) = flop_budget: selection and training share the whole budget
    assert c + overhead <= budget and c + overhead == pytest.approx(budget, rel=1e-4)
    assert 0 < c < budget and trainer.flop_ledger.entries["selection"] > 0


def test_cads_solves_the_same_split_for_several_budgets(small_pool, bbh_target, tokenizer, tiny_lm):
    for budget in (5e10, 9e10, 2e11):
        selector = get_selector(
            "cads-e", model=tiny_lm, tokenizer=tokenizer, outer_steps=2, max_length=64, show_progress=False
        )
        selector.fit_to_budget(budget, small_pool, bbh_target[0])
        c = selector.config.train_budget
        total = c + selector.estimate_flops(small_pool, bbh_target[0])
        assert total <= budget and total == pytest.approx(budget, rel=1e-4)
    # given explicitly, train_budget is kept
    selector = get_selector(
        "cads-e",
        model=tiny_lm,
        tokenizer=tokenizer,
        train_budget=2e10,
        outer_steps=2,
        max_length=64,
        show_progress=False,
    )
    selector.fit_to_budget(9e10, small_pool, bbh_target[0])
    assert selector.config.train_budget == 2e10
    assert np.isfinite(selector.estimate_flops(small_pool, bbh_target[0]))
