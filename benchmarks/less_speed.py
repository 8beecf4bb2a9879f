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

With ``--paths`` (slow) the gradient paths above are measured; otherwise the earlier measurement is
kept from the results file. The default run measures LESS's projections at pool scale:

- **throughput**: on ``--pool_rows`` pool rows (default 1,000), chunk by chunk, per-example
  gradients alone vs :meth:`LESSSelector.gradient_features` (gradients + Adam direction +
  projection + normalisation, the real code path) with the sparse projection; the dense
  projections (one pass over the chunk-regenerated matrix per gradient buffer) on the first
  ``--dense_rows`` rows, whose per-row cost does not change with the pool size. Gradient-only and
  feature timings alternate on the same chunks, so load from other processes hits both alike.
- **peak memory** added by ``gradient_features`` on one batch and on ``--memory_rows`` rows (a child
  process with a fixed glibc mmap threshold, as above): bounded by the batch, not the rows.
- **quality gate** on ``--gate_rows`` pool rows (Adam directions after a warmup epoch) and 8
  target rows (gradients): Pearson correlation of exact vs projected pairwise cosines (goal >=
  0.95) and overlap of the top-5% (by mean cosine with the target, as LESS scores) with a dense
  Gaussian projection's (goal >= 90%), for 3 seeds of each projection.

    nice python benchmarks/less_speed.py [--pool_rows 1000] [--seq 32] [--dense_rows 64]
    nice python benchmarks/less_speed.py --pool_rows 128 --gate_rows 32     # a quick run

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
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# On CPU, glibc keeps freed heap memory (and raises its mmap threshold as it goes), so the resident
# set stays at the largest path's peak and later paths seem to need nothing. Peak memory is therefore
# measured in a second process with a fixed mmap threshold (large buffers go back to the system at
# once); speed is measured here, with the default allocator, since the fixed threshold adds page faults.
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import RESULTS, write_json, write_markdown  # noqa: E402

from hf_cads import get_selector  # noqa: E402
from hf_cads.data import build_multisource_pool, load_bbh_target  # noqa: E402
from hf_cads.models import load_causal_lm  # noqa: E402
from hf_cads.selectors.less.gradients import PerExampleGradients, adam_update_direction  # noqa: E402
from hf_cads.selectors.less.projection import (  # noqa: E402
    PROJECTION_TYPES,
    Projection,
    RandomProjection,
    make_projection,
)

GOAL_SPEEDUP = 3.0
GOAL_FEATURE_RATIO = 0.8  # end-to-end feature throughput / gradient-only throughput
GOAL_CORRELATION = 0.95
GOAL_OVERLAP = 0.9


