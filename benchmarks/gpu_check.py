"""The GPU path in one run: budgeted LoRA and QLoRA finetunes, selector throughput, CPU/GPU agreement.

On one GPU (no Hub needed: the models ship in PyPI packages, the data is ``HF_CADS_DATA_DIR``) it
checks, for SmolLM2-135M and Gemma-3-270M:

- budgeted LoRA (bf16) and QLoRA (bitsandbytes nf4, bf16 compute) finetunes through
  ``BudgetedTrainer`` and ``BudgetedSFTTrainer`` (packing on): the FLOPs the ledger charged against
  ``FlopCounterMode`` over the same training (eager attention, in-place ``addmm_`` counted too;
  bitsandbytes' 4-bit matmuls are not seen by the counter, so the QLoRA rows report the ratio
  without a pass/fail), the share of the
  budget used, tokens/s and model-FLOP utilisation against the card's peak dense bf16 FLOP/s;
- selector throughput on the 1,000-row pool: embedding (beside ``SentenceTransformer.encode`` on
  the same rows), perplexity, LESS (batched per-example gradients beside a per-row backward loop),
  rows/s and peak accelerator memory;
- the same seed gives the same indices on the accelerator as on the CPU for random, bm25 and
  embedding; the model selectors' scores agree within a stated tolerance.

    python benchmarks/gpu_check.py                      # on the GPU: writes results/gpu_check.{json,md}
    python benchmarks/gpu_check.py --device cpu --quick  # the dry run the test suite runs

Budget: under 8 minutes on one H100. ``--quick`` shrinks every part (SmolLM2 only, a few steps of
128-token rows, a 32-row pool, one QLoRA finetune) so the whole path runs on a CPU in a few minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import RESULTS, markdown_table, write_json, write_markdown

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The shared data beside the checkout (the device machine copies it as shared/ inside the tree).
for _data in (
    Path(__file__).resolve().parents[1] / "shared" / "data",
    Path(__file__).resolve().parents[2] / "shared" / "data",
):
    if _data.is_dir():
        os.environ.setdefault("HF_CADS_DATA_DIR", str(_data))
        break

TARGET = "boolean_expressions"
FLOP_TOLERANCE = 0.01
# Selection + training FLOPs per finetune: about 40 steps of 4 x 512 tokens, so the budget, not the
# epoch, ends each run. The --quick run: a few steps of 2 x 128 tokens.
TRAIN_BUDGETS = {"smollm2-135m-instruct": 2e13, "gemma3-270m": 6e13}
QUICK_BUDGET = 6e11
MAX_LENGTH = {False: 512, True: 128}
SCORE_TOLERANCE = 2e-2  # bf16 on the GPU vs fp32 on the CPU, relative to the score spread

# Peak dense bf16 tensor FLOP/s (no sparsity) from the vendors' data sheets; MFU divides by these.
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 756e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10G": 125e12,
    "RTX 4090": 165e12,
}


def peak_flops(device_name: str) -> float | None:
    """The table's entry for ``torch.cuda.get_device_name()``; the longest matching key wins."""
    matches = [key for key in PEAK_BF16_FLOPS if key.lower() in device_name.lower()]
    return PEAK_BF16_FLOPS[max(matches, key=len)] if matches else None


class Accelerator:
    """The device under test and its memory / timing hooks (CUDA or a CPU dry run)."""

    def __init__(self, device: str):
        import torch

        self.torch = torch
        self.device = device
        self.is_cuda = device.startswith("cuda")
        if self.is_cuda and not torch.cuda.is_available():
            raise SystemExit("--device cuda was asked for but torch sees no CUDA device; use --device cpu --quick.")
        self.name = torch.cuda.get_device_name() if self.is_cuda else platform.processor() or "cpu"
        self.peak = peak_flops(self.name) if self.is_cuda else None

    def synchronize(self) -> None:
        if self.is_cuda:
            self.torch.cuda.synchronize()

    def reset_memory(self) -> None:
        if self.is_cuda:
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()

    def peak_memory_mb(self) -> float | None:
        return self.torch.cuda.max_memory_allocated() / 2**20 if self.is_cuda else None

    @contextlib.contextmanager
    def timed(self, out: dict[str, Any], key: str = "seconds"):
        self.synchronize()
        start = time.perf_counter()
        yield
        self.synchronize()
        out[key] = time.perf_counter() - start


