"""Griffe extension for the API reference: reads the package's reST-flavoured Google docstrings as
the Markdown the site renders.

- ``Example:`` heads the doctests, which the Google-style parser reads as an admonition (Markdown
  text, so ``>>>`` lines and ``x["key"]`` would render as prose and reference links). As
  ``Examples:`` it is the examples section, whose ``>>>`` blocks render as Python console code.
- Sphinx roles (``:class:`~hf_cads.flops.FlopLedger```, ``:func:`x```) become inline code of the
  name (its last part with ``~``), instead of showing the role markup.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

HEADING = re.compile(r"^(\s*)Example:\s*$", re.M)
ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|obj|exc):`(~?)([^`]+)`")


def plain_name(match: re.Match) -> str:
    name = match.group(2).strip()
    return f"`{name.rsplit('.', 1)[-1] if match.group(1) else name}`"


class ReadAsMarkdown(griffe.Extension):
    """Rewrites each docstring griffe loads: ``Example:`` as ``Examples:``, Sphinx roles as code."""

    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        docstring = getattr(obj, "docstring", None)
        if docstring is None:
            return
        value = HEADING.sub(r"\1Examples:", docstring.value)
        docstring.value = ROLE.sub(plain_name, value)
