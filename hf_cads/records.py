"""Run records: one JSON line per budgeted run, the planner's input.

Every budgeted run (a :class:`~hf_cads.BudgetedTrainer` given ``run_records=``, ``hf-cads run``,
``hf-cads sweep``) appends one :class:`RunRecord` to a JSON-lines file: which selector with which
configuration, the model and selection-model sizes, pool size, ``k``, tokens trained, the FLOPs by
phase, the target metric(s), the seed and the time. :mod:`hf_cads.planner` fits performance curves
to these records; :mod:`hf_cads.sweep_grid` uses each record's :attr:`RunRecord.key` to skip runs that
are already recorded.

Parameter counts are *matmul* parameters (:attr:`hf_cads.flops.FlopProfile.num_params`, LoRA
adapters excluded): what FLOPs scale with, so the planner can rescale costs to other model sizes.

Example:
    >>> import tempfile, os
    >>> from hf_cads.records import RunRecord, append_record, read_records
    >>> record = RunRecord(selector="bm25", selector_config={"aggregate": "max"}, model="tiny",
    ...     model_params=1000, selection_model_params=0, pool_size=100, k=10, tokens_trained=640,
    ...     selection_flops=2e6, train_flops=3e9, metrics={"target_loss": 2.5}, seed=0)
    >>> path = os.path.join(tempfile.mkdtemp(), "runs.jsonl")
    >>> append_record(path, record)
    >>> read_records(path)[0].total_flops
    3002000000.0
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .selectors import build_selector, get_selector_class
from .selectors.options import family_options, result_options
from .selectors.within_budget import matmul_params

logger = logging.getLogger(__name__)

RECORDS_FILE = "runs.jsonl"
SCHEMA_VERSION = 3
"""2: keys hash the selector options marked as affecting the result (``SelectorConfig`` field
metadata) and the requested options rather than resolved ones. 3: labels name selector families
(default-valued and per-run options left out). Older records get their key and label recomputed
this way when read, so a sweep still recognises the runs they record and the planner groups them."""
NO_SELECTION = "full"
"""Label of runs that train on the whole pool (no selector)."""


@dataclass
class RunRecord:
    """One budgeted run. ``total_flops`` (selection + training) is what the planner puts on the x axis.

    Args:
        selector: registry name as the user gave it (``None``: trained on the whole pool).
        selector_config: the selector's full configuration (``SelectorConfig.to_dict()``).
        model / model_params: the finetuned model (name or path) and its matmul parameter count.
        selection_model_params: matmul parameters of the model the selector scored with (0: none).
        pool_size / k: candidate rows and rows trained on.
        tokens_trained: non-padding tokens in the optimizer steps taken (all processes).
        selection_flops / train_flops / eval_flops: the ledger's phases, except that a selection
            served from the score cache (which the ledger charges 0) records what computing those
            scores cost: the planner compares what each selection costs, not what a rerun paid.
        metrics: the target metric(s) after training, e.g. ``{"target_loss": 1.93}``.
        baseline_metrics: the same metrics before training (zero FLOPs), when measured.
        seed: the run's seed.
        target: the target task.
        label: how plots and tables name this configuration (default: selector plus the options
            the user set, e.g. ``bm25[aggregate=max]``).
        selection_fraction / selection_k: the requested subset size.
        flop_budget: the cap the run trained under (``None``: fixed epochs, no cap).
        setup: further settings that make two runs different experiments (pool, epochs, ...).
        key: identifies the experiment for skip detection (default: a hash of the fields above).
        duplicates_dropped: pool rows the selector did not score because they repeat an earlier
            row's text (``deduplicate="drop"``).
        contaminated_dropped: pool rows left out before selection because they overlap eval rows
            (``decontaminate: drop``, see :mod:`hf_cads.decontamination`).
        selection_split: ``selection_flops`` split into ``pool`` (work on the pool alone, e.g. LESS's
            warmup and pool features, which selections for other targets on the same pool reuse)
            and ``target`` (this target's own work), as the selector measured it
            (:attr:`hf_cads.flops.charges.SelectionCharge.flops_split`); ``None`` when it reports none. The
            planner amortises the ``pool`` part over ``--targets``.
    """

    selector: str | None
    selector_config: dict[str, Any]
    model: str
    model_params: int
    selection_model_params: int
    pool_size: int
    k: int
    tokens_trained: int
    selection_flops: float
    train_flops: float
    metrics: dict[str, float]
    seed: int
    target: str | None = None
    label: str | None = None
    selection_fraction: float | None = None
    selection_k: int | None = None
    flop_budget: float | None = None
    train_steps: int = 0
    eval_flops: float = 0.0
    total_flops: float | None = None
    baseline_metrics: dict[str, float] = field(default_factory=dict)
    setup: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None
    time: str = ""
    key: str = ""
    duplicates_dropped: int = 0
    contaminated_dropped: int = 0
    selection_split: dict[str, float] | None = None
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        for name in ("selection_flops", "train_flops", "eval_flops"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"RunRecord.{name} must be a finite number >= 0, got {value!r}.")
            setattr(self, name, value)
        if self.total_flops is None:
            self.total_flops = self.selection_flops + self.train_flops
        if self.k < 0 or self.pool_size < 0 or (self.pool_size and self.k > self.pool_size):
            raise ValueError(f"RunRecord needs 0 <= k <= pool_size, got k={self.k}, pool_size={self.pool_size}.")
        if self.selection_split is not None:
            self.selection_split = {str(name): float(value) for name, value in self.selection_split.items()}
            if set(self.selection_split) != {"pool", "target"} or min(self.selection_split.values()) < 0:
                raise ValueError(
                    "RunRecord.selection_split must be {'pool': FLOPs, 'target': FLOPs} (both >= 0), "
                    f"got {self.selection_split!r}."
                )
        self.metrics = {str(name): float(value) for name, value in self.metrics.items()}
        self.baseline_metrics = {str(name): float(value) for name, value in self.baseline_metrics.items()}
        if self.label is None:
            self.label = run_label(self.selector, self.selector_config_overrides())
        if not self.time:
            self.time = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if not self.key:
            config = self.selector_config
            if "selector_kwargs" in self.setup and _is_registered(self.selector):
                config = None  # the requested options identify the run (CADS resolves train_budget from the budget)
            self.key = experiment_key(
                self.selector,
                self.setup.get("selector_kwargs"),
                self.seed,
                self.selection_fraction,
                self.selection_k,
                self.model,
                self.target,
                self.flop_budget,
                {k: v for k, v in self.setup.items() if k != "selector_kwargs"},
                selector_config=config,
            )

    def selector_config_overrides(self) -> dict[str, Any]:
        """The options recorded in ``setup['selector_kwargs']`` (what the user set), if any."""
        return dict(self.setup.get("selector_kwargs") or {})

    @property
    def fraction(self) -> float:
        """Share of the pool trained on."""
        return self.k / self.pool_size if self.pool_size else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in data
        )
        if missing:
            raise ValueError(f"run record lacks field(s) {missing}")
        values = {name: value for name, value in data.items() if name in known}
        if int(data.get("schema_version", 1)) < SCHEMA_VERSION:
            # Keys of older records were hashed another way: recompute them the current way.
            values.update(key="", label=None, schema_version=SCHEMA_VERSION)
        # Records written by newer versions may carry extra fields; keep what this version knows.
        return cls(**values)


# -- identity ----------------------------------------------------------------------------------
def canonical_json(value: Any) -> str:
    """Key-sorted, compact JSON (tuples as lists, paths and other objects as strings)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def run_key(
    selector: str | None,
    selector_config: Mapping[str, Any] | None,
    selection_fraction: float | None,
    selection_k: int | None,
    seed: int,
    model: str,
    target: str | None,
    setup: Mapping[str, Any] | None = None,
) -> str:
    """A short hash naming one experiment: selector + canonical config + fraction/k + seed + model +
    target + setup (budget, pool, epochs, ...). Two runs with the same key are repeats. Options the
    selector's config marks as not affecting the result (``show_progress``, ``cache_dir``, ...) are
    left out."""
    identity = {
        "version": SCHEMA_VERSION,
        "selector": selector,
        "config": _result_options(selector, selector_config or {}),
        "fraction": None if selection_fraction is None else float(selection_fraction),
        "k": selection_k,
        "seed": int(seed),
        "model": model,
        "target": target,
        "setup": dict(setup or {}),
    }
    return hashlib.sha1(canonical_json(identity).encode("utf-8")).hexdigest()[:16]


def run_label(selector: str | None, selector_kwargs: Mapping[str, Any] | None = None) -> str:
    """The selector family a run belongs to (one planner curve): ``bm25`` or, with options the user
    set away from their defaults, ``bm25[aggregate=max]``. Options that do not change the result
    (display, caching) and options set per run (the seed, CADS's ``train_budget``) are left out, so
    runs of one configuration at several sizes and seeds share a label."""
    if selector is None:
        return NO_SELECTION
    options = _family_options(selector, selector_kwargs or {})
    if not options:
        return selector
    return f"{selector}[{','.join(f'{k}={_short(v)}' for k, v in sorted(options.items()))}]"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _family_options(selector: str, options: Mapping[str, Any]) -> dict[str, Any]:
    try:
        config_class = get_selector_class(selector).config_class
    except ValueError:  # a selector registered in another program: keep every option but the seed
        return {k: v for k, v in options.items() if k != "seed"}
    return family_options(config_class, options)


def _is_registered(selector: str | None) -> bool:
    try:
        get_selector_class(selector)
    except ValueError:
        return False
    return True


def _result_options(selector: str | None, options: Mapping[str, Any]) -> dict[str, Any]:
    try:
        config_class = get_selector_class(selector).config_class if selector else None
    except ValueError:  # a selector registered in another program: keep every option
        config_class = None
    return result_options(config_class, options) if config_class is not None else dict(options)


def experiment_key(
    selector: str | None,
    selector_kwargs: Mapping[str, Any] | None,
    seed: int,
    selection_fraction: float | None,
    selection_k: int | None,
    model: str,
    target: str | None,
    flop_budget: float | None,
    setup: Mapping[str, Any] | None = None,
    *,
    selector_config: Mapping[str, Any] | None = None,
) -> str:
    """The run key, computed one way: before a run (:func:`hf_cads.pipeline.expected_run_key`) and
    by :class:`RunRecord` after it. The selector's configuration is the one its requested options
    build (``selector_config`` when given instead), plus the budget and the rest of ``setup``."""
    config = selector_config if selector_config is not None else selector_config_dict(selector, selector_kwargs, seed)
    return run_key(
        selector,
        config,
        selection_fraction,
        selection_k,
        seed,
        model,
        target,
        {"flop_budget": flop_budget, **dict(setup or {})},
    )


def selector_config_dict(selector: str | None, selector_kwargs: Mapping[str, Any] | None, seed: int) -> dict[str, Any]:
    """The configuration :class:`~hf_cads.BudgetedTrainer` builds for ``selector`` (no model is loaded)."""
    if selector is None:
        return {}
    return build_selector(selector, selector_kwargs, seed=seed).config.to_dict()


# -- building records --------------------------------------------------------------------------
def record_from_trainer(
    trainer: Any,
    metrics: Mapping[str, float],
    *,
    model: str | None = None,
    target: str | None = None,
    baseline_metrics: Mapping[str, float] | None = None,
    setup: Mapping[str, Any] | None = None,
    seconds: float | None = None,
    key: str = "",
) -> RunRecord:
    """A :class:`RunRecord` for a :class:`~hf_cads.BudgetedTrainer` after ``train()``.

    Example:
        >>> trainer.train()  # doctest: +SKIP
        >>> accuracy = my_eval(trainer.model)  # doctest: +SKIP
        >>> append_record("runs.jsonl", record_from_trainer(trainer, {"accuracy": accuracy}))  # doctest: +SKIP
    """
    args, ledger, selection = trainer.args, trainer.flop_ledger, trainer.selection_result
    pool_size = selection.pool_size if selection is not None else len(trainer.train_dataset)
    k = len(selection) if selection is not None else pool_size
    model_name = model or getattr(getattr(trainer.model, "config", None), "_name_or_path", "") or "model"
    return RunRecord(
        selector=args.selector,
        selector_config=selection.config if selection is not None else {},
        model=model_name,
        model_params=matmul_params(trainer.model),
        selection_model_params=ledger.selection.model_params if ledger.selection is not None else 0,
        pool_size=pool_size,
        k=k,
        tokens_trained=int(ledger.training.tokens_trained),
        duplicates_dropped=ledger.selection.duplicates_dropped if ledger.selection is not None else 0,
        contaminated_dropped=int(
            ((selection.extras if selection is not None else {}).get("decontamination") or {}).get(
                "pool_rows_dropped", 0
            )
        ),
        selection_flops=selection_cost(ledger),
        selection_split=dict(ledger.selection.flops_split)
        if ledger.selection is not None and ledger.selection.flops_split
        else None,
        train_flops=ledger.entries["train"],
        eval_flops=ledger.entries["eval"],
        metrics=dict(metrics),
        baseline_metrics=dict(baseline_metrics or {}),
        seed=int(args.seed),
        target=target,
        selection_fraction=args.selection_fraction,
        selection_k=args.selection_k,
        flop_budget=ledger.budget,
        train_steps=int(trainer.state.global_step),
        # Without a setup (a BudgetedTrainer on its own) the pool is told apart by its size.
        setup={
            "selector_kwargs": dict(args.selector_kwargs or {}),
            **(dict(setup) if setup is not None else {"pool_size": pool_size}),
        },
        seconds=seconds,
        key=key,
    )


def selection_cost(ledger: Any) -> float:
    """FLOPs of the run's selection: the ledger's ``selection`` phase or, when parts were reused
    (scores from the cache, LESS pool features from its index; charged 0), what computing them cost
    (:attr:`hf_cads.flops.charges.SelectionCharge.cost`)."""
    charge = ledger.selection
    if charge is not None and (charge.cache_hit or charge.flops_split):
        return ledger.entries["selection"] - charge.flops + charge.cost
    return ledger.entries["selection"]


def trainer_metrics(trainer: Any, train_output: Any) -> dict[str, float]:
    """What a trainer knows of its own quality: the training loss and the latest ``eval_*`` metrics."""
    metrics = {"train_loss": float(train_output.training_loss)}
    for entry in reversed(trainer.state.log_history):
        evaluated = {k: float(v) for k, v in entry.items() if k.startswith("eval_") and isinstance(v, (int, float))}
        if evaluated:
            metrics.update(evaluated)
            break
    return metrics


# -- the file ----------------------------------------------------------------------------------
def append_record(path: str | os.PathLike, record: RunRecord) -> None:
    """Append ``record`` as one JSON line: a single ``write`` on an ``O_APPEND`` descriptor, then
    ``fsync``, so concurrent writers and crashes leave whole lines (at worst a truncated last one,
    which :func:`read_records` skips with a warning)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record.to_dict(), sort_keys=True, default=str) + "\n").encode("utf-8")
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, line)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def read_records(path: str | os.PathLike) -> list[RunRecord]:
    """All records in a JSON-lines file, in file order.

    A malformed *last* line (a run killed mid-write) is skipped with a warning; a malformed line
    elsewhere is an error naming the line. A file whose first line is not a record (a CSV, a JSON
    array, a pretty-printed JSON document, a data file) is an error saying the file is the wrong kind.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Run-record file {str(path)!r} does not exist; run `hf-cads run` or `hf-cads sweep` first "
            "(they write <output_dir>/runs.jsonl) or pass the right path."
        )
    lines = path.read_text(encoding="utf-8").splitlines()
    numbered = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    records: list[RunRecord] = []
    for position, (number, line) in enumerate(numbered):
        try:
            data = json.loads(line)
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, got {type(data).__name__}")
            records.append(RunRecord.from_dict(data))
        except (ValueError, TypeError) as err:
            if position == 0 and _not_a_records_file([text for _, text in numbered]):
                raise ValueError(
                    f"{path} is not a file of run records (JSON lines, one record object per line; line {number} "
                    f"is {_snippet(line)}): pass the runs.jsonl that `hf-cads run`, `hf-cads sweep` or "
                    "benchmarks/compute_optimal.py writes (<output_dir>/runs.jsonl)."
                ) from err
            if position == len(numbered) - 1:
                logger.warning(
                    "Skipping the malformed last line %d of %s (an interrupted write?): %s", number, path, err
                )
                continue
            raise ValueError(f"{path}:{number} is not a valid run record ({err}); fix or delete that line.") from err
    return records


def _not_a_records_file(lines: list[str]) -> bool:
    """Whether a file whose first line is not a record is another kind of file, not a damaged runs
    file: the second line is not a record either, and the first is not a lone record cut off
    mid-write (the start of a JSON object that does not parse)."""
    if len(lines) == 1:
        text = lines[0].strip()
        if text.startswith("{"):
            try:
                json.loads(text)
            except ValueError:
                return False  # an interrupted write: skipped with a warning
        return True
    try:
        data = json.loads(lines[1])
        if not isinstance(data, dict):
            return True
        RunRecord.from_dict(data)
    except (ValueError, TypeError):
        return True
    return False


def _snippet(line: str, width: int = 40) -> str:
    text = line.strip()
    return repr(text if len(text) <= width else text[: width - 3] + "...")


def recorded_keys(path: str | os.PathLike) -> set[str]:
    """Keys of the records in ``path`` (empty when the file does not exist yet)."""
    return {record.key for record in read_records(path)} if Path(path).is_file() else set()