def projection_agreement(
    pool_vectors: Any, target_vectors: Any, projection: Projection, reference: Projection, top_fraction: float = 0.05
) -> dict[str, float]:
    """How closely ``projection`` keeps what selection by gradient similarity uses.

    - ``cosine_correlation``: Pearson correlation between the exact pairwise cosine similarities
      of all (pool and target) vectors and those of their projections (distinct pairs only);
    - ``top_overlap``: rows are scored as LESS does, by their mean cosine with the target vectors;
      the share of the top ``top_fraction`` of the pool (at least one row) under ``projection``
      that is also in the top under ``reference`` (e.g. the dense Gaussian projection);
    - ``top_overlap_exact``: the same against the scores of the unprojected vectors;
    - ``top_exact_score_gain``: the exact mean score of the chosen rows above the pool's mean, as a
      share of the exact top's (1.0: as good as selecting with unprojected gradients).

    Example:
        >>> import torch
        >>> from hf_cads.selectors.less.projection import RandomProjection, SparseProjection
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> basis = torch.randn(8, 5000)  # gradients share a few directions, so their cosines vary
        >>> pool, target = torch.randn(40, 8) @ basis, torch.randn(4, 8) @ basis
        >>> sparse, gaussian = SparseProjection(5000, 1024), RandomProjection(5000, 1024, kind="gaussian")
        >>> agreement = projection_agreement(pool, target, sparse, gaussian)
        >>> agreement["cosine_correlation"] > 0.95, agreement["top_exact_score_gain"] > 0.9
        (True, True)
    """
    import torch

    vectors = torch.cat([pool_vectors, target_vectors]).float()
    rows = pool_vectors.shape[0]

    def cosine_matrix(x: Any) -> Any:
        # From the Gram matrix, so no normalised copy of the (possibly pool x millions) vectors is made.
        gram = (x @ x.T).double()
        norms = gram.diagonal().clamp_min(1e-300).sqrt()
        return gram / norms[:, None] / norms[None, :]

    def project_in_row_chunks(x: Any, rows_per_call: int = 256) -> Any:
        # Projections are row-wise linear maps; chunking bounds their intermediates by the chunk.
        return torch.cat([projection(x[start : start + rows_per_call]) for start in range(0, len(x), rows_per_call)])

    exact, projected, referenced = (
        cosine_matrix(vectors),
        cosine_matrix(project_in_row_chunks(vectors)),
        cosine_matrix(reference(vectors)),
    )
    pairs = torch.triu_indices(len(vectors), len(vectors), offset=1)

    def cosines(x: Any) -> Any:
        return x[pairs[0], pairs[1]]

    correlation = float(torch.corrcoef(torch.stack([cosines(exact), cosines(projected)]))[0, 1])
    k = max(1, int(round(top_fraction * rows)))

    def scores(x: Any) -> Any:  # LESS's score: mean cosine with the target rows
        return x[:rows, rows:].mean(dim=1)

    def top(row_scores: Any) -> set[int]:
        return set(torch.topk(row_scores, k).indices.tolist())

    exact_scores = scores(exact)
    chosen, exact_top = top(scores(projected)), top(exact_scores)
    best = exact_scores[sorted(exact_top)].mean()
    return {
        "cosine_correlation": correlation,
        "top_overlap": len(chosen & top(scores(referenced))) / k,
        "top_overlap_exact": len(chosen & exact_top) / k,
        # How much of the best achievable gain in exact score over the pool mean the chosen rows keep:
        # 1.0 when they are as good as the exact top, 0.0 when no better than a random subset.
        "top_exact_score_gain": float(
            (exact_scores[sorted(chosen)].mean() - exact_scores.mean()) / (best - exact_scores.mean())
        ),
        "top_rows": float(k),
    }


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

    def __enter__(self) -> PeakMemory:
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


def machine_load() -> str:
    """The 1/5/15-minute load averages and the CPU count, to judge timings on a shared machine."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} (1/5/15 min) on {os.cpu_count()} CPUs"


def run_child(extra: list[str]) -> dict:
    """Rerun this script in a child process with :data:`MEMORY_ENV`; what it wrote."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "memory.json"
        subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], *extra, "--memory_json", str(out)],
            env={**os.environ, **MEMORY_ENV},
            check=True,
        )
        return json.loads(out.read_text())


def timed(device: torch.device, work) -> float:
    begin = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - begin


def measure_paths(args, selector, pool, device, memory_only: bool) -> dict:
    """Part 1: the per-example gradient paths against the loop (examples/s, memory, difference)."""
    lora_model = selector.selection_model()
    token_ids = selector.encode(pool)[: args.examples]
    batches = list(selector._batcher().batches(token_ids))
    paths = {name: PerExampleGradients(lora_model, name) for name in ("linear", "vmap", "loop")}
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
        order = names[number % len(names) :] + names[: number % len(names)]
        grads = {}
        for name in order:
            with PeakMemory(device) as memory:
                seconds[name] += timed(
                    device,
                    lambda grads=grads, name=name, ids=ids, mask=mask: grads.__setitem__(name, paths[name](ids, mask)),
                )
            peak[name] = max(peak[name], memory.added)
        for name in paths:
            max_difference[name] = max(max_difference[name], float((grads[name] - grads["loop"]).abs().max()))
        max_gradient = max(max_gradient, float(grads["loop"].abs().max()))
        print(
            f"batch {number + 1}/{len(batches)} {tuple(batch.shape)}: "
            + ", ".join(f"{n} {seconds[n]:.1f}s" for n in paths),
            flush=True,
        )
        del grads
    if memory_only:
        return {"peak": peak}
    if device.type == "cpu":
        peak = run_child(["--memory_part", "paths"])["peak"]
    speedups = {name: seconds["loop"] / seconds[name] for name in paths}
    default = PerExampleGradients(lora_model).method
    return {
        "examples": len(token_ids),
        "batch_size": args.batch,
        "max_tokens": args.seq,
        "mean_tokens": float(np.mean([len(ids) for ids in token_ids])),
        "default_method": default,
        "examples_per_s": {name: len(token_ids) / seconds[name] for name in paths},
        "speedup_over_loop": speedups,
        "speedup": speedups[default],
        "goal_speedup": GOAL_SPEEDUP,
        "meets_goal": speedups[default] >= GOAL_SPEEDUP,
        "peak_added_mib": {name: peak[name] / 2**20 for name in paths},
        "max_abs_difference_from_loop": max_difference,
        "max_abs_gradient": max_gradient,
        "machine_load": machine_load(),
    }


