"""mkdocs hooks: the CLI reference and the API reference are generated at build time from the code.

- ``cli.md``: for every verb in :data:`hf_cads.commands.COMMANDS`, the help its own argparse parser
  prints (``hf-cads VERB --help``), its module docstring, and for the verbs that read a recipe the
  recipe keys from the recipe dataclasses' fields, so the page never drifts from the parsers.
- ``api/<group>.md``: one ``::: module.Name`` block (mkdocstrings) per public name of
  ``hf_cads.__all__``, grouped by the subpackage that defines it. Names are resolved by importing
  them (the package exports lazily, which static analysis cannot follow) and documented at the
  module that defines them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import os
import re
import sys
from collections import defaultdict
from typing import Any

from mkdocs.structure.files import File, Files

API_GROUPS = {
    "trainer": "Trainers",
    "selectors": "Selectors",
    "flops": "FLOP accounting",
    "planner": "Planner",
    "records": "Run records",
    "hub": "Hub",
    "decontamination": "Decontamination",
    "data": "Data",
    "pipeline": "Pipeline",
}
"""Subpackage (or top-level module) of ``hf_cads`` -> API page title; others go under "Other"."""

RECIPE_VERBS = ("run", "select")
"""Verbs whose options are recipe keys (a YAML of dataclass fields, overridable as ``--key value``)."""


LONG_HELP_LINES = 80
"""A verb's help longer than this is shown folded."""


def verb_help(name: str) -> str:
    """What ``hf-cads NAME --help`` prints: the verb's argparse help, or its usage when it has none."""
    commands = importlib.import_module("hf_cads.commands")
    module = importlib.import_module(f"hf_cads.commands.{name}")
    build_parser = getattr(module, "build_parser", None)
    if callable(build_parser):
        return build_parser().format_help()
    out = io.StringIO()
    program = sys.argv[0]
    sys.argv[0] = f"hf-cads {name}"  # argparse's default prog: what the console script shows
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            commands.command(name)(["--help"])
        except SystemExit:
            pass
        except Exception:  # a verb without its own parser: its usage line is its module docstring
            return ""
        finally:
            sys.argv[0] = program
    # A verb that takes no options ignores --help and does its job: that output is not its help.
    return out.getvalue() if out.getvalue().lstrip().startswith("usage:") else ""


def docstring_args(cls: type) -> dict[str, str]:
    """``name -> description`` from the ``Args:`` section of a Google-style class docstring; a line
    ``a / b / c: text`` documents several names at once."""
    doc = cls.__doc__ or ""
    match = re.search(r"\n\s*Args:\s*\n(.*?)(\n\s*\n[A-Z]\w*:|\Z)", doc, flags=re.S)
    if not match:
        return {}
    described: dict[str, str] = {}
    current: list[str] = []
    for line in match.group(1).splitlines():
        head = re.match(r"\s{4,8}([\w /]+):\s*(.*)", line)
        if head and not line.startswith(" " * 12):
            current = [part.strip() for part in head.group(1).split("/")]
            for part in current:
                described[part] = head.group(2).strip()
        elif current and line.strip():
            for part in current:
                described[part] += " " + line.strip()
    return described


def field_rows(cls: type) -> list[str]:
    """One markdown table row per dataclass field of ``cls``: key, default, description."""
    described = docstring_args(cls)
    rows = []
    for field in dataclasses.fields(cls):
        if field.default is not dataclasses.MISSING:
            default = repr(field.default)
        elif field.default_factory is not dataclasses.MISSING:
            default = repr(field.default_factory())
        else:
            default = "required"
        text = described.get(field.name) or field.metadata.get("help", "")
        text = " ".join(str(text).split()).replace("|", "\\|")
        rows.append(f"| `{field.name}` | `{default}` | {text} |")
    return rows


def recipe_dataclasses() -> list[type]:
    """The dataclasses whose fields are the hf_cads-specific recipe keys (TrainingArguments' own
    fields are documented by transformers)."""
    found = []
    for module_name, attribute in (("hf_cads.pipeline", "RunConfig"), ("hf_cads.trainer", "BudgetFields")):
        with contextlib.suppress(ImportError, AttributeError):
            found.append(getattr(importlib.import_module(module_name), attribute))
    return [cls for cls in found if dataclasses.is_dataclass(cls)]


