"""LESS per-example gradients: the batched paths against a per-example backward loop.

On SmolLM2-135M with LESS's LoRA adapters (rank 8 on q/k/v/o), the same pool rows go through
every path batch by batch (rotating which runs first, so load from other processes hits all
alike): ``linear`` (LESS's default: one batched backward, per-example LoRA gradients from each
layer's inputs and output gradients), ``vmap`` (``torch.func.vmap(grad)``) and ``loop`` (one
backward per example). Reported per path: examples/s and the peak memory added by one batch (CPU:
resident-set high-water mark, reset before each batch, measured on the longest batch in a child
process with a fixed glibc mmap threshold; GPU: ``torch.cuda.max_memory_allocated``),
plus the largest difference from the loop's gradients. Goal: the default path >= 3x faster than the
loop, memory bounded.

A second part times LESS's whole feature step (gradients + Adam direction + projection to
``--projection_dim``) through :meth:`LESSSelector.gradient_features`, and checks its FLOP charge.

    nice python benchmarks/less_speed.py [--examples 32] [--seq 128] [--batch 8]

Writes benchmarks/results/less_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# On CPU, glibc keeps freed heap memory (and raises its mmap threshold as it goes), so the resident
# set stays at the largest path's peak and later paths seem to need nothing. Peak memory is therefore
# measured in a second process with a fixed mmap threshold (large buffers go back to the system at
# once); speed is measured here, with the default allocator, since the fixed threshold adds page faults.
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}

import numpy as np
import torch

from hf_cads import get_selector
from hf_cads.data import build_multisource_pool
from hf_cads.models import load_causal_lm
from hf_cads.selectors.gradients import PerExampleGradients

RESULTS = Path(__file__).resolve().parent / "results"
GOAL_SPEEDUP = 3.0


class PeakMemory:
    """Peak memory added while the block runs (bytes)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.added = 0

    @staticmethod
    def _status(field: str) -> int:
        with open("/proc/self/status", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"{field} missing from /proc/self/status")

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w", encoding="utf-8") as handle:
                handle.write("5")  # resets the resident-set high-water mark (VmHWM)
            self.start = self._status("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.added = torch.cuda.max_memory_allocated() - self.start
        else:
            self.added = self._status("VmHWM") - self.start


def measure_memory_in_child() -> tuple[dict[str, int], int | None]:
    """Rerun this script's measurements in a child process with :data:`MEMORY_ENV`; its peaks."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "memory.json"
        subprocess.run([sys.executable, __file__, *sys.argv[1:], "--memory_json", str(out)],
                       env={**os.environ, **MEMORY_ENV}, check=True)
        memory = json.loads(out.read_text())
    return memory["peak"], memory.get("feature")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128, help="max tokens per example (longer rows are truncated)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--feature_examples", type=int, default=16, help="rows for the end-to-end feature timing (0 skips it)")
    parser.add_argument("--projection_dim", type=int, default=8192)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--memory_json", help=argparse.SUPPRESS)  # internal: the memory-measuring child
    args = parser.parse_args()
    device = torch.device(args.device)
    memory_only = args.memory_json is not None

    started = time.perf_counter()
    model, tokenizer = load_causal_lm(args.model)
    model.to(device)
    load_seconds = time.perf_counter() - started
    pool = build_multisource_pool(max_per_source=max(args.examples, args.feature_examples), max_chars=4000, seed=0)
    pool = pool.shuffle(seed=0).select(range(max(args.examples, args.feature_examples)))
    selector = get_selector(
        "less", model=model, tokenizer=tokenizer, max_length=args.seq, batch_size=args.batch,
        projection_dim=args.projection_dim, warmup_epochs=1, warmup_fraction=args.batch / len(pool), show_progress=False,
    )
    lora_model = selector.selection_model()
    del model  # LESS works on its own copy
    token_ids = selector.encode(pool)[: args.examples]
    batches = list(selector._batcher().batches(token_ids))
    paths = {name: PerExampleGradients(lora_model, name) for name in ("linear", "vmap", "loop")}
    default = PerExampleGradients(lora_model).method
    seconds = {name: 0.0 for name in paths}
    peak = {name: 0 for name in paths}
    max_difference = {name: 0.0 for name in paths}
    max_gradient = 0.0
    for path in paths.values():  # first-call setup
        path(batches[-1].input_ids[:2].to(device), batches[-1].attention_mask[:2].to(device))
    names = list(paths)
    # The memory child needs one batch: the first is the longest (the batcher sorts by length).
    for number, batch in enumerate(batches[:1] if memory_only else batches):
        ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
        order = names[number % len(names):] + names[: number % len(names)]
        grads = {}
        for name in order:
            with PeakMemory(device) as memory:
                begin = time.perf_counter()
                grads[name] = paths[name](ids, mask)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds[name] += time.perf_counter() - begin
            peak[name] = max(peak[name], memory.added)
        for name in paths:
            max_difference[name] = max(max_difference[name], float((grads[name] - grads["loop"]).abs().max()))
        max_gradient = max(max_gradient, float(grads["loop"].abs().max()))
        print(f"batch {number + 1}/{len(batches)} {tuple(batch.shape)}: " + ", ".join(f"{n} {seconds[n]:.1f}s" for n in paths), flush=True)
        del grads

    if memory_only:
        memory = {"peak": peak}
        if args.feature_examples:
            rows = selector.encode(pool)[: args.feature_examples]
            checkpoints, _ = selector.warmup(selector.encode(pool))
            with PeakMemory(device) as feature_memory:
                selector.gradient_features(rows, checkpoints[-1], optimizer_aware=True)
            memory["feature"] = feature_memory.added
        Path(args.memory_json).write_text(json.dumps(memory))
        return
    if device.type == "cpu":
        peak, feature_peak = measure_memory_in_child()
    else:
        feature_peak = None
    speedups = {name: seconds["loop"] / seconds[name] for name in paths}
    speedup = speedups[default]
    lengths = [len(ids) for ids in token_ids]
    result = {
        "model": args.model,
        "device": str(device),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, threads {torch.get_num_threads()}",
        "lora": {"rank": selector.config.lora_r, "target_modules": list(selector.config.lora_target_modules), "params": selector.num_lora_params()},
        "examples": len(token_ids),
        "batch_size": args.batch,
        "max_tokens": args.seq,
        "mean_tokens": float(np.mean(lengths)),
        "load_seconds": load_seconds,
        "default_method": default,
        "examples_per_s": {name: len(token_ids) / seconds[name] for name in paths},
        "speedup_over_loop": speedups,
        "speedup": speedup,
        "goal_speedup": GOAL_SPEEDUP,
        "meets_goal": speedup >= GOAL_SPEEDUP,
        "peak_added_mib": {name: peak[name] / 2**20 for name in paths},
        "max_abs_difference_from_loop": max_difference,
        "max_abs_gradient": max_gradient,
    }

    if args.feature_examples:
        rows = selector.encode(pool)[: args.feature_examples]
        checkpoints, _ = selector.warmup(selector.encode(pool))
        with PeakMemory(device) as memory:
            begin = time.perf_counter()
            features, flops = selector.gradient_features(rows, checkpoints[-1], optimizer_aware=True)
            feature_seconds = time.perf_counter() - begin
        projection = selector.projection()
        begin = time.perf_counter()
        projection(torch.zeros(1, projection.input_dim, device=device))
        projection_seconds = time.perf_counter() - begin  # regenerating the whole matrix once
        result.update(
            feature_examples=len(rows),
            projection_dim=args.projection_dim,
            feature_examples_per_s=len(rows) / feature_seconds,
            feature_peak_added_mib=(memory.added if feature_peak is None else feature_peak) / 2**20,
            projection_matrix_seconds=projection_seconds,
            projection_matrix_would_be_gib=projection.input_dim * projection.output_dim * 4 / 2**30,
            projection_chunk_mib=projection.chunk_rows * projection.output_dim * 4 / 2**20,
            feature_flops=flops,
            feature_flops_match_estimate=bool(np.isclose(flops, selector.feature_flops(rows), rtol=1e-9)),
            features_unit_norm=bool(np.allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-4)),
        )

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "less_speed.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    lines = [
        "# LESS per-example gradients: batched paths vs a per-example loop",
        "",
        f"{result['model']} with LoRA rank {result['lora']['rank']} on {', '.join(result['lora']['target_modules'])} "
        f"({result['lora']['params']:,} trainable parameters), {result['examples']} pool rows, batch {args.batch}, "
        f"<= {args.seq} tokens (mean {result['mean_tokens']:.0f}); {result['device']}; {result['machine']}.",
        "",
        "| path | examples/s | speed-up over the loop | peak memory added per batch | max abs difference from the loop |",
        "|---|---|---|---|---|",
    ]
    titles = {"linear": "linear: one batched backward, per-example LoRA grads from layer inputs x output grads",
              "vmap": "vmap(grad) over the batch", "loop": "loop: one backward per example"}
    for name in paths:
        lines.append(f"| {titles[name]}{' (default)' if name == default else ''} | {result['examples_per_s'][name]:.3f} | "
                     f"{speedups[name]:.2f}x | {peak[name] / 2**20:.0f} MiB | {max_difference[name]:.2e} |")
    lines += [
        "",
        f"Default path ({default}) speed-up {speedup:.2f}x (goal >= {GOAL_SPEEDUP:.0f}x: "
        f"{'met' if result['meets_goal'] else 'NOT met'}). Largest gradient entry {max_gradient:.2e}.",
    ]
    if args.feature_examples:
        lines += [
            "",
            f"End to end (gradients + Adam direction + projection to {args.projection_dim}): "
            f"{result['feature_examples_per_s']:.3f} examples/s on {result['feature_examples']} rows, "
            f"peak memory added {result['feature_peak_added_mib']:.0f} MiB. The full projection matrix would take "
            f"{result['projection_matrix_would_be_gib']:.1f} GiB; it is generated in {result['projection_chunk_mib']:.0f} MiB "
            f"chunks, {result['projection_matrix_seconds']:.1f} s per pass over it (once per gradient buffer). "
            f"FLOP charge equals the up-front estimate: {result['feature_flops_match_estimate']}.",
        ]
    (RESULTS / "less_speed.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
