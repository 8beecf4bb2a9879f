"""The user documentation works: the site builds with warnings as errors, every public name has a
docstring, and the Python blocks of README.md and docs/source/**/*.md run as written.

A Python block runs unless the line right before its fence marks it:

- ``<!-- docs-test: skip (reason) -->``: not run (it needs a GPU, the Hub or your own files); it shows
  up as a skipped test with that reason.
- ``<!-- docs-test: slow -->``: run only with the slow tests (it loads a real model or trains).

The blocks of one page share a namespace and run in order, as a reader would run them, in a fresh
working directory.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs" / "source").rglob("*.md"))]
FENCE = re.compile(
    r"^(?P<marker><!-- docs-test: (?P<kind>skip|slow)\b(?P<reason>[^>]*)-->\n)?```python\n(?P<code>.*?)^```",
    re.M | re.S,
)


@dataclasses.dataclass
class Block:
    page: Path
    line: int
    code: str
    kind: str  # "run", "slow" or "skip"
    reason: str


def python_blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        kind = match.group("kind") or "run"
        reason = (match.group("reason") or "").strip(" ()") or kind
        line = text.count("\n", 0, match.start("code")) + 1
        blocks.append(Block(page, line, match.group("code"), kind, reason))
    return blocks


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def run_blocks(blocks: list[Block], workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workdir)
    # A page may register its own selector: the registry is restored afterwards, so later tests
    # iterating list_selectors() see only the package's own.
    from hf_cads.selectors import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_ALIASES", dict(registry._ALIASES))
    # A real module, so that classes defined in a block (dataclasses, selectors) behave as in a script.
    page_module = types.ModuleType("docs_page")
    monkeypatch.setitem(sys.modules, page_module.__name__, page_module)
    namespace = page_module.__dict__
    for block in blocks:
        # Blank lines in front, so a traceback names the line of the page.
        code = compile("\n" * (block.line - 1) + block.code, page_id(block.page), "exec")
        exec(code, namespace)  # noqa: S102 - running the documented example is the point


FAST_PAGES = [page for page in PAGES if any(block.kind == "run" for block in python_blocks(page))]
SLOW_PAGES = [page for page in PAGES if any(block.kind == "slow" for block in python_blocks(page))]
SKIPPED = [block for page in PAGES for block in python_blocks(page) if block.kind == "skip"]


def test_the_pages_hold_runnable_blocks():
    assert FAST_PAGES and SLOW_PAGES, "no runnable Python block found: the fence pattern no longer matches the pages"
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 250


@pytest.mark.parametrize("page", FAST_PAGES, ids=page_id)
def test_python_blocks_run(page, tmp_path, monkeypatch):
    run_blocks([block for block in python_blocks(page) if block.kind == "run"], tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("page", SLOW_PAGES, ids=page_id)
def test_python_blocks_run_with_real_models(page, tmp_path, monkeypatch):
    run_blocks([block for block in python_blocks(page) if block.kind != "skip"], tmp_path, monkeypatch)


@pytest.mark.parametrize("block", SKIPPED, ids=lambda block: f"{page_id(block.page)}:{block.line}")
def test_python_blocks_marked_skip(block):
    pytest.skip(f"{page_id(block.page)}:{block.line} is not run: {block.reason}")


def test_readme_and_benchmark_links_resolve():
    """Relative links of the pages GitHub renders outside the site (the site build checks its own)."""
    broken = []
    for page in (ROOT / "README.md", ROOT / "benchmarks" / "README.md", ROOT / "CHANGELOG.md"):
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page_id(page)} -> {target}")
    assert not broken, "broken relative links: " + ", ".join(broken)


def public_modules() -> list[str]:
    """``hf_cads`` and every subpackage of it (the namespaces whose ``__all__`` is public)."""
    import hf_cads

    names = ["hf_cads"]
    for info in pkgutil.walk_packages(hf_cads.__path__, prefix="hf_cads."):
        if info.ispkg and not info.name.rsplit(".", 1)[-1].startswith("_"):
            names.append(info.name)
    return names


def documented_constants() -> set[str]:
    """Module-level names assigned in hf_cads and followed by a docstring (``NAME = ...`` then ``\"\"\"...\"\"\"``)."""
    documented = set()
    for path in (ROOT / "hf_cads").rglob("*.py"):
        body = ast.parse(path.read_text(encoding="utf-8")).body
        for statement, following in zip(body, body[1:]):
            is_doc = isinstance(following, ast.Expr) and isinstance(getattr(following, "value", None), ast.Constant)
            if not (is_doc and isinstance(following.value.value, str) and following.value.value.strip()):
                continue
            targets = statement.targets if isinstance(statement, ast.Assign) else [getattr(statement, "target", None)]
            documented |= {target.id for target in targets if isinstance(target, ast.Name)}
    return documented


def has_own_docstring(obj: object) -> bool:
    doc = obj.__doc__ if isinstance(obj, type) else inspect.getdoc(obj)
    if not doc or not doc.strip():
        return False
    # A dataclass without a docstring gets its signature as one.
    return not (dataclasses.is_dataclass(obj) and isinstance(obj, type) and doc.startswith(f"{obj.__name__}("))


def test_every_public_name_has_a_docstring():
    constants = documented_constants()
    missing = []
    for module_name in public_modules():
        module = importlib.import_module(module_name)
        if not has_own_docstring(module):
            missing.append(f"{module_name} (module)")
        for name in getattr(module, "__all__", []):
            if name.startswith("__"):
                continue
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isroutine(obj) or inspect.ismodule(obj):
                documented = has_own_docstring(obj)
            else:  # a constant: its docstring is the string right after its assignment
                documented = name in constants
            if not documented:
                missing.append(f"{module_name}.{name}")
    assert not missing, "public names without a docstring: " + ", ".join(sorted(set(missing)))


@pytest.mark.slow  # ~35 s: imports every command and renders the API reference
def test_the_docs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        pytest.skip('mkdocs / mkdocstrings are not installed: pip install "hf_cads[docs]" to build the docs')
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    site = tmp_path / "site"
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "-d",
            str(site),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-6000:]
    pages = {path.relative_to(site).as_posix() for path in site.rglob("index.html")}
    assert {"index.html", "cli/index.html", "api/index.html", "api/trainer/index.html"} <= pages
    api = (site / "api" / "trainer" / "index.html").read_text(encoding="utf-8")
    assert "BudgetedTrainer" in api and "flop_budget" in (site / "api" / "trainer" / "index.html").read_text()
    cli = (site / "cli" / "index.html").read_text(encoding="utf-8")
    assert "--budget" in cli  # hf-cads plan's option, from its parser
