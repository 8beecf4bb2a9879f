import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch.utils.flop_counter import FlopCounterMode

from hf_cads.flops import BudgetExceededError, FlopLedger, FlopProfile, LoraSpec
from hf_cads.testing import tiny_causal_lm, tiny_llama_config


def measured(fn):
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("seq_len", [16, 64])
def test_forward_estimate_matches_flop_counter(seq_len):
    model = tiny_causal_lm(vocab_size=300)
    ids = torch.randint(0, 300, (3, seq_len))
    real = measured(lambda: model(input_ids=ids))
    assert FlopProfile.from_config(model.config).forward_flops(3, seq_len) == pytest.approx(real, rel=0.01)
    assert FlopProfile.from_model(model).forward_flops(3, seq_len) == pytest.approx(real, rel=0.01)


def test_full_finetune_step_matches_flop_counter():
    model = tiny_causal_lm(vocab_size=300)
    ids = torch.randint(0, 300, (2, 48))
    real = measured(lambda: model(input_ids=ids, labels=ids).loss.backward())
    assert FlopProfile.from_model(model).train_step_flops(2, 48) == pytest.approx(real, rel=0.02)


def test_lora_step_matches_flop_counter_and_is_cheaper():
    model = tiny_causal_lm(vocab_size=300)
    full = FlopProfile.from_config(model.config)
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    ids = torch.randint(0, 300, (2, 48))
    real = measured(lambda: peft_model(input_ids=ids, labels=ids).loss.backward())
    analytic = full.with_lora(LoraSpec(8, ("q_proj", "v_proj")))
    assert analytic.train_step_flops(2, 48) == pytest.approx(real, rel=0.05)
    assert FlopProfile.from_model(peft_model).train_step_flops(2, 48) == pytest.approx(real, rel=0.05)
    # frozen base weights: no weight-gradient matmuls, so clearly cheaper than a full finetune step
    assert analytic.train_step_flops(2, 48) < 0.8 * full.train_step_flops(2, 48)


def test_attention_term_grows_quadratically():
    profile = FlopProfile.from_config(tiny_llama_config(300))
    linear_only = 2 * profile.num_params
    per_token_short = profile.forward_flops(1, 64) / 64
    per_token_long = profile.forward_flops(1, 256) / 256
    assert per_token_long > per_token_short > linear_only


def test_lora_spec_matching_nothing_is_an_error():
    with pytest.raises(ValueError, match="match no linear layer"):
        FlopProfile.from_config(tiny_llama_config(300)).with_lora(LoraSpec(4, ("nonexistent",)))


def test_ledger_caps_and_reports():
    ledger = FlopLedger(budget=100.0)
    ledger.charge("selection", 30)
    ledger.charge("train", 60)
    ledger.charge("eval", 500)  # eval is reported, not budgeted
    assert ledger.spent == 90 and ledger.remaining == 10
    assert not ledger.can_afford(11) and ledger.can_afford(10)
    with pytest.raises(BudgetExceededError, match="budget"):
        ledger.charge("train", 11)
    assert ledger.spent == 90
    breakdown = ledger.breakdown()
    assert breakdown["total"] == breakdown["selection"] + breakdown["train"] == 90
    assert breakdown["fraction_used"] == pytest.approx(0.9)
    with pytest.raises(ValueError, match="Unknown ledger phase"):
        ledger.charge("warmup", 1)


def test_ledger_roundtrip(tmp_path):
    ledger = FlopLedger(budget=1e12)
    ledger.charge("train", 3e11)
    ledger.save(tmp_path / "ledger.json")
    again = FlopLedger.load(tmp_path / "ledger.json")
    assert again.breakdown() == ledger.breakdown()
    assert not math.isinf(again.remaining)