def load_inputs(pool_size: int):
    from hf_cads.data import build_multisource_pool, load_bbh_target

    pool = build_multisource_pool(TARGET, max_per_source=max(1, pool_size // 4), max_chars=1200, seed=0)
    validation, _ = load_bbh_target(TARGET)
    return pool.select(range(min(pool_size, len(pool)))), validation


def load_model(alias: str, accel: Accelerator, qlora: bool):
    import torch
    from transformers import BitsAndBytesConfig

    from hf_cads.models import load_causal_lm

    dtype = torch.bfloat16 if accel.is_cuda else torch.float32
    quantization = None
    if qlora:
        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True
        )
    model, tokenizer = load_causal_lm(
        alias, dtype=dtype, quantization_config=quantization, attn_implementation="eager"
    )
    if quantization is None:
        model.to(accel.device)
    return model, tokenizer


def finetune(alias: str, trainer_kind: str, qlora: bool, accel: Accelerator, pool, validation, quick: bool) -> dict:
    """One budgeted finetune; the ledger's training charge beside FlopCounterMode's count of it."""
    from peft import LoraConfig

    from hf_cads import BudgetedSFTConfig, BudgetedSFTTrainer, BudgetedTrainer, BudgetedTrainingArguments
    from hf_cads.flops.profile import flop_counter

    model, tokenizer = load_model(alias, accel, qlora)
    common = dict(
        flop_budget=QUICK_BUDGET if quick else TRAIN_BUDGETS[alias],
        selector="bm25",
        selection_fraction=0.25,
        per_device_train_batch_size=2 if quick else 4,
        learning_rate=2e-4,
        num_train_epochs=1,
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        bf16=accel.is_cuda,
        use_cpu=not accel.is_cuda,
        seed=0,
    )
    lora = LoraConfig(
        r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM"
    )
    out_dir = tempfile.mkdtemp(prefix="gpu_check_")
    if trainer_kind == "sft":
        args = BudgetedSFTConfig(output_dir=out_dir, packing=True, max_length=MAX_LENGTH[quick], **common)
        trainer_class, train_data = BudgetedSFTTrainer, pool.select_columns(["messages"])
    else:
        args = BudgetedTrainingArguments(output_dir=out_dir, max_length=MAX_LENGTH[quick], **common)
        trainer_class, train_data = BudgetedTrainer, pool
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=train_data,
        processing_class=tokenizer,
        selection_target=validation,
        peft_config=lora,
    )
    row: dict[str, Any] = {"model": alias, "trainer": trainer_kind, "mode": "qlora" if qlora else "lora"}
    accel.reset_memory()
    counter = flop_counter()  # FlopCounterMode that also sees the in-place addmm_ of TRL's fused LM head
    with accel.timed(row, "train_seconds"), counter:
        trainer.train()
    ledger = trainer.flop_ledger
    charged = float(ledger.entries.get("train", 0.0))
    measured = float(counter.get_total_flops())
    tokens = int(ledger.training.tokens_trained or 0)
    row.update(
        charged_train_flops=charged,
        measured_train_flops=measured,
        charged_over_measured=charged / measured if measured else None,
        within_tolerance=None if qlora else abs(charged / measured - 1) <= FLOP_TOLERANCE,
        budget_used=ledger.breakdown().get("fraction_used"),
        tokens_trained=tokens,
        tokens_per_second=tokens / row["train_seconds"] if row["train_seconds"] else None,
        peak_memory_mb=accel.peak_memory_mb(),
    )
    # MFU from the charged (model) FLOPs; FlopCounterMode slows the run, so this is a lower bound.
    if accel.peak:
        row["mfu_lower_bound"] = charged / row["train_seconds"] / accel.peak
    return row


def selector_models(name: str, device: str, accel: Accelerator) -> dict:
    """``model=`` (and ``tokenizer=``) for a model-based selector, loaded on ``device``: a selector
    runs where its model lives."""
    from hf_cads.models import load_sentence_encoder

    if name == "embedding":
        return {"model": load_sentence_encoder(device=device)}
    if name in ("perplexity", "less"):
        on = accel if device == accel.device else Accelerator(device)
        model, tokenizer = load_model("smollm2-135m-instruct", on, qlora=False)
        return {"model": model, "tokenizer": tokenizer}
    return {}


SELECTOR_OPTIONS = {
    "embedding": {"batch_size": 64},
    "perplexity": {"batch_size": 16, "max_length": 256},
    "less": {"batch_size": 8, "max_length": 256, "warmup_epochs": 1, "projection_dim": 2048},
}