def cli_page() -> str:
    commands = importlib.import_module("hf_cads.commands")
    lines = [
        "# CLI reference",
        "",
        "Generated from the command-line parsers when the site is built: each section is what",
        "`hf-cads VERB --help` prints.",
        "",
        "```text",
        commands.usage(),
        "```",
        "",
    ]
    for name, summary in commands.COMMANDS.items():
        module = importlib.import_module(f"hf_cads.commands.{name}")
        lines += [f"## `hf-cads {name}`", "", summary[:1].upper() + summary[1:] + ".", ""]
        usage_doc = (module.__doc__ or "").strip()
        if usage_doc:
            lines += [usage_doc, ""]
        help_text = verb_help(name).strip()
        if help_text and help_text.count("\n") < LONG_HELP_LINES:
            lines += ["```text", help_text, "```", ""]
        elif help_text:  # e.g. every TrainingArguments field: folded, so the page stays readable
            lines += [f'??? note "hf-cads {name} --help ({help_text.count(chr(10)) + 1} lines)"', "", "    ```text"]
            lines += ["    " + line if line else "" for line in help_text.splitlines()]
            lines += ["    ```", ""]
        if name in RECIPE_VERBS:
            lines += [
                "Options are recipe keys: a YAML file of them, each also settable on the command line as",
                "`--key value` (the command line wins). Any `transformers.TrainingArguments` field is a",
                "key too. The hf_cads keys, with their defaults:",
                "",
                '??? note "Recipe keys"',
                "",
            ]
            for cls in recipe_dataclasses():
                lines += [f"    **`{cls.__name__}`**", "", "    | key | default | meaning |", "    |---|---|---|"]
                lines += ["    " + row for row in field_rows(cls)]
                lines += [""]
    return "\n".join(lines) + "\n"


def api_pages() -> dict[str, str]:
    """``{"api/<group>.md": markdown}`` for the public names of ``hf_cads.__all__``."""
    package = importlib.import_module("hf_cads")
    grouped: dict[str, list[str]] = defaultdict(list)
    for name in package.__all__:
        if name.startswith("__"):
            continue
        obj = getattr(package, name)
        module = obj.__module__
        group = module.split(".")[1] if module.count(".") >= 1 else "other"
        grouped[group if group in API_GROUPS else "other"].append(f"{module}.{obj.__qualname__}")
    pages = {}
    index = [
        "# API reference",
        "",
        "Every public name of `hf_cads` (`hf_cads.__all__`), importable as `from hf_cads import NAME`,",
        "documented from its docstring. Generated when the site is built.",
        "",
    ]
    for group in sorted(grouped, key=lambda g: list(API_GROUPS).index(g) if g in API_GROUPS else 99):
        title = API_GROUPS.get(group, "Other")
        paths = sorted(grouped[group], key=lambda path: path.rsplit(".", 1)[-1].lower())
        index.append(f"- [{title}]({group}.md): " + ", ".join(f"`{p.rsplit('.', 1)[-1]}`" for p in paths))
        body = [f"# {title}", ""]
        for path in paths:
            body += [f"::: {path}", ""]
        pages[f"api/{group}.md"] = "\n".join(body)
    pages["api/index.md"] = "\n".join(index) + "\n"
    return pages


GENERATED: dict[str, str] = {}
"""The pages this build generates, ``src_uri -> markdown`` (filled by :func:`on_config`)."""


def api_nav_entries(nav: list[Any]) -> list[Any] | None:
    """The list under "API" in mkdocs.yml's nav (``None`` when the nav has no such entry)."""
    for entry in nav:
        if isinstance(entry, dict):
            for title, children in entry.items():
                if title == "API" and isinstance(children, list):
                    return children
                if isinstance(children, list) and (found := api_nav_entries(children)) is not None:
                    return found
    return None


def on_config(config: Any) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    GENERATED.clear()
    GENERATED.update({"cli.md": cli_page(), **api_pages()})
    # An API group the nav does not list yet (a new subpackage in hf_cads.__all__) is appended to it.
    entries = api_nav_entries(config["nav"] or [])
    if entries is not None:
        listed = {path for entry in entries for path in (entry.values() if isinstance(entry, dict) else [entry])}
        for src_uri, content in GENERATED.items():
            if src_uri.startswith("api/") and src_uri not in listed:
                entries.append({content.splitlines()[0].lstrip("# "): src_uri})
    return config


def on_files(files: Files, config: Any) -> Files:
    for src_uri, content in GENERATED.items():
        files.append(File.generated(config, src_uri, content=content))
    return files
