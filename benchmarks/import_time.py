"""Start-up time of the light entry points, as a multiple of `python -c "import datasets"`.

Target (issue 35.4): `hf-cads --help`, `hf-cads selectors` and `hf-cads plan RUNS --budget B` start
in at most 2x the time of importing `datasets`. Each command runs ``--repeats`` times in a fresh
interpreter; the median wall time is reported.

    python benchmarks/import_time.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

RECORDS = Path(__file__).parent / "results" / "compute_optimal_full_runs.jsonl"
ONE_CELL = ["--model", "smollm2-135m-instruct", "--target", "gsm8k"]
"""The records hold six (model, target) cells; `plan` fits one."""


def median_seconds(command: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()
    cli = [sys.executable, "-m", "hf_cads.cli"]
    commands = {
        'python -c "import datasets"': [sys.executable, "-c", "import datasets"],
        'python -c "import hf_cads"': [sys.executable, "-c", "import hf_cads"],
        "hf-cads --help": [*cli, "--help"],
        "hf-cads selectors": [*cli, "selectors"],
        f"hf-cads plan {RECORDS.name} --budget 1e15 {' '.join(ONE_CELL)}": [
            *cli,
            "plan",
            str(RECORDS),
            "--budget",
            "1e15",
            *ONE_CELL,
        ],
    }
    baseline = None
    print(f"| command | median s ({options.repeats} runs) | x import datasets |")
    print("|---|---:|---:|")
    for label, command in commands.items():
        seconds = median_seconds(command, options.repeats)
        baseline = baseline or seconds
        print(f"| `{label}` | {seconds:.2f} | {seconds / baseline:.2f} |")


if __name__ == "__main__":
    main()
