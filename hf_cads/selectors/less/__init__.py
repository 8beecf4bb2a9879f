"""LESS (Xia et al., 2024): the ``less`` selector and its parts, registered on import.

- :mod:`.config`: :class:`LESSSelectorConfig`, the options;
- :mod:`.influence`: :class:`LESSSelector`, scoring pool rows by gradient-feature similarity;
- :mod:`.features`: the selection model with fresh LoRA adapters, the warmup, gradient features;
- :mod:`.feature_index`: the on-disk index of warmup checkpoints and pool features;
- :mod:`.gradients`: per-example gradients and Adam update directions;
- :mod:`.projection`: the seeded Johnson-Lindenstrauss projections of gradients.

Example:
    >>> from hf_cads.selectors.less import LESSSelector, LESSSelectorConfig
    >>> LESSSelector(LESSSelectorConfig(projection_dim=64)).config.projection_dim
    64
"""

from .config import LESSSelectorConfig
from .influence import LESSSelector

__all__ = ["LESSSelector", "LESSSelectorConfig"]
