"""The files hf_cads ships as package data, read with ``importlib.resources`` so they are found
from any folder after a wheel install: the recipes (``hf_cads/recipes/``), the
``accelerate launch --config_file`` configs (``hf_cads/accelerate_configs/``) and the card templates
(``hf_cads/card_templates/``).

A recipe is named by its path inside ``hf_cads/recipes/`` without ``.yaml``
(``smollm2-135m/lora-bm25``); ``hf-cads recipes`` lists them with their one-line descriptions.

Example:
    >>> find_recipe("quickstart").name
    'quickstart.yaml'
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

QUICKSTART = "quickstart"
"""The recipe ``hf-cads run`` runs without an argument."""
RECIPES_FOLDER = "recipes"
ACCELERATE_CONFIGS_FOLDER = "accelerate_configs"
CARD_TEMPLATES_FOLDER = "card_templates"
RECIPE_SUFFIXES = (".yaml", ".yml")


def package_file(*parts: str) -> Path:
    """The path of a file shipped inside the installed ``hf_cads`` package.

    Example:
        >>> package_file(CARD_TEMPLATES_FOLDER, "selected_subset.md").is_file()
        True
    """
    return Path(str(resources.files("hf_cads").joinpath(*parts)))


def _shipped(folder: str) -> dict[str, Path]:
    root = package_file(folder)
    return {
        path.relative_to(root).with_suffix("").as_posix(): path
        for path in sorted(root.rglob("*"))
        if path.suffix in RECIPE_SUFFIXES and path.is_file()
    }


def shipped_recipes() -> dict[str, Path]:
    """Name -> file of the recipes in ``hf_cads/recipes/`` (names are paths without ``.yaml``).

    Example:
        >>> names = shipped_recipes()
        >>> "quickstart" in names and "smollm2-135m/lora-bm25" in names
        True
    """
    return _shipped(RECIPES_FOLDER)


def shipped_accelerate_configs() -> dict[str, Path]:
    """Name -> file of the ``accelerate launch --config_file`` configs in ``hf_cads/accelerate_configs/``.

    Example:
        >>> sorted(shipped_accelerate_configs())[:2]
        ['deepspeed_zero3', 'fsdp']
    """
    return _shipped(ACCELERATE_CONFIGS_FOLDER)


def find_recipe(name_or_path: str | os.PathLike, hint: str = "") -> Path:
    """The recipe file ``name_or_path`` names: an existing file, else a shipped recipe's name
    (``smollm2-135m/lora-bm25``, with or without ``.yaml``); ``hint`` ends the error otherwise.

    Example:
        >>> find_recipe("smollm2-135m/lora-bm25.yaml").name
        'lora-bm25.yaml'
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    name = str(name_or_path)
    for suffix in RECIPE_SUFFIXES:
        name = name.removesuffix(suffix)
    shipped = shipped_recipes()
    if name in shipped:
        return shipped[name]
    raise FileNotFoundError(
        f"Recipe file {str(name_or_path)!r} does not exist and no shipped recipe has that name; pass a path or "
        f"one of {sorted(shipped)} (hf-cads recipes lists them){'; ' + hint if hint else ''}"
    )


def default_recipe() -> Path:
    """The recipe ``hf-cads run`` runs without an argument: the shipped ``quickstart``."""
    return find_recipe(QUICKSTART)


def recipe_summary(path: str | os.PathLike) -> str:
    """The first comment line of a recipe (its one-line description), without the ``#``.

    Example:
        >>> recipe_summary(find_recipe("quickstart")).startswith("The default of `hf-cads run`")
        True
    """
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""