def selector_throughput(accel: Accelerator, pool, validation, quick: bool) -> list[dict]:
    from hf_cads.data import get_texts
    from hf_cads.selectors import get_selector

    rows = []
    for name, options in SELECTOR_OPTIONS.items():
        row: dict[str, Any] = {"selector": name, "rows": len(pool)}
        options = {**options, "max_length": 128} if quick and "max_length" in options else options
        selector = get_selector(name, show_progress=False, **options, **selector_models(name, accel.device, accel))
        accel.reset_memory()
        with accel.timed(row):
            result = selector.select(pool, target=validation, fraction=0.1)
        row.update(
            rows_per_second=len(pool) / row["seconds"], flops=result.flops, peak_memory_mb=accel.peak_memory_mb()
        )
        rows.append(row)
    # The peers a user would otherwise reach for, on the same rows.
    texts = get_texts(pool, None, role="pool")
    encoder = selector_models("embedding", accel.device, accel)["model"]
    peer: dict[str, Any] = {"selector": "SentenceTransformer.encode", "rows": len(texts)}
    accel.reset_memory()
    with accel.timed(peer):
        encoder.encode(texts, batch_size=64)
    peer.update(rows_per_second=len(texts) / peer["seconds"], peak_memory_mb=accel.peak_memory_mb())
    rows.append(peer)
    rows.append(per_row_backward_loop(accel, texts[: 8 if quick else 200]))
    return rows


def per_row_backward_loop(accel: Accelerator, texts: list[str]) -> dict:
    """LESS's reference computes one backward pass per example: rows/s of that loop, as a peer."""
    import torch
    from peft import LoraConfig, get_peft_model

    model, tokenizer = load_model("smollm2-135m-instruct", accel, qlora=False)
    model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    row: dict[str, Any] = {"selector": "per-row backward loop (LESS reference style)", "rows": len(texts)}
    accel.reset_memory()
    with accel.timed(row):
        for text in texts:
            batch = tokenizer(text, return_tensors="pt", truncation=True, max_length=256).to(accel.device)
            model.zero_grad()
            model(**batch, labels=batch["input_ids"]).loss.backward()
            torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    row.update(rows_per_second=len(texts) / row["seconds"], peak_memory_mb=accel.peak_memory_mb())
    return row


def cpu_agreement(accel: Accelerator, pool, validation) -> list[dict]:
    """Same seed, same indices on the accelerator and the CPU (scores within SCORE_TOLERANCE)."""
    import numpy as np

    from hf_cads.selectors import get_selector

    rows = []
    for name in ("random", "bm25", "embedding", "perplexity"):
        results = {}
        for device in dict.fromkeys(["cpu", accel.device]):
            options = {"seed": 0, "show_progress": False, **SELECTOR_OPTIONS.get(name, {})}
            selector = get_selector(name, **options, **selector_models(name, device, accel))
            results[device] = selector.select(pool, target=validation, fraction=0.1)
        cpu, other = results["cpu"], results[accel.device]
        spread = float(np.ptp(cpu.scores)) or 1.0
        rows.append(
            {
                "selector": name,
                "same_indices": sorted(cpu.indices) == sorted(other.indices),
                "max_score_difference_over_spread": float(np.max(np.abs(cpu.scores - other.scores))) / spread,
            }
        )
    return rows


def to_markdown(report: dict) -> str:
    lines = [
        f"# GPU check on {report['device']}",
        "",
        f"torch {report['torch']}, {report['seconds']:.0f} s in all.",
        "",
    ]
    for title, key in (
        ("Budgeted finetunes", "finetunes"),
        ("Selectors", "selectors"),
        ("CPU agreement", "agreement"),
    ):
        rows = report[key]
        if not rows:
            continue
        columns = list(dict.fromkeys(k for row in rows for k in row))
        cells = ([format_cell(row.get(c)) for c in columns] for row in rows)
        lines += [f"## {title}", "", *markdown_table(columns, cells), ""]
    return "\n".join(lines)


def format_cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="a small dry run of every part")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for gpu_check.{json,md}")
    options = parser.parse_args(argv)
    import torch

    accel = Accelerator(options.device)
    start = time.perf_counter()
    pool, validation = load_inputs(32 if options.quick else 1000)
    models = ["smollm2-135m-instruct"] if options.quick else ["smollm2-135m-instruct", "gemma3-270m"]
    finetunes = []
    for alias in models:
        for trainer_kind in ("trainer", "sft"):
            for qlora in (False, True):
                if qlora and options.quick and trainer_kind == "sft":
                    continue  # the dry run keeps one QLoRA finetune: 4-bit matmuls are slow on a CPU
                finetunes.append(finetune(alias, trainer_kind, qlora, accel, pool, validation, options.quick))
                print(json.dumps(finetunes[-1]), flush=True)
    report = {
        "device": accel.name,
        "torch": torch.__version__,
        "peak_bf16_flops": accel.peak,
        "finetunes": finetunes,
        "selectors": selector_throughput(accel, pool, validation, options.quick),
        "agreement": cpu_agreement(accel, pool, validation) if accel.is_cuda else [],
    }
    report["seconds"] = time.perf_counter() - start
    stem = "gpu_check" if not options.quick else "gpu_check_dry_run"
    write_json(stem, report, options.out)
    text = to_markdown(report)
    write_markdown(stem, text, options.out)
    print(text)
    return report


if __name__ == "__main__":
    main()