def measure_feature_memory(args, selector, token_ids, checkpoint, device) -> dict:
    """Peak memory added by gradient_features on one batch and on ``memory_rows`` rows, per projection."""
    peaks = {}
    for kind in PROJECTION_TYPES:
        selector.config.projection_type = kind
        selector.projection()  # the sparse hashes are built once per selector, outside the measured block
        for rows in (args.batch, args.memory_rows):
            with PeakMemory(device) as memory:
                selector.gradient_features(token_ids[:rows], checkpoint, optimizer_aware=True)
            peaks[f"{kind}/{rows}"] = memory.added
    return peaks


def measure_projections(args, selector, token_ids, checkpoint, device) -> dict:
    """Part 2: rows/s of gradients alone vs the whole feature step, per projection, on the same chunks."""
    lora_model = selector.selection_model()
    gradients = PerExampleGradients(lora_model)
    batcher = selector._batcher()

    def gradient_only(rows):
        for batch in batcher.batches(rows):
            gradients(batch.input_ids.to(device), batch.attention_mask.to(device))

    def features(kind, rows):
        selector.config.projection_type = kind
        selector.gradient_features(rows, checkpoint, optimizer_aware=True)

    chunks = [token_ids[start : start + args.chunk] for start in range(0, len(token_ids), args.chunk)]
    for kind in PROJECTION_TYPES:  # first-call setup (the sparse hashes, allocator warm-up)
        features(kind, token_ids[:2])
    out = {}
    for kind in PROJECTION_TYPES:
        limit = len(token_ids) if kind == "sparse" else args.dense_rows
        seconds = {"gradients": 0.0, "features": 0.0}
        rows_done = 0
        for number, chunk in enumerate(chunks):
            if rows_done >= limit:
                break
            steps = [
                ("gradients", lambda chunk=chunk: gradient_only(chunk)),
                ("features", lambda kind=kind, chunk=chunk: features(kind, chunk)),
            ]
            for name, work in steps if number % 2 == 0 else steps[::-1]:
                seconds[name] += timed(device, work)
            rows_done += len(chunk)
            print(
                f"{kind}: {rows_done}/{limit} rows, gradients {rows_done / seconds['gradients']:.2f} rows/s, "
                f"features {rows_done / seconds['features']:.2f} rows/s ({machine_load()})",
                flush=True,
            )
        projection = make_projection(kind, selector.num_lora_params(), args.projection_dim, 0)
        out[kind] = {
            "rows": rows_done,
            "gradient_rows_per_s": rows_done / seconds["gradients"],
            "feature_rows_per_s": rows_done / seconds["features"],
            "ratio": seconds["gradients"] / seconds["features"],
            "projection_flops_per_row": projection.flops(1),
        }
    out["machine_load_after"] = machine_load()
    return out


