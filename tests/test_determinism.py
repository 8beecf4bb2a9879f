"""Same seed -> the same chosen rows, for every selector, whatever the global random state.

(That two processes choose exactly what one process chooses, with the same seed, is checked in
test_distributed.py on a real 2-process launch.)
"""

import random

import numpy as np
import pytest
import torch

from hf_cads import get_selector, list_selectors
from hf_cads.selectors import get_selector_class
from hf_cads.testing import tiny_causal_lm

CASES = {
    "random": ({}, False),
    "bm25": ({"aggregate": "max"}, False),
    "embedding": ({"max_length": 64}, False),
    "perplexity": ({"max_length": 96}, True),
    "less": (
        dict(
            projection_dim=256,
            max_length=64,
            warmup_fraction=0.2,
            warmup_epochs=1,
            lora_r=4,
            lora_target_modules=("q_proj", "v_proj"),
        ),
        True,
    ),
    "cads": (dict(train_budget=2e10, max_length=64, outer_steps=3, num_sampling_points=3), True),
    "rds": ({"max_length": 64}, True),
}
SEEDED = ("random", "less", "cads")  # selectors whose choice depends on the seed


@pytest.fixture(scope="module")
def inputs(small_pool, bbh_target):
    return small_pool.shuffle(seed=0).select(range(80)).flatten_indices(), bbh_target[0]


def select(name, seed, inputs, tokenizer, scramble=0):
    pool, target = inputs
    options, uses_lm = CASES[name]
    objects = {"model": tiny_causal_lm(tokenizer), "tokenizer": tokenizer} if uses_lm else {}
    # Whatever ran before (other code drawing from the global generators) must not matter.
    torch.rand(scramble), np.random.rand(scramble), [random.random() for _ in range(scramble)]
    selector = get_selector(name, seed=seed, show_progress=False, **options, **objects)
    return selector.select(pool, target=target, **({} if name == "cads" else {"k": 20}))


def test_every_built_in_selector_is_covered():
    built_in = {name for name in list_selectors() if get_selector_class(name).__module__.startswith("hf_cads.")}
    assert set(CASES) >= built_in


@pytest.mark.parametrize("name", list(CASES))
def test_same_seed_same_choice(name, inputs, tokenizer):
    first = select(name, 0, inputs, tokenizer, scramble=0)
    second = select(name, 0, inputs, tokenizer, scramble=7)
    assert first.indices.tolist() == second.indices.tolist()
    assert np.array_equal(first.all_scores, second.all_scores)
    assert first.flops == second.flops
    if name in SEEDED:
        other = select(name, 1, inputs, tokenizer)
        assert not np.array_equal(other.all_scores, first.all_scores), "the seed has no effect"
