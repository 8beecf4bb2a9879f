"""What a run keeps: the selection written as a dataset folder (parquet + dataset card, as
``hf-cads select`` writes it) and the trained model.

``hf-cads run`` writes into ``output_dir``: the adapter (or the full model when ``use_peft`` is
off) and the tokenizer (``save_pretrained``), ``README.md`` (the trainer's model card with the
compute-budget section), ``selected_subset/`` (the rows trained on) plus ``report.json`` and
``runs.jsonl``. ``push_to_hub`` uploads ``output_dir`` as ``Trainer.push_to_hub`` does (the subset
folder with it; ``save_subset: false`` leaves it out), ``push_subset_to`` the subset to a dataset repo.

Example:
    >>> from hf_cads.pipeline.outputs import SUBSET_FOLDER
    >>> SUBSET_FOLDER
    'selected_subset'
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..hub import DatasetReference, push_saved_selection, save_selection

if TYPE_CHECKING:
    from ..data import TaskData
    from ..selectors.result import SelectionResult

logger = logging.getLogger(__name__)

SUBSET_FOLDER = "selected_subset"
"""Where in ``output_dir`` a run writes the rows it selected."""


def save_subset(
    result: SelectionResult,
    folder: str | os.PathLike,
    data: TaskData,
    validation: Any,
    *,
    repo_id: str | None = None,
    flop_budget: float | None = None,
    ledger: Any = None,
    config_name: str = "default",
    overwrite: bool = False,
) -> Path:
    """Write a selection as a dataset folder (parquet shards + dataset card) naming the pool and
    target it came from; what ``hf-cads push FOLDER REPO_ID`` uploads."""
    parent = DatasetReference(
        data.descriptions["pool"], fingerprint=getattr(data.pool, "_fingerprint", None), num_rows=len(data.pool)
    )
    target = DatasetReference(
        data.descriptions["target"], fingerprint=getattr(validation, "_fingerprint", None), num_rows=len(validation)
    )
    return save_selection(
        result,
        folder,
        parent=parent,
        target=target,
        repo_id=repo_id,
        ledger=ledger,
        flop_budget=flop_budget,
        config_name=config_name,
        overwrite=overwrite,
    )


def keep_run_outputs(trainer: Any, run: Any, args: Any, data: TaskData | None, validation: Any) -> dict[str, Any]:
    """Save the trained model, tokenizer, model card and selected subset into ``args.output_dir`` and
    push what the run asks for; returns where each went (for the report).

    Every process calls this (saving a sharded model gathers it); only the main one writes files.
    The subset is pushed first, so the model card links it.
    """
    output_dir = Path(args.output_dir)
    kept: dict[str, Any] = {"model": str(output_dir)}
    result = trainer.selection_result
    if result is not None and data is not None and (run.save_subset or run.push_subset_to):
        folder = output_dir / SUBSET_FOLDER
        if trainer.is_world_process_zero():
            save_subset(
                result,
                folder,
                data,
                validation,
                repo_id=run.push_subset_to,
                flop_budget=args.flop_budget,
                ledger=trainer.flop_ledger,
                overwrite=True,
            )
            kept["subset"] = str(folder)
            if run.push_subset_to:
                commit = push_saved_selection(folder, run.push_subset_to, overwrite=True, token=args.hub_token)
                result.extras["hub"] = {**result.extras.get("hub", {}), "repo_id": run.push_subset_to, "pushed": True}
                kept["subset_repo"] = run.push_subset_to
                logger.info("Pushed the selected subset to %s (%s)", run.push_subset_to, getattr(commit, "oid", ""))
            if not run.save_subset:
                # Asked only to push the subset: the folder was its staging area, and stays out of the model repo.
                shutil.rmtree(folder, ignore_errors=True)
                kept.pop("subset")
    if args.push_to_hub:
        # Saves model, tokenizer and card (with the budget section) and uploads output_dir.
        trainer.push_to_hub(commit_message="hf_cads: budgeted finetune")
        kept["model_repo"] = trainer.hub_model_id
    else:
        trainer.save_model(str(output_dir))
        if trainer.is_world_process_zero():
            trainer.create_model_card(model_name=output_dir.name)
    return kept
