"""The layer contract of pyproject.toml ([tool.importlinter]) holds, and it would catch a new upward import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("importlinter", reason="pip install import-linter (the `test` extra)")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the package under ``root`` with ``root``'s pyproject.toml, in a fresh
    interpreter so the analysed ``hf_cads`` is the one under ``root``."""
    environment = {**os.environ, "PYTHONPATH": str(root)}
    command = [
        sys.executable,
        "-c",
        "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
        "--no-cache",
    ]
    return subprocess.run(command, cwd=root, env=environment, capture_output=True, text=True, timeout=300)


def test_layers_contract_is_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hf_cads layers KEPT" in result.stdout


def copy_package(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "hf_cads", tmp_path / "hf_cads", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.parametrize(
    "module, upward",
    [
        ("selectors/base.py", "from ..hub import push_selection"),  # the import this contract removed
        ("flops/ledger.py", "from ..trainer import BudgetedTrainer"),
        ("trainer/trainer.py", "from ..planner import make_plan"),
        ("records.py", "from .commands import main"),
    ],
)
def test_an_upward_import_breaks_the_contract(tmp_path, module, upward):
    root = copy_package(tmp_path)
    path = root / "hf_cads" / module
    # Inside a function, as lazy imports were: they count too.
    path.write_text(path.read_text(encoding="utf-8") + f"\n\ndef _upward():\n    {upward}\n", encoding="utf-8")
    result = lint_imports(root)
    assert result.returncode != 0
    assert "hf_cads layers BROKEN" in result.stdout
    importer = "hf_cads." + module.removesuffix(".py").replace("/", ".")
    assert f"- {importer} -> " in result.stdout  # the report names the offending import


def test_commands_are_imported_by_nothing_in_the_package():
    for path in (ROOT / "hf_cads").rglob("*.py"):
        if path.parent.name == "commands" or path.name == "cli.py":
            continue
        text = path.read_text(encoding="utf-8")
        assert ".commands" not in text and "hf_cads.cli" not in text, path
