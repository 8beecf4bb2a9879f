"""Writing a selection as a dataset folder (parquet shards + card) and uploading it to the Hub."""

from __future__ import annotations

import logging
import math
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._quiet import quiet_loading
from .._version import __version__
from ..templates import METADATA_KEY, check_no_secret
from .cards import _CONFIG_NAME, CARD_FILE, SUBSET_TAGS, merge_card_metadata, render_subset_card, selection_provenance

if TYPE_CHECKING:
    from ..flops import FlopLedger
    from ..selectors.base import SelectionResult

logger = logging.getLogger(__name__)


# -- writing and pushing --------------------------------------------------------------------------
def save_selection(
    result: SelectionResult,
    local_dir: str | os.PathLike,
    *,
    parent: Any,
    target: Any = None,
    repo_id: str | None = None,
    ledger: FlopLedger | None = None,
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
        result,
        parent=parent,
        target=target,
        ledger=ledger,
        flop_budget=flop_budget,
        planned_training_flops=planned_training_flops,
        config_name=config_name,
        split=split,
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
    check_no_secret(str(card), None)

    for shard in old_shards:
        shard.unlink()
    (folder / data_dir).mkdir(parents=True, exist_ok=True)
    num_shards = max(1, math.ceil(size / convert_file_size_to_int(max_shard_size)))
    with quiet_loading():  # no "Flattening the indices" / "Creating parquet" bars unless --verbose
        for index in range(num_shards):
            part = dataset.shard(num_shards=num_shards, index=index, contiguous=True)
            part.to_parquet(str(folder / data_dir / f"{split}-{index:05d}-of-{num_shards:05d}.parquet"))
    card.save(card_path)
    result.extras["hub"] = {"repo_id": repo_id, "config_name": config_name, "local_dir": str(folder), "pushed": False}
    logger.info("Wrote %d selected rows (%d shard(s)) and the dataset card to %s", len(dataset), num_shards, folder)
    return folder


def push_selection(
    result: SelectionResult,
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
            staging,
            repo_id,
            overwrite=overwrite,
            private=private,
            token=token,
            revision=revision,
            create_pr=create_pr,
            commit_message=commit_message,
            api=api,
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

    folder = Path(local_dir)
    card_path = folder / CARD_FILE
    if not card_path.is_file():
        raise FileNotFoundError(
            f"{folder} has no {CARD_FILE}; pass a folder written by `hf-cads select --local-dir` or "
            "hf_cads.push_selection(result, ..., local_dir=...)."
        )
    local = DatasetCard.load(card_path).data.to_dict()
    selections = local.get(METADATA_KEY) or []
    if not selections:
        raise ValueError(
            f"{card_path} has no {METADATA_KEY!r} metadata: {folder} does not hold a selection saved by hf_cads."
        )
    pushed = [(entry["config_name"], entry["split"]) for entry in selections]
    files = sorted(
        path.relative_to(folder).as_posix()
        for name, split in pushed
        for path in (folder / _data_dir(name)).glob(f"{split}-*.parquet")
    )
    if not files:
        raise FileNotFoundError(
            f"{folder} has a card but no parquet shards under {sorted({_data_dir(n) for n, _ in pushed})}."
        )

    if api is None:
        api = HfApi(token=token, library_name="hf_cads", library_version=__version__)
    repo_id = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True).repo_id
    if revision is not None and not revision.startswith("refs/pr/"):
        api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
    remote_files = api.list_repo_files(repo_id, repo_type="dataset", revision=revision)
    existing: dict[str, Any] = {}
    if CARD_FILE in remote_files:
        existing = DatasetCard.load(
            api.hf_hub_download(repo_id, CARD_FILE, repo_type="dataset", revision=revision)
        ).data.to_dict()
    stale = [
        path
        for path in remote_files
        for name, split in pushed
        if path.startswith(f"{_data_dir(name)}/{split}-") and path not in files
    ]
    metadata = merge_card_metadata(existing, local, overwrite=overwrite, where=f"Dataset repo {repo_id}")
    if stale and not overwrite:
        raise FileExistsError(
            f"Dataset repo {repo_id} already has data files {stale[:3]} where this selection goes; pass "
            "overwrite=True (hf-cads push --overwrite) to replace them, or choose another config_name."
        )
    card = str(render_subset_card(metadata, repo_id))
    check_no_secret(card, token)
    operations: list[Any] = [
        CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(folder / path)) for path in files
    ]
    operations.append(CommitOperationAdd(path_in_repo=CARD_FILE, path_or_fileobj=card.encode("utf-8")))
    operations += [CommitOperationDelete(path_in_repo=path) for path in stale]
    configs = ", ".join(name for name, _ in pushed)
    commit = api.create_commit(
        repo_id,
        operations=operations,
        repo_type="dataset",
        revision=revision,
        create_pr=create_pr,
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
            "config_name must be letters, digits, '_', '-' or '.' (not 'data'), e.g. 'bm25-10pct'; got "
            f"{config_name!r}."
        )
    if not isinstance(split, str) or not re.match(r"^\w+(\.\w+)*$", split):
        raise ValueError(f"split must be a name such as 'train', got {split!r}.")
