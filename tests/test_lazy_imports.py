"""`import hf_cads` and the light CLI verbs leave the heavy optional stacks unloaded."""

import json
import subprocess
import sys

import pytest

HEAVY = ("trl", "peft", "bitsandbytes", "sentence_transformers", "matplotlib")


def loaded_after(code: str) -> list[str]:
    """The HEAVY modules present in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "code",
    [
        "import hf_cads",
        "import hf_cads; hf_cads.get_selector('bm25'); hf_cads.FlopLedger(budget=1e12)",
        "import hf_cads.selectors, hf_cads.planner, hf_cads.records, hf_cads.flops",
        "from hf_cads.commands import main; main(['selectors'])",
        "from hf_cads.commands import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
    ],
    ids=["import", "cheap-names", "light-subpackages", "cli-selectors", "cli-help"],
)
def test_light_paths_do_not_import_the_heavy_stacks(code):
    assert loaded_after(code) == []


def test_a_trainer_name_loads_its_stack_on_first_use():
    assert "trl" in loaded_after("import hf_cads; hf_cads.BudgetedSFTTrainer")


def test_every_public_name_resolves():
    import hf_cads

    missing = [name for name in hf_cads.__all__ if getattr(hf_cads, name, None) is None]
    assert missing == []
    assert set(hf_cads.__all__) <= set(dir(hf_cads))
