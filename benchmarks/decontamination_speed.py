"""Decontamination throughput: pool rows per second against 1,000 eval rows, on one thread.

The pool is real text (the shared multi-source pool: GSM8K train, Code Alpaca, Alpaca seeds, the 4 BBH tasks not
in the eval rows),
repeated to ``--rows`` rows (each made distinct by a row number), with 1% of the rows replaced by
copies of eval rows so that the matching path runs too. The eval rows are 500 GSM8K test rows and
the first 25 examples of each of 20 BBH tasks.

    OMP_NUM_THREADS=1 python benchmarks/decontamination_speed.py              # 1M pool rows
    OMP_NUM_THREADS=1 python benchmarks/decontamination_speed.py --rows 50000  # a quick run
"""

from __future__ import annotations

import argparse
import os
import random
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hf_cads.data import bbh_tasks, build_multisource_pool, load_bbh_examples, load_gsm8k  # noqa: E402
from hf_cads.decontamination import find_contamination  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="pool rows (default 1,000,000)")
    parser.add_argument("--data-dir", default=None, help="shared data folder (default: $HF_CADS_DATA_DIR)")
    args = parser.parse_args()
    tasks = bbh_tasks(args.data_dir)[:20]
    eval_rows = list(load_gsm8k("test", args.data_dir)["text"][:500])
    for task in tasks:
        eval_rows += load_bbh_examples(task, args.data_dir)["text"][:25]
    texts = build_multisource_pool(tasks, args.data_dir, max_chars=1200, seed=0)["text"]
    rng = random.Random(0)
    pool = [f"{texts[row % len(texts)]} {row}" for row in range(args.rows)]
    leaks = rng.sample(range(args.rows), args.rows // 100)
    for row in leaks:
        pool[row] = rng.choice(eval_rows)
    words = sum(len(text.split()) for text in pool[:10_000]) / min(10_000, args.rows)
    start, cpu_start = time.perf_counter(), time.process_time()
    report = find_contamination(pool, {"eval": eval_rows})
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    caught = len(set(leaks) & set(report.drop_rows))
    print(
        f"decontamination: {args.rows:,} pool rows (~{words:.0f} words each) x {len(eval_rows):,} eval rows in "
        f"{seconds:.1f} s = {args.rows / seconds:,.0f} rows/s on {os.environ['OMP_NUM_THREADS']} thread(s) "
        f"({args.rows / cpu_seconds:,.0f} rows per CPU second); "
        f"{len(report.drop_rows):,} rows flagged ({caught:,} of {len(leaks):,} planted copies)"
    )


if __name__ == "__main__":
    main()
