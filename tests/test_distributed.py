"""Scale-out: selectors split the pool over processes and choose what one process chooses; FLOPs are
summed over processes, in the selection result and in BudgetedTrainer's cap.

The two-process run is real: ``accelerate launch`` starts two CPU processes talking over gloo.
(``accelerate launch --cpu --num_processes 2`` starts one process without MPI; on a machine
without GPUs the multi-process launcher is the one that forms a CPU group.)
"""

import importlib.util
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset

from hf_cads import get_selector
from hf_cads.distributed import Processes, current_processes
from hf_cads.testing import assert_close_at_scale, tiny_causal_lm

SCRIPTS = Path(__file__).parent / "scripts"
SHARDABLE = ("random", "bm25", "embedding", "perplexity")  # LESS splits its pool shards too (see the test)


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("tiny_model")
    tiny_causal_lm(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def two_processes(model_dir, tmp_path_factory):
    """One real 2-process run of the script: every selector, then a budgeted training run."""
    out = tmp_path_factory.mktemp("two_processes")
    accelerate = shutil.which("accelerate") or pytest.fail("the accelerate CLI is not installed")
    command = [
        accelerate,
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
        str(free_port()),
        str(SCRIPTS / "distributed_selection.py"),
        "--model",
        str(model_dir),
        "--out",
        str(out),
        "--cache-dir",
        str(out / "cache"),
    ]
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false"
    )
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    reports = [json.loads((out / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    return reports, out


@pytest.fixture(scope="module")
def one_process(model_dir):
    return load_script("distributed_selection").run_selections(str(model_dir))


def test_two_processes_choose_what_one_process_chooses(two_processes, one_process):
    (rank0, rank1), _ = two_processes
    assert (rank0["world_size"], rank1["world_size"]) == (2, 2)
    for name, single in one_process.items():
        first, second = rank0["selections"][name], rank1["selections"][name]
        assert first["indices"] == second["indices"] == single["indices"], name
        assert first["flops"] == second["flops"] == pytest.approx(single["flops"], rel=1e-12), name
        if name in ("random", "bm25"):  # no floating-point reductions that depend on threads or CPU
            assert first["scores"] == single["scores"], name
        else:  # model scores differ in the last bits between thread counts and CPUs; LESS sums many cosines
            assert_close_at_scale(first["scores"], single["scores"], rel=1e-4 if name == "less" else 1e-5, what=name)
    for name in SHARDABLE + ("less",):
        sharding = rank0["selections"][name]["sharding"]
        # both processes scored their own contiguous block of shards: 5 shards of <= 16 rows -> 3 + 2
        assert sharding["processes"] == 2 and sharding["rows_scored_per_process"] == [48, 32], sharding
        assert one_process[name]["sharding"]["rows_scored_per_process"] == [80]
    # LESS: the warmup ran once, on the main process, and its checkpoints served both processes
    assert (rank0["selections"]["less"]["warmup_runs"], rank1["selections"]["less"]["warmup_runs"]) == (1, 0)


def test_a_cache_written_by_two_processes_serves_one_process(two_processes, model_dir):
    (rank0, _), out = two_processes
    reused = load_script("distributed_selection").run_selections(
        str(model_dir), ["perplexity", "less"], cache_dir=str(out / "cache")
    )
    for name, result in reused.items():
        assert result["cache"]["hit"] and result["flops"] == 0, name
        assert result["cache"]["original_flops"] == pytest.approx(rank0["selections"][name]["flops"], rel=1e-12)
        assert result["indices"] == rank0["selections"][name]["indices"]


def test_budgeted_training_caps_the_flops_of_all_processes(two_processes):
    (rank0, rank1), _ = two_processes
    first, second = rank0["training"], rank1["training"]
    # every process keeps the same, global ledger
    assert first["ledger"] == second["ledger"] and first["steps"] == second["steps"]
    ledger = first["ledger"]
    # which is the sum of what each process computed on its own micro-batches
    assert ledger["train"] == pytest.approx(sum(first["local_costs"]) + sum(second["local_costs"]), rel=1e-12)
    assert not set(first["local_batches"]) & set(second["local_batches"])  # the processes saw different data
    assert 0.95 * ledger["budget"] <= ledger["total"] <= ledger["budget"]
    assert first["training"]["stopped_by_budget"]
    # the selection inside the trainer was sharded too and charged once: what BM25 costs on this pool
    assert ledger["selection"] == rank0["selections"]["bm25"]["flops"]


def test_a_failure_on_one_process_is_an_error_on_every_process(two_processes):
    (rank0, rank1), _ = two_processes
    assert rank0["failures"]["main"] == "ValueError: broken scorer"
    assert rank1["failures"]["main"].startswith("ProcessFailedError: Process 0 of 2 failed: ValueError: broken scorer")
    assert rank1["failures"]["shard"] == "ValueError: broken shard"
    assert rank0["failures"]["shard"].startswith("ProcessFailedError: Process 1 of 2 failed while scoring")


# -- in-process pieces ------------------------------------------------------------------------------
@pytest.mark.parametrize("count,world", [(10, 1), (10, 3), (2, 4), (0, 2), (17, 2)])
def test_shares_are_contiguous_balanced_and_cover_everything(count, world):
    shares = [Processes(rank, world).share(count) for rank in range(world)]
    assert [i for share in shares for i in share] == list(range(count))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_one_process_needs_no_process_group():
    processes = current_processes()
    assert processes == Processes(0, 1) and not processes.is_distributed
    assert (
        processes.gather(lambda: 3) == [3] and processes.on_main(lambda: "x") == "x" and processes.all_sum(2.5) == 2.5
    )


def test_shard_size_does_not_change_the_scores(small_pool, bbh_target, tokenizer):
    pool, target = small_pool, bbh_target[0]
    for name in ("random", "bm25"):
        whole = get_selector(name, shard_size=10_000).select(pool, target=target, k=30)
        sharded = get_selector(name, shard_size=7).select(pool, target=target, k=30)
        assert np.array_equal(whole.all_scores, sharded.all_scores) and whole.flops == sharded.flops, name
        assert sharded.extras["sharding"]["shards"] == -(-len(pool) // 7)
    model = tiny_causal_lm(tokenizer)
    whole = get_selector("perplexity", model=model, tokenizer=tokenizer, max_length=96, show_progress=False).select(
        pool, k=30
    )
    sharded_selector = get_selector(
        "perplexity", model=model, tokenizer=tokenizer, max_length=96, shard_size=50, show_progress=False
    )
    sharded = sharded_selector.select(pool, k=30)
    assert_close_at_scale(sharded.all_scores, whole.all_scores, rel=1e-5)
    assert list(whole.indices) == list(sharded.indices)
    assert np.allclose(sharded.extras["loss"], -sharded.all_scores)  # per-row extras are stitched in pool order
    # padding differs per shard, so the FLOPs do, and the estimate plans the same shards
    assert sharded.flops == pytest.approx(sharded_selector.estimate_flops(pool, None), rel=1e-12)


def test_shardable_selectors_must_return_per_row_extras():
    from hf_cads.selectors import ScoreOutput, Selector

    class PoolWideExtra(Selector):
        requires_target = False
        shardable = True

        def score_rows(self, pool, target, rows, prepared, progress=None):
            return ScoreOutput(np.zeros(len(rows)), 0.0, {"mean": 0.5})

        def estimate_flops(self, pool, target):
            return 0.0

    with pytest.raises(TypeError, match="'mean'.*not a per-row array.*prepare"):
        PoolWideExtra().select(Dataset.from_dict({"text": ["a", "b", "c"]}), k=1)
    with pytest.raises(ValueError, match="shard_size must be a whole number"):
        get_selector("bm25", shard_size=0)
