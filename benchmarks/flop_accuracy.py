"""Estimated vs measured FLOPs: hf_cads.flops against torch's FlopCounterMode.

For 3 model shapes x 3 sequence lengths it compares the analytic estimate with the measured count
for a forward pass, a LoRA training step, a full training step, perplexity scoring and LESS
selection (the selectors' real code paths; LESS on the two smaller shapes) and the sentence encoders
the embedding selector runs: MiniLM-L6 (BERT), all-mpnet-base-v2 (MPNet), gtr-t5-base (T5 encoder +
Dense head) and a decoder-only embedder (Qwen3-Embedding-0.6B's layers, last-token pooling). BM25's
charge is an operation count, not matmuls, and CADS's is built from the training-step and forward
estimates measured here. Goal: within 3%.

    python benchmarks/flop_accuracy.py [--quick] [--part all|lm|encoders] [--merge]

Writes benchmarks/results/flop_accuracy.{json,md}.
"""

from __future__ import annotations

import json
import os
import platform
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dataclasses import replace

import torch
from _common import RESULTS, make_parser, write_json, write_markdown
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    AutoModel,
    BertConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MPNetConfig,
    Qwen3Config,
    T5Config,
    T5EncoderModel,
)

from hf_cads.flops import FlopProfile, LinearLayer, LoraSpec
from hf_cads.selectors import get_selector

GOAL = 0.03

SHAPES = {
    "tiny-2L-64d": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    ),
    "small-4L-256d": dict(
        hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4
    ),
    "smollm2-135m": dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3
    ),
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
    return {
        "kind": kind,
        "shape": shape,
        "seq_len": seq,
        "estimate": estimate,
        "measured": measured,
        "rel_error": error,
        "within_goal": abs(error) <= GOAL,
    }


def less_row(model, shape: str, seq: int, vocab: int, projection: str) -> dict:
    """LESS on 6 rows (2 warmup rows, 1 epoch, 2 target rows, projection to 256): charged vs counted.

    The sparse projection's FLOPs are scatter-adds, which FlopCounterMode does not see, so for it
    the charge without the projection is compared (the projection is 2 x 4 FLOPs per gradient entry).
    """
    tokenizer = FixedLengthTokenizer(seq, vocab)
    pool = Dataset.from_dict({"text": [f"row {i}" for i in range(6)]})
    target = Dataset.from_dict({"text": ["target 0", "target 1"]})
    selector = get_selector(
        "less",
        model=model,
        tokenizer=tokenizer,
        batch_size=2,
        max_length=seq,
        warmup_epochs=1,
        warmup_fraction=2 / 6,
        projection_dim=256,
        projection_type=projection,
        show_progress=False,
    )
    breakdown = selector.flops_breakdown(selector._inputs(pool, target))
    estimate = sum(breakdown.values()) - (breakdown["projection"] if projection == "sparse" else 0.0)
    kind = f"less selector (LoRA r=8, {projection} projection{', without it' if projection == 'sparse' else ''})"
    return row(kind, shape, seq, estimate, measure(lambda: selector.select(pool, target=target, k=2)))


# Sentence encoders at their real shapes: (config, pooling, Dense head width or None).
ENCODERS = {
    "minilm-6L-384d": (
        lambda: BertConfig(
            hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=12, vocab_size=30522
        ),
        "mean",
        None,
    ),
    "mpnet-base-12L-768d": (
        lambda: MPNetConfig(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, vocab_size=30527
        ),
        "mean",
        None,
    ),
    "gtr-t5-base (T5 12L-768d + Dense)": (
        lambda: T5Config(
            d_model=768, d_ff=3072, d_kv=64, num_layers=12, num_heads=12, vocab_size=32128, feed_forward_proj="relu"
        ),
        "mean",
        768,
    ),
    # Qwen3-Embedding-0.6B's layer shape (1024d, 16 q / 8 kv heads of 128, ffn 3072), 4 of its 28 layers.
    "qwen3-embedding-0.6b layers (4L-1024d)": (
        lambda: Qwen3Config(
            hidden_size=1024,
            intermediate_size=3072,
            num_hidden_layers=4,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
            vocab_size=32000,
        ),
        "lasttoken",
        None,
    ),
}


