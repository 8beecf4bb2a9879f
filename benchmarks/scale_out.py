"""Scale-out and caching of selector scoring, with the real default LM (SmolLM2-135M).

Scores the same pool (1) in one process, (2) in two processes started by ``accelerate launch``
(CPU processes over gloo here; one GPU per process on a GPU machine), (3) again from the cache the
first run wrote (perplexity: the score cache; LESS: the pool feature index). Reports wall time of
``select`` (model loading excluded), FLOPs charged, and whether the chosen rows are identical.

    python benchmarks/scale_out.py [--rows 96] [--max-length 128] [--shard-size 16]
    python benchmarks/scale_out.py --selector less --rows 256 --max-length 64 --shard-size 32

Writes benchmarks/results/scale_out.{json,md} (perplexity) or scale_out_less.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS, make_parser, write_json, write_markdown

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def worker(args: argparse.Namespace) -> None:
    """One process's share of the scoring; the main process writes the timing."""
    import torch

    from hf_cads import get_selector
    from hf_cads.data import build_multisource_pool
    from hf_cads.distributed import current_processes
    from hf_cads.models import load_causal_lm

    processes = current_processes()
    pool = build_multisource_pool("boolean_expressions", max_per_source=args.rows, max_chars=800, seed=0)
    pool = pool.select(range(min(args.rows, len(pool))))
    model, tokenizer = load_causal_lm("smollm2-135m-instruct")
    if args.selector == "less":
        from hf_cads.data import load_bbh_target

        target = load_bbh_target(args.target_task)[1].select(range(8))
        selector = get_selector(
            "less",
            model=model,
            tokenizer=tokenizer,
            max_length=args.max_length,
            shard_size=args.shard_size,
            batch_size=8,
            warmup_epochs=1,
            warmup_fraction=0.05,
            feature_dir=args.cache_dir,
            show_progress=False,
        )
    else:
        target = None
        selector = get_selector(
            "perplexity",
            model=model,
            tokenizer=tokenizer,
            max_length=args.max_length,
            shard_size=args.shard_size,
            cache_dir=args.cache_dir,
            show_progress=False,
        )
    processes.barrier()
    start = time.perf_counter()
    result = selector.select(pool, target, k=max(1, len(pool) // 10))
    seconds = time.perf_counter() - start
    if processes.is_main:
        Path(args.out).write_text(
            json.dumps(
                {
                    "processes": processes.world_size,
                    "threads_per_process": torch.get_num_threads(),
                    "rows": len(pool),
                    "seconds": seconds,
                    "rows_per_second": len(pool) / seconds,
                    "flops": result.flops,
                    "indices": result.indices.tolist(),
                    "scores": [float(x) for x in result.all_scores],
                    "cache": result.extras.get("cache") or result.extras.get("feature_index"),
                    "rows_scored_per_process": (result.extras.get("sharding") or {}).get("rows_scored_per_process"),
                }
            )
        )


def run(command: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--selector", choices=("perplexity", "less"), default="perplexity")
    parser.add_argument("--target-task", default="boolean_expressions", help="LESS: the BBH target task")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    scratch = Path(tempfile.mkdtemp(prefix="hf_cads_scale_out_"))
    script = [
        str(Path(__file__).resolve()),
        "--worker",
        "--rows",
        str(args.rows),
        "--max-length",
        str(args.max_length),
        "--shard-size",
        str(args.shard_size),
        "--selector",
        args.selector,
    ]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launch = [
        shutil.which("accelerate") or "accelerate",
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
    ]
    runs = {
        "1 process": [
            sys.executable,
            *script,
            "--cache-dir",
            str(scratch / "cache"),
            "--out",
            str(scratch / "one.json"),
        ],
        "2 processes": [*launch, *script, "--cache-dir", str(scratch / "cache2"), "--out", str(scratch / "two.json")],
        "1 process, cached rerun": [
            sys.executable,
            *script,
            "--cache-dir",
            str(scratch / "cache"),
            "--out",
            str(scratch / "hit.json"),
        ],
    }
    if args.selector == "less":
        # The feature index is keyed by pool, model, warmup and projection, not by target: a second
        # target on the same pool pays only for its own gradients.
        runs["1 process, cached rerun"] = [
            sys.executable,
            *script,
            "--cache-dir",
            str(scratch / "cache"),
            "--target-task",
            "dyck_languages",
            "--out",
            str(scratch / "hit.json"),
        ]
    rows = {}
    for name, command in runs.items():
        print(f"running: {name}", flush=True)
        run(command, env)
    for name, file in zip(runs, ("one.json", "two.json", "hit.json")):
        rows[name] = json.loads((scratch / file).read_text())
    if args.selector == "less":
        rows["1 process, second target (dyck_languages), feature index reused"] = rows.pop("1 process, cached rerun")
    reference = rows["1 process"]
    scale = max(abs(x) for x in reference["scores"]) or 1.0

    def score_difference(row: dict) -> float:
        return max(abs(a - b) for a, b in zip(row["scores"], reference["scores"])) / scale

    report = {
        "machine": {"cpu": platform.machine(), "cores": os.cpu_count(), "python": platform.python_version()},
        "settings": vars(args) | {"model": "smollm2-135m-instruct"},
        "runs": {
            name: {k: v for k, v in row.items() if k not in ("indices", "scores")}
            | {
                "same_indices": row["indices"] == reference["indices"],
                "max_score_difference_rel": score_difference(row),
            }
            for name, row in rows.items()
        },
    }
    second = report["runs"].get("1 process, second target (dyck_languages), feature index reused")
    if second:
        second["flops_vs_first_target"] = second["flops"] / reference["flops"]
    stem = "scale_out" if args.selector == "perplexity" else f"scale_out_{args.selector}"
    RESULTS.mkdir(exist_ok=True)
    write_json(stem, report)
    lines = [
        f"{args.selector} selector on SmolLM2-135M-Instruct.",
        "",
        "| run | processes x threads | rows/s | select s | FLOPs charged | rows scored per process | same rows as 1 "
        "process | max score difference / max abs score |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in report["runs"].items():
        lines.append(
            f"| {name} | {row['processes']} x {row['threads_per_process']} | {row['rows_per_second']:.2f} | "
            f"{row['seconds']:.2f} | "
            f"{row['flops']:.4g} | {row['rows_scored_per_process']} | {row['same_indices']} | "
            f"{row['max_score_difference_rel']:.1e} |"
        )
    lines.append(
        f"\nMachine: {report['machine']}; {args.rows} rows, max_length {args.max_length}, shard_size "
        f"{args.shard_size}."
    )
    if second:
        lines.append(
            f"A second target on the same pool reuses the pool features: it is charged {second['flops']:.4g} FLOPs, "
            f"{second['flops_vs_first_target']:.1%} of the first target's selection (its rows differ: another target)."
        )
    write_markdown(stem, lines)
    print("\n".join(lines))
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
