"""Sharing selections on the Hugging Face Hub, and the compute-budget section of model cards.

A selection is shared as a dataset repository: the chosen rows as parquet shards (every parent
column plus ``score`` and ``pool_index``) and a ``README.md`` dataset card rendered from
``model_cards/selected_subset.md``. The card's metadata carries the provenance in a structured
``hf_cads`` block: parent and target datasets (name, revision or fingerprint), selector and its full
configuration, FLOPs spent and planned, k, fraction, seed, hf_cads version and a score histogram.

:func:`save_selection` writes exactly what :func:`push_selection` uploads, so a folder written with
``local_dir=`` (or ``hf-cads select --local-dir``) can be read with ``load_dataset(folder)``,
inspected, and uploaded later with :func:`push_saved_selection` (``hf-cads push``). One repository
may hold several selections as dataset configs (one per ``config_name``); writing a config that is
already there is refused unless ``overwrite=True``. The access token is only ever handed to
``huggingface_hub.HfApi``: it is never logged nor written into a card.

Example:
    >>> from hf_cads import get_selector  # doctest: +SKIP
    >>> result = get_selector("bm25").select(pool, target=validation, fraction=0.1)  # doctest: +SKIP
    >>> result.push_to_hub("me/bbh-bm25-10pct", parent=pool, target=validation,
    ...                    flop_budget=1.2e13, local_dir="subset")  # writes only  # doctest: +SKIP
    >>> result.push_to_hub("me/bbh-bm25-10pct", parent=pool, target=validation, flop_budget=1.2e13)  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import tempfile
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from .selectors.base import INDEX_COLUMN, SCORE_COLUMN

if TYPE_CHECKING:
    from .flops import FlopLedger
    from .selectors.base import SelectionResult

logger = logging.getLogger(__name__)

SUBSET_CARD_TEMPLATE = "selected_subset.md"
MODEL_CARD_TEMPLATE = "budgeted_model.md"
CARD_FILE = "README.md"
METADATA_KEY = "hf_cads"
SUBSET_TAGS = ("hf-cads", "data-selection")
MODEL_TAGS = ("hf-cads", "budgeted-finetuning")
BUDGET_SECTION_START = "<!-- hf_cads:budget-section:start -->"
BUDGET_SECTION_END = "<!-- hf_cads:budget-section:end -->"
LOCAL_SOURCE = "path/to/this/folder"
_SECRET_KEY = re.compile(r"(^|_)(token|password|secret|api_key|apikey)$", re.IGNORECASE)
_HF_TOKEN = re.compile(r"hf_[A-Za-z0-9]{20,}")
_CONFIG_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*$")


# -- templates ------------------------------------------------------------------------------------
def card_template(name: str) -> str:
    """The text of a card template in ``model_cards/``.

    Installed packages carry the templates as ``hf_cads/model_cards`` package data (a link to the
    repository's ``model_cards/`` folder, the one copy of them); a checkout without that link
    reads the folder directly.
    """
    packaged = resources.files("hf_cads").joinpath("model_cards", name)
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    checkout = Path(__file__).resolve().parents[1] / "model_cards" / name
    if checkout.is_file():
        return checkout.read_text(encoding="utf-8")
    raise FileNotFoundError(
        f"Card template {name!r} is missing from hf_cads/model_cards and model_cards/; reinstall hf_cads "
        "(pip install -e .) from a complete checkout."
    )


def render_template(name: str, **context: Any) -> str:
    """Render a ``model_cards/`` template with Jinja; a variable the template uses but ``context``
    lacks is an error, not an empty string."""
    import jinja2

    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    return environment.from_string(card_template(name)).render(**context)


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
        f"{role} must be the datasets.Dataset you selected from, its Hub id, or a DatasetReference(name, revision=...); "
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
        f"[{_number(edges[i])}, {_number(edges[i + 1])}{']' if i == len(counts) - 1 else ')'}" for i in range(len(counts))
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
    result: "SelectionResult",
    *,
    parent: Any,
    target: Any = None,
    ledger: "FlopLedger | None" = None,
    flop_budget: float | None = None,
    planned_training_flops: float | None = None,
    config_name: str = "default",
    split: str = "train",
) -> dict[str, Any]:
    """The ``hf_cads`` metadata entry of one selection (plain YAML-safe values, secrets redacted).

    ``planned_training_flops`` defaults to what ``ledger`` planned (steps x FLOPs per step), else
    CADS's ``train_budget``, else ``flop_budget`` minus the selection cost.
    """
    from . import __version__

    parent_ref = describe_dataset(parent, "parent")
    if parent_ref.num_rows is not None and parent_ref.num_rows != result.pool_size:
        raise ValueError(
            f"parent has {parent_ref.num_rows} rows but the selection was made from a pool of {result.pool_size} rows; "
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
        key: value for key, value in result.extras.items()
        if key != "hub" and not isinstance(value, np.ndarray)  # per-row arrays belong in the data, not the card
    }
    return _redact(_plain({
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
        "flops": flops,
        "columns": {"score": SCORE_COLUMN, "index": INDEX_COLUMN},
        "scores": {
            "kept_min": float(np.min(result.scores)) if len(result) else None,
            "kept_mean": float(np.mean(result.scores)) if len(result) else None,
            "histogram_scope": "all parent rows" if result.all_scores is not None else "kept rows only",
            "histogram": score_histogram(all_scores, result.scores),
        },
        "extras": extras,
    }))


def _planned_training_flops(
    result: "SelectionResult", ledger: "FlopLedger | None", flop_budget: float | None, explicit: float | None
) -> float | None:
    if explicit is not None:
        return float(explicit)
    if ledger is not None:
        steps, per_step = ledger.notes.get("planned_steps"), ledger.notes.get("expected_step_flops")
        if steps and per_step:
            return float(steps) * float(per_step)
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
    selection = _flops(flops.get("selection"))
    if flops.get("selection_when_computed") is not None:
        selection += f" (scores reused from a cache; computing them cost {_flops(flops['selection_when_computed'])})"
    planned = _flops(flops.get("planned_training")) if flops.get("planned_training") is not None else "not planned"
    if flops.get("train_spent") is not None:
        planned += f" (spent: {_flops(flops['train_spent'])})"
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
        "selection_flops": selection,
        "planned_training_flops": planned,
        "flop_budget": _flops(flops.get("budget")) if flops.get("budget") is not None else "none (not capped)",
        "hf_cads_version": entry["hf_cads_version"],
        "histogram": format_histogram(entry["scores"]["histogram"]),
        "histogram_scope": entry["scores"]["histogram_scope"],
        "selector_config_yaml": yaml.safe_dump(entry["selector_config"], sort_keys=True),
        "extras_yaml": yaml.safe_dump(extras, sort_keys=True) if extras else "",
    }


def merge_card_metadata(existing: Mapping[str, Any], incoming: Mapping[str, Any], *, overwrite: bool, where: str) -> dict[str, Any]:
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
    merged = {key: value for key, value in dict(existing).items() if key not in {"configs", "dataset_info", METADATA_KEY}}
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
    merged[METADATA_KEY] = [entry for name, entry in old_provenance.items() if name not in new_provenance] + list(new_provenance.values())
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


# -- writing and pushing --------------------------------------------------------------------------
def save_selection(
    result: "SelectionResult",
    local_dir: str | os.PathLike,
    *,
    parent: Any,
    target: Any = None,
    repo_id: str | None = None,
    ledger: "FlopLedger | None" = None,
    flop_budget: float | None = None,
    planned_training_flops: float | None = None,
    config_name: str = "default",
    split: str = "train",
    overwrite: bool = False,
    max_shard_size: int | str = "500MB",
) -> Path:
    """Write the selection as a dataset repository folder: parquet shards + ``README.md``.

    The folder is exactly what :func:`push_selection` uploads to ``repo_id`` (which only goes
    into the card's reload instructions here): ``load_dataset(local_dir, config_name)`` reads
    the rows and ``DatasetCard.load(local_dir + "/README.md")`` the provenance. A folder that
    already holds selections keeps them; rewriting one of its configs needs ``overwrite=True``.
    """
    from datasets import Split
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo
    from datasets.utils.py_utils import convert_file_size_to_int
    from huggingface_hub import DatasetCard, DatasetCardData

    _check_config_name(config_name, split)
    folder = Path(local_dir)
    data_dir = _data_dir(config_name)
    provenance = selection_provenance(
        result, parent=parent, target=target, ledger=ledger, flop_budget=flop_budget,
        planned_training_flops=planned_training_flops, config_name=config_name, split=split,
    )
    dataset = result.dataset
    card_data = DatasetCardData(
        tags=list(SUBSET_TAGS),
        configs=[{"config_name": config_name, "data_files": [{"split": split, "path": f"{data_dir}/{split}-*"}]}],
    )
    size = int(dataset.data.nbytes * len(dataset) / max(1, dataset.data.num_rows))
    info = DatasetInfo(features=dataset.features, dataset_size=size)
    info.splits = SplitDict({split: SplitInfo(name=str(Split(split)), num_bytes=size, num_examples=len(dataset))})
    DatasetInfosDict({config_name: info}).to_dataset_card_data(card_data)
    incoming = {**card_data.to_dict(), METADATA_KEY: [provenance]}

    card_path = folder / CARD_FILE
    existing = DatasetCard.load(card_path).data.to_dict() if card_path.is_file() else {}
    metadata = merge_card_metadata(existing, incoming, overwrite=overwrite, where=str(folder))
    old_shards = sorted((folder / data_dir).glob(f"{split}-*.parquet"))
    if old_shards and not overwrite:
        raise FileExistsError(
            f"{folder} already has {len(old_shards)} {split} shard(s) under {data_dir}/; pass overwrite=True "
            "(hf-cads: --overwrite) to replace them, or choose another config_name or folder."
        )
    card = render_subset_card(metadata, repo_id)
    _check_no_secret(str(card), None)

    for shard in old_shards:
        shard.unlink()
    (folder / data_dir).mkdir(parents=True, exist_ok=True)
    num_shards = max(1, math.ceil(size / convert_file_size_to_int(max_shard_size)))
    for index in range(num_shards):
        part = dataset.shard(num_shards=num_shards, index=index, contiguous=True)
        part.to_parquet(str(folder / data_dir / f"{split}-{index:05d}-of-{num_shards:05d}.parquet"))
    card.save(card_path)
    result.extras["hub"] = {"repo_id": repo_id, "config_name": config_name, "local_dir": str(folder), "pushed": False}
    logger.info("Wrote %d selected rows (%d shard(s)) and the dataset card to %s", len(dataset), num_shards, folder)
    return folder


def push_selection(
    result: "SelectionResult",
    repo_id: str,
    *,
    parent: Any,
    local_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    api: Any = None,
    **card_options: Any,
) -> Any:
    """Upload a selection to the dataset repository ``repo_id``; with ``local_dir`` only write it there.

    ``card_options`` go to :func:`save_selection` (``target``, ``ledger``, ``flop_budget``,
    ``planned_training_flops``, ``config_name``, ``split``, ``max_shard_size``). Returns the
    ``huggingface_hub.CommitInfo`` of the upload, or the folder written. ``token`` defaults to
    the logged-in one (``HF_TOKEN`` / ``hf auth login``).
    """
    if local_dir is not None:
        return save_selection(result, local_dir, parent=parent, repo_id=repo_id, overwrite=overwrite, **card_options)
    with tempfile.TemporaryDirectory(prefix="hf_cads_push_") as staging:
        save_selection(result, staging, parent=parent, repo_id=repo_id, **card_options)
        commit = push_saved_selection(
            staging, repo_id, overwrite=overwrite, private=private, token=token, revision=revision,
            create_pr=create_pr, commit_message=commit_message, api=api,
        )
    result.extras["hub"] = {**result.extras["hub"], "local_dir": None, "pushed": True}
    return commit


def push_saved_selection(
    local_dir: str | os.PathLike,
    repo_id: str,
    *,
    overwrite: bool = False,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    api: Any = None,
) -> Any:
    """Upload a folder written by :func:`save_selection` to the dataset repository ``repo_id``.

    Creates the repository if needed, merges the folder's configs into the repository's card
    (refusing to replace an existing config unless ``overwrite``; replaced configs lose their old
    shards) and commits shards and card in one commit. ``api`` defaults to
    ``huggingface_hub.HfApi(token=token)``.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, DatasetCard, HfApi

    from . import __version__

    folder = Path(local_dir)
    card_path = folder / CARD_FILE
    if not card_path.is_file():
        raise FileNotFoundError(
            f"{folder} has no {CARD_FILE}; pass a folder written by `hf-cads select --local-dir` or "
            "SelectionResult.push_to_hub(..., local_dir=...)."
        )
    local = DatasetCard.load(card_path).data.to_dict()
    selections = local.get(METADATA_KEY) or []
    if not selections:
        raise ValueError(f"{card_path} has no {METADATA_KEY!r} metadata: {folder} does not hold a selection saved by hf_cads.")
    pushed = [(entry["config_name"], entry["split"]) for entry in selections]
    files = sorted(
        path.relative_to(folder).as_posix()
        for name, split in pushed for path in (folder / _data_dir(name)).glob(f"{split}-*.parquet")
    )
    if not files:
        raise FileNotFoundError(f"{folder} has a card but no parquet shards under {sorted({_data_dir(n) for n, _ in pushed})}.")

    if api is None:
        api = HfApi(token=token, library_name="hf_cads", library_version=__version__)
    repo_id = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True).repo_id
    if revision is not None and not revision.startswith("refs/pr/"):
        api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
    remote_files = api.list_repo_files(repo_id, repo_type="dataset", revision=revision)
    existing: dict[str, Any] = {}
    if CARD_FILE in remote_files:
        existing = DatasetCard.load(api.hf_hub_download(repo_id, CARD_FILE, repo_type="dataset", revision=revision)).data.to_dict()
    stale = [
        path for path in remote_files
        for name, split in pushed if path.startswith(f"{_data_dir(name)}/{split}-") and path not in files
    ]
    metadata = merge_card_metadata(existing, local, overwrite=overwrite, where=f"Dataset repo {repo_id}")
    if stale and not overwrite:
        raise FileExistsError(
            f"Dataset repo {repo_id} already has data files {stale[:3]} where this selection goes; pass "
            "overwrite=True (hf-cads push --overwrite) to replace them, or choose another config_name."
        )
    card = str(render_subset_card(metadata, repo_id))
    _check_no_secret(card, token)
    operations: list[Any] = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(folder / path)) for path in files]
    operations.append(CommitOperationAdd(path_in_repo=CARD_FILE, path_or_fileobj=card.encode("utf-8")))
    operations += [CommitOperationDelete(path_in_repo=path) for path in stale]
    configs = ", ".join(name for name, _ in pushed)
    commit = api.create_commit(
        repo_id, operations=operations, repo_type="dataset", revision=revision, create_pr=create_pr,
        commit_message=commit_message or f"hf_cads: upload selection ({configs})",
    )
    logger.info("Pushed %d shard(s) of config(s) %s to dataset repo %s", len(files), configs, repo_id)
    return commit