def encoder_rows(quick: bool, batch: int = 2) -> list[dict]:
    """The embedding selector's charge (FlopProfile of the loaded modules, the Dense head once per
    sequence) against the measured transformer forward + pooling + head."""
    torch.manual_seed(0)
    rows = []
    for name, (make_config, pooling, dense) in ENCODERS.items():
        config = make_config()
        config._attn_implementation = "eager"
        # As sentence-transformers loads them: a T5 checkpoint as its encoder alone.
        model = (T5EncoderModel(config) if isinstance(config, T5Config) else AutoModel.from_config(config)).eval()
        head = torch.nn.Linear(config.d_model, dense, bias=False) if dense else None
        profile = FlopProfile.from_model(model)
        if head is not None:
            profile = replace(
                profile,
                per_sequence=profile.per_sequence + (LinearLayer("dense", head.in_features, head.out_features),),
            )

        def encode(ids, model=model, pooling=pooling, head=head):
            hidden = model(input_ids=ids).last_hidden_state
            pooled = hidden.mean(dim=1) if pooling == "mean" else hidden[:, -1]
            return head(pooled) if head is not None else pooled

        for seq in [64, 256] if quick else [32, 128, 256]:
            ids = torch.randint(2, config.vocab_size, (batch, seq))
            with torch.no_grad():
                rows.append(
                    row(
                        "embedding encoder",
                        name,
                        seq,
                        profile.forward_flops(batch, seq),
                        measure(lambda ids=ids, encode=encode: encode(ids)),
                    )
                )
        del model
    return rows


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
                rows.append(
                    row(
                        "forward",
                        name,
                        seq,
                        profile.forward_flops(batch, seq),
                        measure(lambda ids=ids, model=model: model(input_ids=ids)),
                    )
                )
            rows.append(
                row(
                    "train step (full)",
                    name,
                    seq,
                    profile.train_step_flops(batch, seq),
                    measure(lambda ids=ids, model=model: model(input_ids=ids, labels=ids).loss.backward()),
                )
            )
            model.zero_grad(set_to_none=True)
            tokenizer = FixedLengthTokenizer(seq, vocab)
            pool = Dataset.from_dict({"text": [f"row {i}" for i in range(4)]})
            selector = get_selector(
                "perplexity", model=model, tokenizer=tokenizer, batch_size=2, max_length=seq, show_progress=False
            )
            estimate = selector.estimate_flops(pool, None)
            rows.append(
                row(
                    "perplexity selector",
                    name,
                    seq,
                    estimate,
                    measure(lambda selector=selector, pool=pool: selector.select(pool, k=1)),
                )
            )
            if name != "smollm2-135m":  # LESS's whole selection: warmup, per-example gradients, projection
                rows.extend(less_row(model, name, seq, vocab, projection) for projection in ("sparse", "gaussian"))
        peft_model = get_peft_model(model, LoraConfig(r=8, target_modules=list(lora_spec.target_modules)))
        lora_profile = profile.with_lora(lora_spec)
        for seq in seqs:
            ids = torch.randint(2, vocab, (batch, seq))
            rows.append(
                row(
                    "train step (LoRA r=8)",
                    name,
                    seq,
                    lora_profile.train_step_flops(batch, seq),
                    measure(
                        lambda ids=ids, peft_model=peft_model: peft_model(input_ids=ids, labels=ids).loss.backward()
                    ),
                )
            )
            peft_model.zero_grad(set_to_none=True)
        del model, peft_model
    return rows


def write(rows: list[dict], merge: bool = False) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    previous = RESULTS / "flop_accuracy.json"
    if merge and previous.is_file():
        # Keep the previous run's rows of the kinds not rerun here (e.g. the LM rows of --part encoders).
        kinds = {r["kind"] for r in rows}
        rows = [
            r
            for r in json.loads(previous.read_text())["rows"]
            if r["kind"] not in kinds and not r["kind"].startswith("embedding encoder")
        ] + rows
    machine = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
    }
    write_json("flop_accuracy", {"machine": machine, "goal": GOAL, "rows": rows})
    lines = ["| kind | shape | seq | estimate | measured | error | within 3% |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['kind']} | {r['shape']} | {r['seq_len']} | {r['estimate']:.4g} | {r['measured']:.4g} | "
            f"{r['rel_error']:+.2%} | {'yes' if r['within_goal'] else 'NO'} |"
        )
    worst = max(abs(r["rel_error"]) for r in rows)
    lines.append(
        f"\nWorst error {worst:.2%}; {sum(r['within_goal'] for r in rows)}/{len(rows)} within the 3% goal. "
        f"Machine: {machine}"
    )
    write_markdown("flop_accuracy", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    parser = make_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="2 shapes x 2 lengths")
    parser.add_argument("--part", choices=["all", "lm", "encoders"], default="all", help="which cases to run")
    parser.add_argument("--merge", action="store_true", help="keep the last results file's rows of the other kinds")
    options = parser.parse_args()
    results = (run(options.quick) if options.part != "encoders" else []) + (
        encoder_rows(options.quick) if options.part != "lm" else []
    )
    write(results, merge=options.merge)