def quality_gate(args, selector, token_ids, target_ids, checkpoint, device) -> dict:
    """Part 3: do the projections keep the cosine similarities and LESS's top-5% choice?"""
    lora_model = selector.selection_model()
    selector._load_weights(checkpoint)
    gradients = PerExampleGradients(lora_model)
    batcher = selector._batcher()

    def exact(rows, optimizer_aware):
        out = torch.zeros(len(rows), gradients.num_params, device=device)
        moments = checkpoint.flat_moments(gradients.names, device)
        for batch in batcher.batches(rows):
            grads = gradients(batch.input_ids.to(device), batch.attention_mask.to(device)).float()
            if optimizer_aware:
                grads = adam_update_direction(
                    grads, *moments, step=checkpoint.step, betas=checkpoint.betas, eps=checkpoint.eps
                )
            out[torch.as_tensor(batch.rows, device=device)] = grads
        return out

    cache = Path(args.gate_cache) if args.gate_cache else None
    if cache is not None and cache.exists():
        stacked, rows = torch.load(cache)
        print(f"exact gradients of {rows} pool rows read from {cache}", flush=True)
    else:
        pool_vectors = exact(token_ids[: args.gate_rows], True)
        stacked, rows = torch.cat([pool_vectors, exact(target_ids, False)]), len(pool_vectors)
        del pool_vectors  # one copy of pool x parameters is what fits at 1,000 rows
        if cache is not None:
            torch.save((stacked, rows), cache)
    pool_vectors, target_vectors = stacked[:rows], stacked[rows:]
    dim = gradients.num_params
    reference = RandomProjection(dim, args.projection_dim, seed=1000, kind="gaussian")
    referenced = reference(stacked)  # one pass over the dense matrix, reused for every comparison

    def cached(vectors):
        assert vectors.shape == stacked.shape
        return referenced

    gate = {
        "pool_rows": len(pool_vectors),
        "target_rows": len(target_vectors),
        "projection_dim": args.projection_dim,
        "reference": "gaussian, seed 1000",
        "by_projection": {},
    }
    rows = [(kind, args.projection_dim) for kind in PROJECTION_TYPES]
    rows += [("sparse", dims) for dims in args.gate_dims if dims != args.projection_dim]
    for kind, dims in rows:
        seeds = range(3) if kind == "sparse" else range(1)  # a dense pass over 1,000 rows costs minutes here
        runs = [
            projection_agreement(pool_vectors, target_vectors, make_projection(kind, dim, dims, seed), cached)
            for seed in seeds
        ]
        name = kind if dims == args.projection_dim else f"{kind}, {dims} dims"
        gate["by_projection"][name] = {
            "kind": kind,
            "dims": dims,
            "seeds": len(runs),
            "cosine_correlation_min": min(r["cosine_correlation"] for r in runs),
            "top_overlap_mean": float(np.mean([r["top_overlap"] for r in runs])),
            "top_overlap_exact_mean": float(np.mean([r["top_overlap_exact"] for r in runs])),
            "top_exact_score_gain_mean": float(np.mean([r["top_exact_score_gain"] for r in runs])),
            "top_rows": runs[0]["top_rows"],
        }
        print(name, gate["by_projection"][name], flush=True)
    sparse = gate["by_projection"]["sparse"]
    gate["sparse_passes"] = bool(
        sparse["cosine_correlation_min"] >= GOAL_CORRELATION and sparse["top_overlap_mean"] >= GOAL_OVERLAP
    )
    return gate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", action="store_true", help="also rerun part 1 (gradient paths vs the loop; slow)")
    parser.add_argument("--examples", type=int, default=32, help="part 1: rows")
    parser.add_argument("--seq", type=int, default=32, help="max tokens per row (longer rows are truncated)")
    parser.add_argument("--paths_seq", type=int, default=128, help="part 1: max tokens per row")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--pool_rows", type=int, default=1000, help="part 2: rows timed with the sparse projection")
    parser.add_argument("--dense_rows", type=int, default=64, help="part 2: rows timed with each dense projection")
    parser.add_argument("--chunk", type=int, default=64, help="part 2: rows per gradient_features call")
    parser.add_argument("--memory_rows", type=int, default=64, help="part 2: rows of the larger memory measurement")
    parser.add_argument("--gate_rows", type=int, default=64, help="part 3: pool rows of the quality gate (0 skips it)")
    parser.add_argument("--projection_dim", type=int, default=8192)
    parser.add_argument("--gate_cache", help="part 3: file to keep the exact gradients in (reused when it exists)")
    parser.add_argument(
        "--gate_dims",
        type=int,
        nargs="*",
        default=[32768, 131072],
        help="part 3: further sparse-projection dimensions to gate (the sparse cost does not grow with them)",
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--memory_json", help=argparse.SUPPRESS)  # internal: the memory-measuring child
    parser.add_argument("--memory_part", choices=("paths", "features"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    memory_only = args.memory_json is not None

    started = time.perf_counter()
    model, tokenizer = load_causal_lm(args.model)
    model.to(device)
    load_seconds = time.perf_counter() - started
    rows = max(args.examples, args.pool_rows, args.gate_rows, args.memory_rows)
    pool = build_multisource_pool(max_per_source=rows // 3 + 1, max_chars=4000, seed=0)
    if len(pool) < rows:
        raise SystemExit(f"the pool has {len(pool)} rows, fewer than the {rows} asked for")
    pool = pool.shuffle(seed=0).select(range(rows))

    def make_selector(seq):
        return get_selector(
            "less",
            model=model,
            tokenizer=tokenizer,
            max_length=seq,
            batch_size=args.batch,
            projection_dim=args.projection_dim,
            warmup_epochs=1,
            warmup_fraction=args.batch / len(pool),
            show_progress=False,
        )

    if args.paths and args.memory_part != "features":
        paths_selector = make_selector(args.paths_seq)
        paths = measure_paths(args, paths_selector, pool, device, memory_only)
        if memory_only:
            Path(args.memory_json).write_text(json.dumps(paths))
            return
    selector = make_selector(args.seq)
    token_ids = selector.encode(pool)
    checkpoint = selector.warmup(token_ids)[0][-1]
    if memory_only:
        Path(args.memory_json).write_text(
            json.dumps(measure_feature_memory(args, selector, token_ids, checkpoint, device))
        )
        return

    previous = json.loads((RESULTS / "less_speed.json").read_text()) if (RESULTS / "less_speed.json").exists() else {}
    if not args.paths:
        paths = previous.get("gradient_paths") or {
            k: previous[k]
            for k in (
                "examples",
                "batch_size",
                "max_tokens",
                "mean_tokens",
                "default_method",
                "examples_per_s",
                "speedup_over_loop",
                "speedup",
                "goal_speedup",
                "meets_goal",
                "peak_added_mib",
                "max_abs_difference_from_loop",
                "max_abs_gradient",
            )
            if k in previous
        }
        paths.setdefault("note", "measured in an earlier run (rerun with --paths)")
    selector.config.projection_type = "sparse"
    charged = selector.gradient_features(token_ids[: args.batch], checkpoint, optimizer_aware=True)[1]
    result = {
        "model": args.model,
        "device": str(device),
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"threads {torch.get_num_threads()}"
        ),
        "machine_load_before": machine_load(),
        "lora": {
            "rank": selector.config.lora_r,
            "target_modules": list(selector.config.lora_target_modules),
            "params": selector.num_lora_params(),
        },
        "load_seconds": load_seconds,
        "gradient_paths": paths,
        "projection_dim": args.projection_dim,
        "max_tokens": args.seq,
        "mean_tokens": float(np.mean([len(ids) for ids in token_ids[: args.pool_rows]])),
        "batch_size": args.batch,
        "projections": previous.get("projections") if not args.pool_rows else None,
        "goal_feature_ratio": GOAL_FEATURE_RATIO,
        "quality_gate": previous.get("quality_gate") if not args.gate_rows else None,
        "feature_flops_match_estimate": bool(
            np.isclose(charged, selector.feature_flops(token_ids[: args.batch]), rtol=1e-9)
        ),
    }
    # Parts are written as they finish, so a run cut short on a loaded machine keeps what it measured.
    if args.gate_rows:
        target_ids = selector.encode(load_bbh_target("boolean_expressions")[1].select(range(8)), "target")
        result["quality_gate"] = quality_gate(args, selector, token_ids, target_ids, checkpoint, device)
        write_results(result, args)
    if args.pool_rows:
        projections = measure_projections(args, selector, token_ids[: args.pool_rows], checkpoint, device)
        result["projections"] = projections
        write_results(result, args)
        memory = (
            run_child(["--memory_part", "features"])
            if device.type == "cpu"
            else measure_feature_memory(args, selector, token_ids, checkpoint, device)
        )
        for kind in PROJECTION_TYPES:
            projections[kind]["peak_added_mib"] = {
                "batch": memory[f"{kind}/{args.batch}"] / 2**20,
                f"{args.memory_rows}_rows": memory[f"{kind}/{args.memory_rows}"] / 2**20,
            }
        write_results(result, args)
    print("\n".join(render(result, args)))


def write_results(result: dict, args) -> None:
    RESULTS.mkdir(exist_ok=True)
    write_json("less_speed", result)
    write_markdown("less_speed", render(result, args))


def render(result: dict, args) -> list[str]:
    lora = result["lora"]
    lines = [
        "# LESS gradient features: projections at pool scale, and the per-example gradient paths",
        "",
        f"{result['model']} with LoRA rank {lora['rank']} on {', '.join(lora['target_modules'])} "
        f"({lora['params']:,} trainable "
        f"parameters), projection to {result['projection_dim']} dims; {result['device']}; {result['machine']}. "
        f"Machine load (shared with other jobs): before {result['machine_load_before']}"
        + (
            f"; after the throughput part {result['projections']['machine_load_after']}."
            if result.get("projections")
            else "."
        ),
    ]
    if result.get("projections"):
        lines += throughput_lines(result, args)
    lines += gate_and_paths_lines(result)
    return lines


def throughput_lines(result: dict, args) -> list[str]:
    lines = [
        "",
        f"## End-to-end features vs gradients alone ({result['projections']['sparse']['rows']} pool rows, <= "
        f"{result['max_tokens']} "
        f"tokens, mean {result['mean_tokens']:.0f}, batch {result['batch_size']})",
        "",
        "| projection | rows timed | gradients only, rows/s | gradient_features (grads + Adam + projection), rows/s "
        "| ratio | "
        "projection FLOPs per row | peak memory added: one batch | peak memory added: "
        f"{args.memory_rows} rows |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind in PROJECTION_TYPES:
        row = result["projections"][kind]
        peak = row.get("peak_added_mib")
        memory = (
            f"{peak['batch']:.0f} MiB | {peak[f'{args.memory_rows}_rows']:.0f} MiB"
            if peak
            else "not measured | not measured"
        )
        lines.append(
            f"| {kind}{' (default)' if kind == 'sparse' else ''} | {row['rows']} | {row['gradient_rows_per_s']:.2f} | "
            f"{row['feature_rows_per_s']:.2f} | {row['ratio']:.2f}x | {row['projection_flops_per_row']:.3g} | "
            f"{memory} |"
        )
    sparse = result["projections"]["sparse"]
    lines += [
        "",
        f"Goal: features >= {result['goal_feature_ratio']}x the gradient-only throughput; sparse: "
        f"{sparse['ratio']:.2f}x "
        f"({'met' if sparse['ratio'] >= result['goal_feature_ratio'] else 'NOT met'}). The dense projections "
        "regenerate "
        "their matrix once per gradient buffer, so their per-row cost does not fall with more rows; they were timed "
        "on "
        f"{result['projections']['gaussian']['rows']} rows. Gradient-only and feature timings alternate chunk by "
        "chunk. "
        f"FLOP charge of gradient_features equals the up-front estimate: {result['feature_flops_match_estimate']}.",
    ]
    return lines


def gate_and_paths_lines(result: dict) -> list[str]:
    lines: list[str] = []
    gate = result.get("quality_gate")
    if gate:
        lines += [
            "",
            f"## Quality gate ({gate['pool_rows']} pool rows as Adam directions after a warmup epoch, "
            f"{gate['target_rows']} target "
            f"rows, {gate['projection_dim']} dims; reference: {gate['reference']})",
            "",
            "| projection | seeds | min correlation of exact vs projected cosines | top-5% overlap with the dense "
            "Gaussian | "
            "top-5% overlap with the exact (unprojected) scores | exact-score gain of the chosen rows, share of the "
            "exact top's |",
            "|---|---|---|---|---|---|",
        ]
        for kind, row in gate["by_projection"].items():
            gain = row.get("top_exact_score_gain_mean")
            lines.append(
                f"| {kind} | {row['seeds']} | {row['cosine_correlation_min']:.4f} | {row['top_overlap_mean']:.0%} | "
                f"{row['top_overlap_exact_mean']:.0%} | {'' if gain is None else f'{gain:.3f}'} |"
            )
        lines += [
            "",
            f"Top-5% = {gate['by_projection']['sparse']['top_rows']:.0f} rows. Goals: correlation >= "
            f"{GOAL_CORRELATION}, "
            f"overlap >= {GOAL_OVERLAP:.0%}; sparse {'passes' if gate['sparse_passes'] else 'does NOT pass'}.",
        ]
    paths = result["gradient_paths"]
    if paths:
        titles = {
            "linear": "linear: one batched backward, per-example LoRA grads from layer inputs x output grads",
            "vmap": "vmap(grad) over the batch",
            "loop": "loop: one backward per example",
        }
        lines += [
            "",
            f"## Per-example gradient paths ({paths['examples']} rows, <= {paths['max_tokens']} tokens, mean "
            f"{paths['mean_tokens']:.0f}; {paths.get('note', 'this run')})",
            "",
            "| path | examples/s | speed-up over the loop | peak memory added per batch | max abs difference from "
            "the loop |",
            "|---|---|---|---|---|",
        ]
        for name in ("linear", "vmap", "loop"):
            lines.append(
                f"| {titles[name]}{' (default)' if name == paths['default_method'] else ''} | "
                f"{paths['examples_per_s'][name]:.3f} | {paths['speedup_over_loop'][name]:.2f}x | "
                f"{paths['peak_added_mib'][name]:.0f} MiB | {paths['max_abs_difference_from_loop'][name]:.2e} |"
            )
    return lines


if __name__ == "__main__":
    main()
