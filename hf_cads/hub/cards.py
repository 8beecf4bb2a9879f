"""Dataset cards of shared selections: provenance metadata, score histograms and rendering from
``hf_cads/card_templates/`` templates (plus the redaction shared by every card hf_cads writes)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .._version import __version__
from ..data import source_composition
from ..selectors.base import INDEX_COLUMN, SCORE_COLUMN
from ..templates import METADATA_KEY, format_flops, format_number, plain_values, redact, render_template

if TYPE_CHECKING:
    from ..flops import FlopLedger
    from ..selectors.base import SelectionResult


logger = logging.getLogger(__name__)

SUBSET_CARD_TEMPLATE = "selected_subset.md"
CARD_FILE = "README.md"
"""File name of the dataset card in a selection folder or repository."""
SUBSET_TAGS = ("hf-cads", "data-selection")
LOCAL_SOURCE = "path/to/this/folder"
_CONFIG_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*$")


# -- templates ------------------------------------------------------------------------------------


# -- provenance -----------------------------------------------------------------------------------
@dataclass
class DatasetReference:
    """Where a dataset came from, for a card: a name plus a revision (Hub datasets) or a
    ``datasets`` fingerprint (anything else), and its size.

    Example:
        >>> DatasetReference("tatsu-lab/alpaca", revision="dce01c9").label()
        'tatsu-lab/alpaca @ revision dce01c9'
    """

    name: str
    revision: str | None = None
    fingerprint: str | None = None
    num_rows: int | None = None

    def label(self) -> str:
        parts = [self.name]
        if self.revision:
            parts.append(f"@ revision {self.revision}")
        elif self.fingerprint:
            parts.append(f"(fingerprint {self.fingerprint})")
        text = " ".join(parts)
        return f"{text}, {self.num_rows} rows" if self.num_rows is not None else text


def describe_dataset(dataset: Any, role: str) -> DatasetReference:
    """A :class:`DatasetReference` for a ``datasets.Dataset``, a name (e.g. a Hub id) or a reference.

    A ``Dataset`` is named after its builder (``dataset.info``) when it was loaded from one, else
    ``"in-memory dataset"``, and identified by its fingerprint, which ``datasets`` derives from
    its source files and the transforms applied to them.
    """
    from datasets import Dataset

    if isinstance(dataset, DatasetReference):
        return dataset
    if isinstance(dataset, str) and dataset.strip():
        return DatasetReference(dataset.strip())
    if isinstance(dataset, Dataset):
        info = dataset.info
        name = info.dataset_name or info.builder_name or "in-memory dataset"
        if info.config_name and info.config_name != "default":
            name = f"{name} ({info.config_name})"
        return DatasetReference(name, fingerprint=getattr(dataset, "_fingerprint", None), num_rows=len(dataset))
    raise TypeError(
        f"{role} must be the datasets.Dataset you selected from, its Hub id, or a "
        "DatasetReference(name, revision=...); "
        f"got {type(dataset).__name__}."
    )


def score_histogram(scores: np.ndarray, kept: np.ndarray, bins: int = 10) -> dict[str, list[float] | list[int]]:
    """Counts of ``scores`` (all rows) and ``kept`` (the chosen rows' scores) in ``bins`` equal-width bins.

    Example:
        >>> score_histogram(np.array([0.0, 1.0, 2.0, 3.0]), np.array([2.0, 3.0]), bins=2)["kept"]
        [0, 2]
    """
    scores = np.asarray(scores, dtype=np.float64)
    finite = scores[np.isfinite(scores)]
    if finite.size == 0:
        return {"edges": [], "all": [], "kept": []}
    low, high = float(finite.min()), float(finite.max())
    if low == high:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, bins + 1)
    kept = np.asarray(kept, dtype=np.float64)
    return {
        "edges": [float(edge) for edge in edges],
        "all": np.histogram(finite, bins=edges)[0].astype(int).tolist(),
        "kept": np.histogram(kept[np.isfinite(kept)], bins=edges)[0].astype(int).tolist(),
    }


def format_histogram(histogram: Mapping[str, Sequence[float]], width: int = 40) -> str:
    """A text rendering of :func:`score_histogram`: one line per bin, ``█`` kept rows and ``░`` the rest.

    Example:
        >>> print(format_histogram({"edges": [0.0, 1.0, 2.0], "all": [2, 2], "kept": [0, 2]}, width=4))
        score bin               kept / all
        [   0.000,    1.000)       0 / 2       ░░░░
        [   1.000,    2.000]       2 / 2       ████
    """
    edges, counts, kept = histogram["edges"], histogram["all"], histogram["kept"]
    if not counts:
        return "(no finite scores)"
    largest = max(max(counts), 1)
    labels = [
        f"[{format_number(edges[i])}, {format_number(edges[i + 1])}{']' if i == len(counts) - 1 else ')'}"
        for i in range(len(counts))
    ]
    column = max(len(label) for label in labels) + 2
    lines = [f"{'score bin':<{column}}{'kept':>6} / all"]
    for label, total, chosen in zip(labels, counts, kept):
        bar_total = int(round(width * total / largest))
        bar_kept = min(bar_total, int(round(width * chosen / largest)))
        bar = "█" * bar_kept + "░" * (bar_total - bar_kept)
        lines.append(f"{label:<{column}}{chosen:>6} / {total:<6}  {bar}".rstrip())
    return "\n".join(lines)


def selection_provenance(
    result: SelectionResult,
    *,
    parent: Any,
    target: Any = None,
    ledger: FlopLedger | None = None,
    flop_budget: float | None = None,
    planned_training_flops: float | None = None,
    config_name: str = "default",
    split: str = "train",
) -> dict[str, Any]:
    """The ``hf_cads`` metadata entry of one selection (plain YAML-safe values, secrets redacted).

    ``planned_training_flops`` defaults to what ``ledger`` planned (steps x FLOPs per step), else
    CADS's ``train_budget``, else ``flop_budget`` minus the selection cost.
    """

    parent_ref = describe_dataset(parent, "parent")
    if parent_ref.num_rows is not None and parent_ref.num_rows != result.pool_size:
        raise ValueError(
            f"parent has {parent_ref.num_rows} rows but the selection was made from a pool of {result.pool_size} "
            "rows; "
            "pass the dataset you selected from as parent= (its pool_index values index into it)."
        )
    if parent_ref.num_rows is None:
        parent_ref = replace(parent_ref, num_rows=result.pool_size)
    target_ref = describe_dataset(target, "target") if target is not None else None
    config = dict(result.config)
    if flop_budget is None and ledger is not None:
        flop_budget = ledger.budget
    cache = result.extras.get("cache") if isinstance(result.extras.get("cache"), Mapping) else {}
    flops: dict[str, Any] = {
        "selection": float(result.flops),
        "planned_training": _planned_training_flops(result, ledger, flop_budget, planned_training_flops),
        "budget": float(flop_budget) if flop_budget is not None else None,
    }
    if cache.get("hit"):
        # A cache hit costs nothing now; the card still says what computing the scores cost.
        flops["selection_when_computed"] = float(cache.get("original_flops", 0.0))
    if ledger is not None and ledger.entries.get("train", 0.0) > 0:
        flops["train_spent"] = float(ledger.entries["train"])
    all_scores = result.all_scores if result.all_scores is not None else result.scores
    extras = {
        key: value
        for key, value in result.extras.items()
        if key not in ("hub", "decontamination")
        and not isinstance(value, np.ndarray)  # per-row arrays belong in the data, not the card
    }
    return redact(
        plain_values(
            {
                "config_name": config_name,
                "split": split,
                "hf_cads_version": __version__,
                "selector": result.selector,
                "selector_config": config,
                "seed": config.get("seed"),
                "parent": asdict(parent_ref),
                "target": asdict(target_ref) if target_ref is not None else None,
                "k": len(result),
                "pool_size": int(result.pool_size),
                "fraction": len(result) / result.pool_size,
                "duplicates_dropped": int((result.extras.get("deduplication") or {}).get("dropped", 0)),
                "sources": source_composition(result.dataset),
                "decontamination": result.extras.get("decontamination"),
                "flops": flops,
                "columns": {"score": SCORE_COLUMN, "index": INDEX_COLUMN},
                "scores": {
                    "kept_min": float(np.min(result.scores)) if len(result) else None,
                    "kept_mean": float(np.mean(result.scores)) if len(result) else None,
                    "histogram_scope": "all parent rows" if result.all_scores is not None else "kept rows only",
                    "histogram": score_histogram(all_scores, result.scores),
                },
                "extras": extras,
            }
        )
    )


def _planned_training_flops(
    result: SelectionResult, ledger: FlopLedger | None, flop_budget: float | None, explicit: float | None
) -> float | None:
    if explicit is not None:
        return float(explicit)
    if ledger is not None:
        if ledger.training.planned_flops is not None:
            return ledger.training.planned_flops
        if ledger.budget is not None:
            return float(ledger.budget - ledger.entries.get("selection", 0.0))
    if result.config.get("train_budget") is not None:
        return float(result.config["train_budget"])
    if flop_budget is not None:
        return float(flop_budget) - float(result.flops)
    return None


# -- cards ----------------------------------------------------------------------------------------
def render_subset_card(metadata: Mapping[str, Any], repo_id: str | None) -> Any:
    """The ``DatasetCard`` for ``metadata`` (which holds ``configs``, ``dataset_info`` and the
    ``hf_cads`` provenance list); ``repo_id`` goes into the reload instructions."""
    from huggingface_hub import DatasetCard, DatasetCardData

    selections = list(metadata.get(METADATA_KEY) or [])
    card_data = DatasetCardData(**dict(metadata))
    context = [_selection_context(entry) for entry in selections]
    content = render_template(
        SUBSET_CARD_TEMPLATE,
        card_data=card_data.to_yaml(),
        title=repo_id.split("/")[-1] if repo_id else "Selected training subsets",
        selections=context,
        source=repo_id or LOCAL_SOURCE,
        score_column=SCORE_COLUMN,
        index_column=INDEX_COLUMN,
    )
    return DatasetCard(content)


def _selection_context(entry: Mapping[str, Any]) -> dict[str, Any]:
    import yaml

    flops = entry.get("flops", {})
    parent = DatasetReference(**entry["parent"])
    target = DatasetReference(**entry["target"]) if entry.get("target") else None
    selection = format_flops(flops.get("selection"))
    if flops.get("selection_when_computed") is not None:
        selection += (
            f" (scores reused from a cache; computing them cost {format_flops(flops['selection_when_computed'])})"
        )
    planned = (
        format_flops(flops.get("planned_training")) if flops.get("planned_training") is not None else "not planned"
    )
    if flops.get("train_spent") is not None:
        planned += f" (spent: {format_flops(flops['train_spent'])})"
    extras = entry.get("extras") or {}
    return {
        "config_name": entry["config_name"],
        "split": entry["split"],
        "selector": entry["selector"],
        "parent": parent.label(),
        "target": target.label() if target else "none (untargeted selector)",
        "k": entry["k"],
        "pool_size": entry["pool_size"],
        "fraction": f"{entry['fraction']:.4g}",
        "fraction_percent": f"{100 * entry['fraction']:.3g}%",
        "seed": entry.get("seed"),
        "duplicates_dropped": entry.get("duplicates_dropped", 0),
        "sources": ", ".join(f"{name}: {rows}" for name, rows in (entry.get("sources") or {}).items()),
        **_decontamination_context(entry.get("decontamination")),
        "selection_flops": selection,
        "planned_training_flops": planned,
        "flop_budget": format_flops(flops.get("budget")) if flops.get("budget") is not None else "none (not capped)",
        "hf_cads_version": entry["hf_cads_version"],
        "histogram": format_histogram(entry["scores"]["histogram"]),
        "histogram_scope": entry["scores"]["histogram_scope"],
        "selector_config_yaml": yaml.safe_dump(entry["selector_config"], sort_keys=True),
        "extras_yaml": yaml.safe_dump(extras, sort_keys=True) if extras else "",
    }


def _decontamination_context(summary: Mapping[str, Any] | None) -> dict[str, Any]:
    """The card's decontamination row and example lines (``off`` when it did not run)."""
    if not summary:
        return {"contaminated": "not checked (decontaminate: off)", "contamination_examples": []}
    verb = "dropped" if summary.get("mode") == "drop" else "kept (report only)"
    examples = [
        f"parent row {e['pool_row']} ~ eval row {e['test_row']} ({e['kind']}): `{str(e['overlap'])[:80]}`"
        for e in summary.get("examples", [])
    ]
    return {
        "contaminated": f"{summary['pool_rows_overlapping']} {verb} ({summary['ngram_size']}-gram or exact overlap "
        "with the eval rows)",
        "contamination_examples": examples,
    }


def merge_card_metadata(
    existing: Mapping[str, Any], incoming: Mapping[str, Any], *, overwrite: bool, where: str
) -> dict[str, Any]:
    """``existing`` card metadata with the configs of ``incoming`` added.

    A config of ``incoming`` that ``existing`` already has is an error unless ``overwrite``; then
    its data files, dataset info and provenance are replaced. Everything else of ``existing``
    (other configs, license, ...) is kept and the tags are joined.
    """
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    old_data, new_data = DatasetCardData(**dict(existing)), DatasetCardData(**dict(incoming))
    old_configs = MetadataConfigs.from_dataset_card_data(old_data)
    new_configs = MetadataConfigs.from_dataset_card_data(new_data)
    old_provenance = {entry.get("config_name"): entry for entry in existing.get(METADATA_KEY) or []}
    clashes = sorted((set(old_configs) | set(old_provenance)) & set(new_configs))
    if clashes and not overwrite:
        raise FileExistsError(
            f"{where} already has config(s) {clashes}; pass overwrite=True (hf-cads: --overwrite) to replace them, "
            "or choose another config_name."
        )
    merged = {
        key: value for key, value in dict(existing).items() if key not in {"configs", "dataset_info", METADATA_KEY}
    }
    configs = MetadataConfigs({**old_configs, **new_configs})
    infos = DatasetInfosDict.from_dataset_card_data(old_data)
    infos.update(DatasetInfosDict.from_dataset_card_data(new_data))
    card_data = DatasetCardData(**merged)
    configs.to_dataset_card_data(card_data)
    infos.to_dataset_card_data(card_data)
    merged = card_data.to_dict()
    merged["tags"] = sorted(set(existing.get("tags") or []) | set(incoming.get("tags") or []))
    rows = [sum(split.num_examples for split in (info.splits or {}).values()) for info in infos.values()]
    merged["size_categories"] = [_size_category(max(rows, default=0))]
    new_provenance = {entry["config_name"]: entry for entry in incoming.get(METADATA_KEY) or []}
    merged[METADATA_KEY] = [entry for name, entry in old_provenance.items() if name not in new_provenance] + list(
        new_provenance.values()
    )
    return merged


def _size_category(rows: int) -> str:
    """The Hub's ``size_categories`` value for a dataset of ``rows`` rows."""
    labels = ("1K", "10K", "100K", "1M", "10M", "100M", "1B", "10B", "100B", "1T")
    if rows < 1_000:
        return "n<1K"
    for power, (low, high) in enumerate(zip(labels, labels[1:]), start=3):
        if rows < 10 ** (power + 1):
            return f"{low}<n<{high}"
    return "n>1T"
