"""Real processes on the on-disk caches: two ``hf-cads select`` jobs started together on one
``cache_dir`` (and two LESS jobs on one ``feature_dir``) do the work once and both end with a single
run's results; a job stopped by SIGTERM while it scores keeps its finished shards, and a rerun
resumes from them. The jobs run tests/scripts/slow_select.py (``hf-cads`` with every scored batch
slowed down) so that they overlap while scoring on any machine.
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from datasets import load_dataset
from huggingface_hub import DatasetCard

from hf_cads.cache import ScoreCache
from hf_cads.cli import main
from hf_cads.selectors.less.feature_index import read_manifest

# Real processes racing on one folder: minutes on a loaded 2-core machine, so in the slow set.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "scripts" / "slow_select.py"
DELAY = 0.25  # seconds per scored batch: a few seconds of scoring per job
TIMEOUT = 300


@pytest.fixture(scope="module")
def task_files(small_pool, bbh_target, tmp_path_factory):
    """A 64-row real pool file and a 3-row target file."""
    folder = tmp_path_factory.mktemp("cache_processes")
    pool, target = folder / "pool.jsonl", folder / "target.jsonl"
    pool.write_text("".join(json.dumps({"text": t}) + "\n" for t in small_pool.shuffle(seed=0)["text"][:64]))
    target.write_text("".join(json.dumps({"text": t}) + "\n" for t in bbh_target[0]["text"]))
    return pool, target


def write_recipe(folder, model_dir, selector, selector_kwargs):
    recipe = yaml.safe_load((ROOT / "hf_cads" / "recipes" / "quickstart.yaml").read_text())
    for key in ("pool_sources", "max_per_source", "max_pool_chars", "selection_fraction", "selector_kwargs"):
        recipe.pop(key)
    recipe.update(
        model_name_or_path=str(model_dir),
        output_dir=str(folder / "out"),
        max_length=64,
        selector=selector,
        selector_kwargs=dict(selector_kwargs, show_progress=False),
        selection_k=12,
        decontaminate="off",
        flop_budget=1e14,
    )
    path = folder / f"{selector}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def start_select(recipe, task_files, local_dir):
    pool, target = task_files
    command = [sys.executable, str(SCRIPT), str(DELAY), "select", str(recipe), "--local-dir", str(local_dir)]
    command += ["--pool", str(pool), "--target", str(target)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)


def select_here(recipe, task_files, local_dir):
    pool, target = task_files
    argv = ["select", str(recipe), "--local-dir", str(local_dir), "--pool", str(pool), "--target", str(target)]
    assert main(argv) == 0


def finish(job):
    output, _ = job.communicate(timeout=TIMEOUT)
    assert job.returncode == 0, output
    return output


def card_entry(folder):
    (entry,) = DatasetCard.load(Path(folder) / "README.md").data.hf_cads
    return entry


def chosen_rows(folder):
    return load_dataset(str(folder), "default", split="train")["pool_index"]


def partial_files(folder):
    return [path for path in Path(folder).rglob("*") if path.name.endswith(".tmp")]


def test_two_select_jobs_on_one_cache_dir_score_once(tmp_path, tiny_model_dir, task_files):
    cache = tmp_path / "cache"
    recipe = write_recipe(tmp_path, tiny_model_dir, "perplexity", {"cache_dir": str(cache), "shard_size": 8})
    jobs = [start_select(recipe, task_files, tmp_path / f"job-{n}") for n in range(2)]
    for job in jobs:
        finish(job)
    first, second = (card_entry(tmp_path / f"job-{n}") for n in range(2))
    assert chosen_rows(tmp_path / "job-0") == chosen_rows(tmp_path / "job-1")
    # One job scored the pool; the other waited for it and read its scores (a cache hit: 0 FLOPs now,
    # and what computing them cost on its card).
    scored, reused = sorted((first, second), key=lambda entry: entry["flops"]["selection"], reverse=True)
    assert scored["flops"]["selection"] > 0 and reused["flops"]["selection"] == 0
    assert reused["flops"]["selection_when_computed"] == pytest.approx(scored["flops"]["selection"], rel=1e-12)
    assert scored["extras"]["cache"]["resumed_shards"] == 0  # the scoring job did all the work itself
    (folder,) = [path for path in cache.iterdir() if path.is_dir()]
    assert ScoreCache(folder).is_complete() and len(ScoreCache(folder).stored_shards()) == 8
    assert partial_files(cache) == []


def test_two_less_jobs_on_one_feature_dir_compute_the_features_once(tmp_path, tiny_model_dir, task_files):
    features = tmp_path / "features"
    options = dict(
        projection_dim=64,
        max_length=64,
        warmup_fraction=0.25,
        warmup_epochs=1,
        learning_rate=1e-3,
        lora_r=4,
        lora_target_modules=["q_proj", "v_proj"],
        shard_size=16,
        feature_dir=str(features),
    )
    recipe = write_recipe(tmp_path, tiny_model_dir, "less", options)
    jobs = [start_select(recipe, task_files, tmp_path / f"job-{n}") for n in range(2)]
    for job in jobs:
        finish(job)
    entries = [card_entry(tmp_path / f"job-{n}") for n in range(2)]
    assert chosen_rows(tmp_path / "job-0") == chosen_rows(tmp_path / "job-1")
    # The first job to hold the index built it; the other waited and reused every pool feature.
    built, reused = sorted(entries, key=lambda entry: entry["extras"]["feature_index"]["reused"])
    assert not built["extras"]["feature_index"]["reused"] and reused["extras"]["feature_index"]["reused"]
    assert reused["flops"]["selection"] < 0.5 * built["flops"]["selection"]
    assert built["extras"]["resumed_feature_files"] == 0
    assert read_manifest(features)["complete"]
    assert partial_files(features) == []


def test_sigterm_while_scoring_keeps_the_finished_shards(tmp_path, tiny_model_dir, task_files):
    cache = tmp_path / "cache"
    recipe = write_recipe(tmp_path, tiny_model_dir, "perplexity", {"cache_dir": str(cache), "shard_size": 8})
    job = start_select(recipe, task_files, tmp_path / "stopped")
    deadline = time.time() + TIMEOUT
    try:
        while not list(cache.glob("*/shard-*.npz")):
            assert job.poll() is None, f"the job ended before storing a shard:\n{job.stdout.read()}"
            assert time.time() < deadline, "no shard stored in time"
            time.sleep(0.02)
        job.send_signal(signal.SIGTERM)
        output, _ = job.communicate(timeout=TIMEOUT)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 128 + signal.SIGTERM, output
    assert "Terminated (SIGTERM) while scoring" in output and "resume" in output
    (folder,) = [path for path in cache.iterdir() if path.is_dir()]
    kept = ScoreCache(folder).stored_shards()
    assert 1 <= len(kept) < 8 and not ScoreCache(folder).is_complete()
    assert partial_files(cache) == []

    # The rerun and the uninterrupted reference need no process of their own.
    select_here(recipe, task_files, tmp_path / "resumed")
    resumed = card_entry(tmp_path / "resumed")
    assert resumed["extras"]["cache"]["resumed_shards"] == len(kept)
    assert ScoreCache(folder).is_complete()
    # the same subset and the same charge as one uninterrupted run
    fresh_recipe = write_recipe(
        tmp_path, tiny_model_dir, "perplexity", {"cache_dir": str(tmp_path / "fresh"), "shard_size": 8}
    )
    select_here(fresh_recipe, task_files, tmp_path / "fresh-run")
    fresh = card_entry(tmp_path / "fresh-run")
    assert chosen_rows(tmp_path / "resumed") == chosen_rows(tmp_path / "fresh-run")
    assert resumed["flops"]["selection"] == pytest.approx(fresh["flops"]["selection"], rel=1e-9)
