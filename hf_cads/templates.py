"""Card templates (``hf_cads/card_templates/``) and the rules every card hf_cads writes follows: values made
YAML-safe, secrets redacted, no access token ever written.

Shared by the dataset cards of :mod:`hf_cads.hub` and the model card of :mod:`hf_cads.trainer`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from .package_data import CARD_TEMPLATES_FOLDER, package_file

METADATA_KEY = "hf_cads"
"""The card-metadata key holding hf_cads's structured provenance."""
_SECRET_KEY = re.compile(r"(^|_)(token|password|secret|api_key|apikey)$", re.IGNORECASE)
_HF_TOKEN = re.compile(r"hf_[A-Za-z0-9]{20,}")


def card_template(name: str) -> str:
    """The text of the card template ``name`` in ``hf_cads/card_templates/`` (package data).

    Example:
        >>> card_template("selected_subset.md").startswith("---")
        True
    """
    template = package_file(CARD_TEMPLATES_FOLDER, name)
    if not template.is_file():
        raise FileNotFoundError(
            f"Card template {name!r} is missing from hf_cads/{CARD_TEMPLATES_FOLDER}/; reinstall hf_cads "
            "(pip install --force-reinstall hf_cads)."
        )
    return template.read_text(encoding="utf-8")


def render_template(name: str, **context: Any) -> str:
    """Render a ``card_templates/`` template with Jinja; a variable the template uses but ``context``
    lacks is an error, not an empty string."""
    import jinja2

    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    return environment.from_string(card_template(name)).render(**context)


def check_no_secret(text: str, token: str | None) -> None:
    if (token and token in text) or _HF_TOKEN.search(text):
        raise RuntimeError(
            "Refusing to write a card that contains an access token; remove it from the selector options."
        )


def redact(value: Any) -> Any:
    """Replace values stored under secret-looking keys, and anything shaped like an HF token."""
    if isinstance(value, dict):
        return {
            key: "<redacted>" if _SECRET_KEY.search(str(key)) and item is not None else redact(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redact(item) for item in value]
    if isinstance(value, str):
        return _HF_TOKEN.sub("<redacted>", value)
    return value


def plain_values(value: Any) -> Any:
    """``value`` as YAML-safe builtins (numpy scalars and arrays, tuples, paths converted)."""
    if isinstance(value, Mapping):
        return {str(key): plain_values(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain_values(item) for item in value]
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 64 else f"<array of {value.size} values>"
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def format_number(value: float) -> str:
    return f"{value:8.3f}" if abs(value) < 1e4 else f"{value:8.2e}"


def format_flops(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
