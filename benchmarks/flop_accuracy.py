"""Estimated vs measured FLOPs: hf_cads.flops against torch's FlopCounterMode.

For 3 model shapes x 3 sequence lengths it compares the analytic estimate with the measured count
for a forward pass, a LoRA training step, a full training step, perplexity scoring and LESS
selection (the selectors' real code paths; LESS on the two smaller shapes) and embedding scoring
(MiniLM-shaped encoder). BM25's charge is an operation count, not matmuls, and CADS's is built from
the training-step and forward estimates measured here. Goal: within 3%.

    python benchmarks/flop_accuracy.py [--quick]

Writes benchmarks/results/flop_accuracy.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

from hf_cads.flops import FlopProfile, LoraSpec
from hf_cads.selectors import get_selector

RESULTS = Path(__file__).resolve().parent / "results"
GOAL = 0.03

SHAPES = {
    "tiny-2L-64d": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "small-4L-256d": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3),
}


def measure(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


class FixedLengthTokenizer:
    """Maps each text to a fixed number of token ids, so the scorer's batches have a known shape."""

    def __init__(self, length: int, vocab: int) -> None:
        self.length, self.vocab = length, vocab
        self.pad_token_id, self.eos_token_id, self.chat_template = 0, 1, None

    def __call__(self, texts, truncation=True, max_length=None, add_special_tokens=True):
        return {"input_ids": [[(hash(t) + i) % (self.vocab - 2) + 2 for i in range(self.length)] for t in texts]}


def row(kind: str, shape: str, seq: int, estimate: float, measured: float) -> dict:
    error = (estimate - measured) / measured
    return {"kind": kind, "shape": shape, "seq_len": seq, "estimate": estimate, "measured": measured,
            "rel_error": error, "within_goal": abs(error) <= GOAL}


def less_row(model, shape: str, seq: int, vocab: int, projection: str) -> dict:
    """LESS on 6 rows (2 warmup rows, 1 epoch, 2 target rows, projection to 256): charged vs counted.

    The sparse projection's FLOPs are scatter-adds, which FlopCounterMode does not see, so for it
    the charge without the projection is compared (the projection is 2 x 4 FLOPs per gradient entry).
    """
    tokenizer = FixedLengthTokenizer(seq, vocab)
    pool = Dataset.from_dict({"text": [f"row {i}" for i in range(6)]})
    target = Dataset.from_dict({"text": ["target 0", "target 1"]})
    selector = get_selector("less", model=model, tokenizer=tokenizer, batch_size=2, max_length=seq, warmup_epochs=1,
                            warmup_fraction=2 / 6, projection_dim=256, projection_type=projection, show_progress=False)
    breakdown = selector.flops_breakdown(selector._inputs(pool, target))
    estimate = sum(breakdown.values()) - (breakdown["projection"] if projection == "sparse" else 0.0)
    kind = f"less selector (LoRA r=8, {projection} projection{', without it' if projection == 'sparse' else ''})"
    return row(kind, shape, seq, estimate, measure(lambda: selector.select(pool, target=target, k=2)))


def run(quick: bool) -> list[dict]:
    torch.manual_seed(0)
    rows: list[dict] = []
    vocab = 49152
    seqs = [64, 256] if quick else [64, 256, 512]
    shapes = list(SHAPES)[:2] if quick else list(SHAPES)
    batch = 2
    for name in shapes:
        config = LlamaConfig(vocab_size=vocab, attn_implementation="eager", tie_word_embeddings=True, **SHAPES[name])
        model = LlamaForCausalLM(config)
        profile = FlopProfile.from_config(config)
        lora_spec = LoraSpec(8, ("q_proj", "k_proj", "v_proj", "o_proj"))
        for seq in seqs:
            ids = torch.randint(2, vocab, (batch, seq))
            with torch.no_grad():
                rows.append(row("forward", name, seq, profile.forward_flops(batch, seq), measure(lambda: model(input_ids=ids))))
            rows.append(row("train step (full)", name, seq, profile.train_step_flops(batch, seq),
                            measure(lambda: model(input_ids=ids, labels=ids).loss.backward())))
            model.zero_grad(set_to_none=True)
            tokenizer = FixedLengthTokenizer(seq, vocab)
            pool = Dataset.from_dict({"text": [f"row {i}" for i in range(4)]})
            selector = get_selector("perplexity", model=model, tokenizer=tokenizer, batch_size=2, max_length=seq, show_progress=False)
            estimate = selector.estimate_flops(pool, None)
            rows.append(row("perplexity selector", name, seq, estimate, measure(lambda: selector.select(pool, k=1))))
            if name != "smollm2-135m":  # LESS's whole selection: warmup, per-example gradients, projection
                rows.extend(less_row(model, name, seq, vocab, projection) for projection in ("sparse", "gaussian"))
        peft_model = get_peft_model(model, LoraConfig(r=8, target_modules=list(lora_spec.target_modules)))
        lora_profile = profile.with_lora(lora_spec)
        for seq in seqs:
            ids = torch.randint(2, vocab, (batch, seq))
            rows.append(row("train step (LoRA r=8)", name, seq, lora_profile.train_step_flops(batch, seq),
                            measure(lambda: peft_model(input_ids=ids, labels=ids).loss.backward())))
            peft_model.zero_grad(set_to_none=True)
        del model, peft_model
    encoder_config = BertConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=12,
                                vocab_size=30522, attn_implementation="eager")
    encoder = BertModel(encoder_config, add_pooling_layer=False).eval()
    encoder_profile = FlopProfile.from_config(encoder_config)
    for seq in seqs[:2] if quick else [32, 128, 256]:
        ids = torch.randint(0, 30522, (batch, seq))
        with torch.no_grad():
            rows.append(row("embedding encoder (MiniLM shape)", "minilm-6L-384d", seq, encoder_profile.forward_flops(batch, seq),
                            measure(lambda: encoder(input_ids=ids))))
    return rows


def write(rows: list[dict]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = {"python": sys.version.split()[0], "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
               "cores": os.cpu_count()}
    (RESULTS / "flop_accuracy.json").write_text(json.dumps({"machine": machine, "goal": GOAL, "rows": rows}, indent=2))
    lines = ["| kind | shape | seq | estimate | measured | error | within 3% |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['shape']} | {r['seq_len']} | {r['estimate']:.4g} | {r['measured']:.4g} | "
                     f"{r['rel_error']:+.2%} | {'yes' if r['within_goal'] else 'NO'} |")
    worst = max(abs(r["rel_error"]) for r in rows)
    lines.append(f"\nWorst error {worst:.2%}; {sum(r['within_goal'] for r in rows)}/{len(rows)} within the 3% goal. "
                 f"Machine: {machine}")
    (RESULTS / "flop_accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 shapes x 2 lengths")
    write(run(parser.parse_args().quick))