def _data_dir(config_name: str) -> str:
    # The layout `datasets.Dataset.push_to_hub` uses, so both tools can add configs to one repo.
    return "data" if config_name == "default" else config_name


def _check_config_name(config_name: str, split: str) -> None:
    if not isinstance(config_name, str) or not _CONFIG_NAME.match(config_name) or config_name == "data":
        raise ValueError(
            f"config_name must be letters, digits, '_', '-' or '.' (not 'data'), e.g. 'bm25-10pct'; got {config_name!r}."
        )
    if not isinstance(split, str) or not re.match(r"^\w+(\.\w+)*$", split):
        raise ValueError(f"split must be a name such as 'train', got {split!r}.")


def _check_no_secret(text: str, token: str | None) -> None:
    if (token and token in text) or _HF_TOKEN.search(text):
        raise RuntimeError("Refusing to write a card that contains an access token; remove it from the selector options.")


def _redact(value: Any) -> Any:
    """Replace values stored under secret-looking keys, and anything shaped like an HF token."""
    if isinstance(value, dict):
        return {key: "<redacted>" if _SECRET_KEY.search(str(key)) and item is not None else _redact(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_redact(item) for item in value]
    if isinstance(value, str):
        return _HF_TOKEN.sub("<redacted>", value)
    return value


def _plain(value: Any) -> Any:
    """``value`` as YAML-safe builtins (numpy scalars and arrays, tuples, paths converted)."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 64 else f"<array of {value.size} values>"
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _number(value: float) -> str:
    return f"{value:8.3f}" if abs(value) < 1e4 else f"{value:8.2e}"


def _flops(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


# -- model cards ----------------------------------------------------------------------------------
def add_budget_section(trainer: Any, card_path: str | os.PathLike) -> None:
    """Add (or replace) the compute-budget section of a ``BudgetedTrainer``'s model card.

    Rendered from ``model_cards/budgeted_model.md``: the FLOP ledger by phase, the selector and
    its configuration, and a link to the selected subset when it was pushed
    (``trainer.selection_result.push_to_hub``). The card's metadata gets the ``hf-cads`` tags, the
    subset under ``datasets`` and the ledger under ``hf_cads``.
    """
    import yaml
    from huggingface_hub import ModelCard

    from . import __version__

    path = Path(card_path)
    card = ModelCard.load(path) if path.is_file() else ModelCard("---\n---\n")
    ledger = trainer.flop_ledger
    breakdown = ledger.breakdown()
    result = trainer.selection_result
    hub = dict(result.extras.get("hub") or {}) if result is not None else {}
    subset_repo = hub.get("repo_id") if hub.get("pushed") else None
    if subset_repo:
        config = hub.get("config_name", "default")
        subset = f"[{subset_repo}](https://huggingface.co/datasets/{subset_repo})" + (f" (config `{config}`)" if config != "default" else "")
    elif result is not None:
        subset = "not pushed to the Hub (share it with `trainer.selection_result.push_to_hub(...)` or `hf-cads push`)"
    else:
        subset = ""
    denominator = ledger.budget or ledger.spent or 1.0
    rows = [
        {"phase": phase, "flops": _flops(breakdown[phase]), "share": f"{100 * breakdown[phase] / denominator:.3g}%"}
        for phase in ("selection", "train", "eval")
    ] + [{"phase": "**total**", "flops": _flops(ledger.spent), "share": f"{100 * ledger.spent / denominator:.3g}%"}]
    notes = ledger.notes
    lines = [f"optimizer steps taken: {trainer.state.global_step}"]
    if notes.get("planned_steps"):
        lines.append(f"steps planned from the budget: {notes['planned_steps']} (~{_flops(notes.get('expected_step_flops'))} FLOPs each)")
    if notes.get("tokens_trained"):
        lines.append(f"tokens trained: {notes['tokens_trained']}")
    if notes.get("stopped_by_budget"):
        lines.append("training stopped at the FLOP cap (the next step would have exceeded it)")
    section = render_template(
        MODEL_CARD_TEMPLATE,
        budget=_flops(ledger.budget) if ledger.budget is not None else "",
        ledger_rows=rows,
        selector=result.selector if result is not None else "",
        k=len(result) if result is not None else 0,
        pool_size=result.pool_size if result is not None else 0,
        fraction_percent=f"{100 * len(result) / result.pool_size:.3g}%" if result is not None else "",
        subset=subset,
        training_lines=lines,
        selector_config_yaml=yaml.safe_dump(_redact(_plain(result.config)), sort_keys=True) if result is not None else "",
    )
    body = card.text
    if BUDGET_SECTION_START in body and BUDGET_SECTION_END in body:
        before, rest = body.split(BUDGET_SECTION_START, 1)
        body = before.rstrip("\n") + rest.split(BUDGET_SECTION_END, 1)[1]
    body = f"{body.rstrip()}\n\n{BUDGET_SECTION_START}\n{section.strip()}\n{BUDGET_SECTION_END}\n"

    data = card.data
    data.tags = sorted(set(data.tags or []) | set(MODEL_TAGS))
    if subset_repo:
        data.datasets = sorted(set(data.datasets or []) | {subset_repo})
    data[METADATA_KEY] = _redact(_plain({
        "hf_cads_version": __version__,
        "ledger": breakdown,
        "selector": result.selector if result is not None else None,
        "k": len(result) if result is not None else None,
        "pool_size": result.pool_size if result is not None else None,
        "selected_subset": subset_repo,
    }))
    content = f"---\n{data.to_yaml()}\n---\n{body}"
    _check_no_secret(content, getattr(trainer.args, "hub_token", None))
    path.write_text(content, encoding="utf-8")


# -- command line ---------------------------------------------------------------------------------
def select_command(argv: Sequence[str]) -> int:
    """``hf-cads select [RECIPE] --local-dir DIR [--repo-id ID] [--config-name NAME] [--overwrite] [--option value ...]``

    Runs the recipe's selector on its pool and target (no training) and writes the selection as a
    dataset folder: exactly what ``hf-cads push DIR REPO_ID`` uploads.
    """
    from .cli import default_recipe
    from .distributed import current_processes
    from .models import load_causal_lm
    from .pipeline import load_run_data, model_load_options, parse_recipe
    from .selectors import get_selector, get_selector_class

    parser = argparse.ArgumentParser(prog="hf-cads select", allow_abbrev=False, description=select_command.__doc__)
    parser.add_argument("--local-dir", required=True, help="folder to write the parquet shards and README.md to")
    parser.add_argument("--repo-id", default=None, help="dataset repo the folder is meant for (used in the card's reload code)")
    parser.add_argument("--config-name", default="default", help="dataset config to write (default: default)")
    parser.add_argument("--overwrite", action="store_true", help="replace the config if the folder already has it")
    argv = list(argv)
    # As for `hf-cads run`: an optional recipe first, then flags; flags this parser does not know
    # override recipe options.
    recipe = Path(argv.pop(0)) if argv and not argv[0].startswith("-") else default_recipe()
    args, overrides = parser.parse_known_args(argv)
    run, training = parse_recipe(recipe, overrides)
    if training.selector is None:
        raise ValueError(f"Recipe {str(recipe)!r} names no selector; set `selector:` (see `hf-cads selectors`).")
    validation, _, pool = load_run_data(run, training.seed)
    options = dict(training.selector_kwargs or {})
    options.setdefault("seed", training.seed)
    if get_selector_class(training.selector).reuses_training_model and "model_name_or_path" not in options:
        # The selector scores with the model the recipe finetunes, loaded as `hf-cads run` loads it.
        model, tokenizer = load_causal_lm(run.model_name_or_path, **model_load_options(run))
        options.update(model=model, tokenizer=tokenizer)
    selector = get_selector(training.selector, **options)
    estimate = selector.estimate_flops(pool, validation)
    if training.flop_budget is not None and estimate >= training.flop_budget:
        raise ValueError(
            f"flop_budget={training.flop_budget:.4g} is smaller than the {training.selector!r} selection cost "
            f"({estimate:.4g} FLOPs); raise flop_budget or use a cheaper selector."
        )
    result = selector.select(pool, target=validation, k=training.selection_k, fraction=training.selection_fraction)
    if not current_processes().is_main:
        return 0
    sources = ", ".join(run.pool_sources)
    parent = DatasetReference(
        f"hf_cads shared pool [{sources}] (max_per_source={run.max_per_source}, max_pool_chars={run.max_pool_chars}, seed={training.seed})",
        fingerprint=getattr(pool, "_fingerprint", None), num_rows=len(pool),
    )
    target = DatasetReference(
        f"{run.target} validation set" if run.target == "gsm8k" else f"BBH {run.target} validation set (chain-of-thought exemplars)",
        fingerprint=getattr(validation, "_fingerprint", None), num_rows=len(validation),
    )
    folder = save_selection(
        result, args.local_dir, parent=parent, target=target, repo_id=args.repo_id, flop_budget=training.flop_budget,
        config_name=args.config_name, overwrite=args.overwrite,
    )
    print(
        f"hf-cads select: kept {len(result)} of {result.pool_size} rows with {result.selector} "
        f"({result.flops:.4g} FLOPs); wrote {folder} (load_dataset({str(folder)!r}, {args.config_name!r}))",
        flush=True,
    )
    return 0


def push_command(argv: Sequence[str]) -> int:
    """``hf-cads push LOCAL_DIR REPO_ID [--private] [--overwrite] [--revision R] [--create-pr] [--commit-message M]``

    Uploads a selection folder written by ``hf-cads select --local-dir`` (or
    ``SelectionResult.push_to_hub(..., local_dir=...)``) to a dataset repo. The token comes from
    ``HF_TOKEN`` or ``hf auth login``; it is never taken on the command line.
    """
    parser = argparse.ArgumentParser(prog="hf-cads push", allow_abbrev=False, description=push_command.__doc__)
    parser.add_argument("local_dir", help="folder written by `hf-cads select --local-dir`")
    parser.add_argument("repo_id", help="dataset repository, e.g. my-name/bbh-bm25-10pct")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--overwrite", action="store_true", help="replace configs the repository already has")
    parser.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--commit-message", default=None)
    args = parser.parse_args(list(argv))
    commit = push_saved_selection(
        args.local_dir, args.repo_id, overwrite=args.overwrite, private=True if args.private else None,
        revision=args.revision, create_pr=args.create_pr, commit_message=args.commit_message,
    )
    print(f"hf-cads push: uploaded {args.local_dir} to https://huggingface.co/datasets/{args.repo_id} ({getattr(commit, 'commit_url', commit)})", flush=True)
    return 0
