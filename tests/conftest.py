import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# `make test` also runs the determinism tests at one thread (HF_CADS_TEST_THREADS=1 with OMP_NUM_THREADS=1):
# results must not depend on how many threads the float reductions were split over.
if os.environ.get("HF_CADS_TEST_THREADS"):
    torch.set_num_threads(int(os.environ["HF_CADS_TEST_THREADS"]))

from hf_cads.data import default_data_dir  # noqa: E402
from hf_cads.testing import tiny_causal_lm, tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def data_dir():
    return default_data_dir()


@pytest.fixture(scope="session")
def small_pool(data_dir):
    """A real 4-source pool (60 rows per source) for boolean_expressions."""
    from hf_cads.data import build_multisource_pool

    return build_multisource_pool("boolean_expressions", data_dir, max_per_source=60, max_chars=600, seed=0)


@pytest.fixture(scope="session")
def bbh_target(data_dir):
    from hf_cads.data import load_bbh_target

    return load_bbh_target("boolean_expressions", data_dir)


@pytest.fixture(scope="session")
def tokenizer(small_pool, bbh_target):
    texts = list(small_pool["text"]) + list(bbh_target[1]["text"])
    return tiny_tokenizer(texts, vocab_size=600)


@pytest.fixture
def tiny_lm(tokenizer):
    return tiny_causal_lm(tokenizer)


@pytest.fixture
def tiny_model_dir(tmp_path, tokenizer):
    """A tiny causal LM and its tokenizer saved as a model folder (what a recipe names)."""
    path = tmp_path / "tiny-model"
    tiny_causal_lm(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
