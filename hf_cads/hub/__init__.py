"""Sharing selections on the Hugging Face Hub, and the compute-budget section of model cards.

A selection is shared as a dataset repository: the chosen rows as parquet shards (every parent
column plus ``score`` and ``pool_index``) and a ``README.md`` dataset card rendered from
``hf_cads/card_templates/selected_subset.md``. The card's metadata carries the provenance in a structured
``hf_cads`` block: parent and target datasets (name, revision or fingerprint), selector and its full
configuration, FLOPs spent and planned, k, fraction, seed, hf_cads version and a score histogram.

:func:`save_selection` writes exactly what :func:`push_selection` uploads, so a folder written with
``local_dir=`` (or ``hf-cads select --local-dir``) can be read with ``load_dataset(folder)``,
inspected, and uploaded later with :func:`push_saved_selection` (``hf-cads push``). One repository
may hold several selections as dataset configs (one per ``config_name``); writing a config that is
already there is refused unless ``overwrite=True``. The access token is only ever handed to
``huggingface_hub.HfApi``: it is never logged nor written into a card.

Example:
    >>> from hf_cads import get_selector, push_selection  # doctest: +SKIP
    >>> result = get_selector("bm25").select(pool, target=validation, fraction=0.1)  # doctest: +SKIP
    >>> push_selection(result, "me/bbh-bm25-10pct", parent=pool, target=validation,
    ...                flop_budget=1.2e13, local_dir="subset")  # writes only  # doctest: +SKIP
    >>> push_selection(result, "me/bbh-bm25-10pct", parent=pool, target=validation,
    ...                flop_budget=1.2e13)  # doctest: +SKIP
"""

from ..templates import METADATA_KEY, card_template, render_template
from ..trainer.model_card import BUDGET_SECTION_END, BUDGET_SECTION_START, add_budget_section
from .cards import (
    CARD_FILE,
    DatasetReference,
    describe_dataset,
    format_histogram,
    merge_card_metadata,
    render_subset_card,
    score_histogram,
    selection_provenance,
)
from .upload import push_saved_selection, push_selection, save_selection

__all__ = [
    "BUDGET_SECTION_END",
    "BUDGET_SECTION_START",
    "CARD_FILE",
    "METADATA_KEY",
    "DatasetReference",
    "add_budget_section",
    "card_template",
    "describe_dataset",
    "format_histogram",
    "merge_card_metadata",
    "push_saved_selection",
    "push_selection",
    "render_subset_card",
    "render_template",
    "save_selection",
    "score_histogram",
    "selection_provenance",
]
