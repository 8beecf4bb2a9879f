"""``hf-cads recipes [--path NAME]``: the recipes and accelerate configs shipped with hf_cads.

Without ``--path`` it lists each with its one-line description; ``--path NAME`` prints the file of
one (to copy and edit it, or for ``accelerate launch --config_file "$(hf-cads recipes --path fsdp)"``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..package_data import recipe_summary, shipped_accelerate_configs, shipped_recipes


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="hf-cads recipes", allow_abbrev=False, description=__doc__)
    parser.add_argument("--path", default=None, metavar="NAME", help="print the file of this recipe or config")
    args = parser.parse_args(list(argv))
    recipes, configs = shipped_recipes(), shipped_accelerate_configs()
    if args.path is not None:
        name = args.path.removesuffix(".yaml")
        if name not in recipes and name not in configs:
            raise ValueError(
                f"No shipped recipe or accelerate config named {args.path!r}; choose from "
                f"{sorted(recipes) + sorted(configs)}."
            )
        print(recipes.get(name) or configs[name])
        return 0
    width = max(map(len, [*recipes, *configs]))
    print("recipes (hf-cads run NAME; hf-cads sweep sweep):")
    for name, path in recipes.items():
        print(f"  {name:<{width}}  {recipe_summary(path)}")
    print('accelerate configs (accelerate launch --config_file "$(hf-cads recipes --path NAME)" -m hf_cads.cli ...):')
    for name, path in configs.items():
        print(f"  {name:<{width}}  {recipe_summary(path)}")
    return 0
