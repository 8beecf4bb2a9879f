"""The GPU check's CPU dry run (`benchmarks/gpu_check.py --device cpu --quick`) runs every part, so
the script cannot rot while no GPU is lent."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    report = json.loads((tmp_path / "gpu_check_dry_run.json").read_text())
    assert (tmp_path / "gpu_check_dry_run.md").read_text().startswith("# GPU check on ")
    lora = [row for row in report["finetunes"] if row["mode"] == "lora"]
    assert {row["trainer"] for row in lora} == {"trainer", "sft"}
    for row in lora:  # the ledger's training charge equals FlopCounterMode's count (eager attention)
        assert row["within_tolerance"], row
        assert row["tokens_trained"] > 0 and row["tokens_per_second"] > 0
    assert any(row["mode"] == "qlora" and row["charged_train_flops"] > 0 for row in report["finetunes"])
    selectors = {row["selector"]: row for row in report["selectors"]}
    for name in ("embedding", "perplexity", "less"):
        assert selectors[name]["rows_per_second"] > 0 and selectors[name]["flops"] > 0
