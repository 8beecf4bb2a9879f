"""Settings for every test run from the repository root, the doctests of ``hf_cads/`` included
(``--doctest-modules`` in pyproject.toml): nothing is downloaded, and the presets read the local data
folder beside the checkout unless ``HF_CADS_DATA_DIR`` says otherwise."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_CADS_DATA_DIR", os.path.abspath(os.path.join(os.path.dirname(__file__), "../shared/data")))
