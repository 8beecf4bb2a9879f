"""The built wheel works outside the checkout: recipes ship inside it, presets load from
``HF_CADS_DATA_DIR``, and the light paths stay light (issue: a package that stands on its own)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    """A fresh venv outside the checkout with the wheel built from this tree installed into it.

    The venv sees the already installed dependencies (``--system-site-packages``), so the check
    needs no download; the test asserts that ``hf_cads`` itself is imported from the wheel.
    """
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = root.glob("hf_cads-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    return venv


def run_in(venv: Path, *command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env.setdefault("HF_CADS_DATA_DIR", str(REPO.parent / "shared" / "data"))
    env.pop("PYTHONPATH", None)
    return subprocess.run(list(command), cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_the_wheel_is_imported_from_the_venv_not_the_checkout(wheel_venv, tmp_path):
    out = run_in(wheel_venv, "python", "-c", "import hf_cads; print(hf_cads.__file__)", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert str(wheel_venv) in out.stdout and str(REPO) not in out.stdout


def test_recipes_are_listed_from_any_folder(wheel_venv, tmp_path):
    out = run_in(wheel_venv, "hf-cads", "recipes", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "quickstart" in out.stdout and "smollm2-135m/lora-bm25" in out.stdout


def test_select_of_the_quickstart_recipe_runs_from_a_temporary_folder(wheel_venv, tmp_path):
    out = run_in(wheel_venv, "hf-cads", "select", "--local-dir", "selection", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert list((tmp_path / "selection").rglob("*.parquet")) and (tmp_path / "selection" / "README.md").is_file()


def test_import_stays_light_in_the_installed_package(wheel_venv, tmp_path):
    code = (
        "import sys, hf_cads; heavy = ('trl', 'peft', 'bitsandbytes', 'sentence_transformers');"
        "print([m for m in heavy if m in sys.modules])"
    )
    out = run_in(wheel_venv, "python", "-c", code, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_no_shipped_file_is_missing_from_the_wheel(wheel_venv):
    site = next((wheel_venv / "lib").glob("python*/site-packages/hf_cads"))
    shipped = {p.relative_to(REPO / "hf_cads") for p in (REPO / "hf_cads").rglob("*") if p.suffix in {".yaml", ".md"}}
    installed = {p.relative_to(site) for p in site.rglob("*") if p.suffix in {".yaml", ".md"}}
    assert shipped and shipped <= installed, sorted(map(str, shipped - installed))
    assert shutil.which("hf-cads", path=str(wheel_venv / "bin"))
