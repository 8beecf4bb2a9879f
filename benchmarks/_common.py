"""What every benchmark script shares: where results go, the JSON + markdown writers, the argument parser.

Scripts run as ``python benchmarks/<name>.py`` (the script's folder is first on ``sys.path``), so
``from _common import ...`` finds this module.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def results_path(name: str, suffix: str = "", results_dir: Path | None = None) -> Path:
    """``benchmarks/results/<name><suffix>`` (e.g. ``("less_speed", ".md")``), its folder created."""
    folder = Path(results_dir or RESULTS)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}{suffix}"


def write_json(name: str, payload: Any, results_dir: Path | None = None, indent: int = 2) -> Path:
    """Write ``payload`` as ``<name>.json`` (non-JSON values as their ``str``); returns the path."""
    path = results_path(name, ".json", results_dir)
    path.write_text(json.dumps(payload, indent=indent, default=str) + "\n", encoding="utf-8")
    return path


def write_markdown(name: str, lines: Sequence[str] | str, results_dir: Path | None = None) -> Path:
    """Write ``<name>.md`` from a text or its lines (one trailing newline); returns the path."""
    text = lines if isinstance(lines, str) else "\n".join(lines)
    path = results_path(name, ".md", results_dir)
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
    return path


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A markdown table's lines: the header, the separator, one line per row (cells as ``str``)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def make_parser(description: str | None, *, threads: bool = False) -> argparse.ArgumentParser:
    """The scripts' argument parser: the module docstring as help, verbatim; ``threads`` adds
    ``--threads`` (torch threads; 1 on a shared machine)."""
    made = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    if threads:
        made.add_argument("--threads", type=int, help="torch threads (default: torch's; 1 on a shared machine)")
    return made


def set_threads(count: int | None) -> None:
    """``torch.set_num_threads(count)`` when a count is given."""
    if count:
        import torch

        torch.set_num_threads(count)
