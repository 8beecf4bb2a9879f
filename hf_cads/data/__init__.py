"""Data for selection, training and evaluation: built-in presets (Hub or ``HF_CADS_DATA_DIR``), your
own sources in the formats people have, and the text a model reads for a row.

The path goes one way: :mod:`~hf_cads.data.task_data` (a run's three sets) ->
:mod:`~hf_cads.data.presets` (BBH, GSM8K, the shared pool) -> :mod:`~hf_cads.data.sources` (your
files, folders and Hub ids) -> :mod:`~hf_cads.data.formats` (detect and standardise rows) ->
:mod:`~hf_cads.data.rendering` (rows to text, prompt and completion pieces); no module imports one
before it.

Example:
    >>> from hf_cads.data import load_examples, load_task_data
    >>> pool, fmt = load_examples("my_pool.jsonl", role="pool")  # doctest: +SKIP
    >>> task = load_task_data("boolean_expressions", pool="my_pool.jsonl")  # doctest: +SKIP
"""

from .formats import (
    CHAT_ROLES,
    FORMAT_COLUMNS,
    FORMATS,
    SHAREGPT_ROLES,
    SOURCE_COLUMN,
    check_messages,
    check_rows,
    detect_format,
    implicit_prompt,
    sharegpt_to_messages,
    source_composition,
    standardise,
)
from .presets import (
    BBH_TASKS,
    DATA_DIR_ENV,
    HUB_DATASETS,
    POOL_PRESET,
    POOL_SOURCES,
    HubDataset,
    bbh_tasks,
    build_multisource_pool,
    load_bbh_cot_prompts,
    load_bbh_examples,
    load_bbh_target,
    load_gsm8k,
    load_preset_target,
    local_data_dir,
    quiet_loading,
    target_preset,
)
from .rendering import (
    column_values,
    example_segments,
    format_qa,
    get_texts,
    prompt_answer_pairs,
    render_messages,
)
from .sources import DataSource, hub_unreachable, load_examples, load_source, parse_source
from .task_data import TaskData, load_targets_data, load_task_data

__all__ = [
    "BBH_TASKS",
    "CHAT_ROLES",
    "DATA_DIR_ENV",
    "FORMATS",
    "FORMAT_COLUMNS",
    "HUB_DATASETS",
    "POOL_PRESET",
    "POOL_SOURCES",
    "SHAREGPT_ROLES",
    "SOURCE_COLUMN",
    "DataSource",
    "HubDataset",
    "TaskData",
    "bbh_tasks",
    "build_multisource_pool",
    "check_messages",
    "check_rows",
    "column_values",
    "detect_format",
    "example_segments",
    "format_qa",
    "get_texts",
    "hub_unreachable",
    "implicit_prompt",
    "load_bbh_cot_prompts",
    "load_bbh_examples",
    "load_bbh_target",
    "load_examples",
    "load_gsm8k",
    "load_preset_target",
    "load_source",
    "load_targets_data",
    "load_task_data",
    "local_data_dir",
    "parse_source",
    "prompt_answer_pairs",
    "quiet_loading",
    "render_messages",
    "sharegpt_to_messages",
    "source_composition",
    "standardise",
    "target_preset",
]
