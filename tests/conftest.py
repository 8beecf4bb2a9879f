import logging
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The presets read the real data beside the checkout (as `make test` and the root conftest.py set it).
os.environ.setdefault("HF_CADS_DATA_DIR", os.path.abspath(os.path.join(__file__, "../../../shared/data")))

import pytest  # noqa: E402
import torch  # noqa: E402

# `make test` also runs the determinism tests at one thread (HF_CADS_TEST_THREADS=1 with OMP_NUM_THREADS=1):
# results must not depend on how many threads the float reductions were split over.
if os.environ.get("HF_CADS_TEST_THREADS"):
    torch.set_num_threads(int(os.environ["HF_CADS_TEST_THREADS"]))

from hf_cads.data import local_data_dir  # noqa: E402
from hf_cads.testing import tiny_causal_lm, tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def data_dir():
    return local_data_dir()


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


@pytest.fixture(scope="session")
def benchmark_script():
    """``benchmark_script("less_speed")``: a script of benchmarks/ as a module, for its own functions' tests."""
    import importlib.util
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(folder))  # the scripts import their shared helper as `_common`
    loaded = {}

    def load(name):
        if name not in loaded:
            spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # dataclasses look their module up by name
            spec.loader.exec_module(module)
            loaded[name] = module
        return loaded[name]

    yield load
    for name in loaded:
        sys.modules.pop(name, None)
    sys.path.remove(str(folder))


@pytest.fixture
def package_logger():
    """The ``hf_cads`` logger, its level restored after the test (``hf-cads --verbose`` sets it to DEBUG)."""
    logger = logging.getLogger("hf_cads")
    level = logger.level
    yield logger
    logger.setLevel(level)
