"""The compute-budget section of a ``BudgetedTrainer`` model card."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .._version import __version__
from ..models import BUILTIN_HUB_IDS
from ..templates import METADATA_KEY, check_no_secret, format_flops, plain_values, redact, render_template

MODEL_CARD_TEMPLATE = "budgeted_model.md"
MODEL_TAGS = ("hf-cads", "budgeted-finetuning")
BUDGET_SECTION_START = "<!-- hf_cads:budget-section:start -->"
"""Marks the start of the compute-budget section in a model card (replaced on each call)."""
BUDGET_SECTION_END = "<!-- hf_cads:budget-section:end -->"
"""Marks the end of the compute-budget section in a model card."""


def add_budget_section(trainer: Any, card_path: str | os.PathLike) -> None:
    """Add (or replace) the compute-budget section of a ``BudgetedTrainer``'s model card.

    Rendered from ``hf_cads/card_templates/budgeted_model.md``: the FLOP ledger by phase, the selector and
    its configuration, and a link to the selected subset when it was pushed
    (``push_selection(trainer.selection_result, ...)``). The card's metadata gets the ``hf-cads`` tags, the
    subset under ``datasets`` and the ledger under ``hf_cads``.
    """
    from huggingface_hub import ModelCard

    path = Path(card_path)
    card = ModelCard.load(path) if path.is_file() else ModelCard("---\n---\n")
    result = trainer.selection_result
    subset_repo, subset = subset_link(result)
    body = replace_section(card.text, render_budget_section(trainer, subset))
    data = card.data
    # transformers writes the built-in alias (the model's config name); the Hub links a Hub id.
    if isinstance(data.get("base_model"), str) and data.get("base_model", "").lower() in BUILTIN_HUB_IDS:
        data.base_model = BUILTIN_HUB_IDS[data.base_model.lower()]
    data.tags = sorted(set(data.tags or []) | set(MODEL_TAGS))
    if subset_repo:
        data.datasets = sorted(set(data.datasets or []) | {subset_repo})
    data[METADATA_KEY] = redact(
        plain_values(
            {
                "hf_cads_version": __version__,
                "ledger": trainer.flop_ledger.breakdown(),
                "selector": result.selector if result is not None else None,
                "k": len(result) if result is not None else None,
                "pool_size": result.pool_size if result is not None else None,
                "selected_subset": subset_repo,
            }
        )
    )
    content = f"---\n{data.to_yaml()}\n---\n{body}"
    check_no_secret(content, getattr(trainer.args, "hub_token", None))
    path.write_text(content, encoding="utf-8")


def subset_link(result: Any) -> tuple[str | None, str]:
    """``(repo id, Markdown text)`` of the selected subset: a link once it was pushed, else how to push it.

    Example:
        >>> subset_link(None)
        (None, '')
    """
    if result is None:
        return None, ""
    hub = dict(result.extras.get("hub") or {})
    repo = hub.get("repo_id") if hub.get("pushed") else None
    if repo is None:
        return (
            None,
            "not pushed to the Hub (share it with `hf_cads.push_selection(trainer.selection_result, ...)` "
            "or `hf-cads push`)",
        )
    config = hub.get("config_name", "default")
    return repo, f"[{repo}](https://huggingface.co/datasets/{repo})" + (
        f" (config `{config}`)" if config != "default" else ""
    )


def ledger_rows(ledger: Any) -> list[dict[str, str]]:
    """One table row per phase plus the total, with the share of the budget (or of the spend).

    Example:
        >>> from hf_cads.flops import FlopLedger
        >>> ledger = FlopLedger(budget=1e12)
        >>> ledger.charge("train", 5e11)
        >>> ledger_rows(ledger)[-1]["share"]
        '50%'
    """
    breakdown = ledger.breakdown()
    denominator = ledger.budget or ledger.spent or 1.0
    rows = [
        {
            "phase": phase,
            "flops": format_flops(breakdown[phase]),
            "share": f"{100 * breakdown[phase] / denominator:.3g}%",
        }
        for phase in ("selection", "train", "eval")
    ]
    return rows + [
        {
            "phase": "**total**",
            "flops": format_flops(ledger.spent),
            "share": f"{100 * ledger.spent / denominator:.3g}%",
        }
    ]


def training_lines(steps_taken: int, plan: Any) -> list[str]:
    """What the :class:`~hf_cads.flops.charges.TrainingPlan` says, one sentence per fact.

    Example:
        >>> from hf_cads.flops.charges import TrainingPlan
        >>> training_lines(4, TrainingPlan(tokens_trained=512))
        ['optimizer steps taken: 4', 'tokens trained: 512']
    """
    lines = [f"optimizer steps taken: {steps_taken}"]
    if plan.planned_steps:
        lines.append(
            f"steps planned from the budget: {plan.planned_steps} "
            f"(~{format_flops(plan.expected_step_flops)} FLOPs each)"
        )
    if plan.tokens_trained:
        lines.append(f"tokens trained: {plan.tokens_trained}")
    if plan.stopped_by_budget:
        lines.append("training stopped at the FLOP cap (the next step would have exceeded it)")
    return lines


def render_budget_section(trainer: Any, subset: str) -> str:
    """The section's Markdown, from ``hf_cads/card_templates/budgeted_model.md``."""
    import yaml

    ledger, result = trainer.flop_ledger, trainer.selection_result
    return render_template(
        MODEL_CARD_TEMPLATE,
        budget=format_flops(ledger.budget) if ledger.budget is not None else "",
        ledger_rows=ledger_rows(ledger),
        selector=result.selector if result is not None else "",
        k=len(result) if result is not None else 0,
        pool_size=result.pool_size if result is not None else 0,
        fraction_percent=f"{100 * len(result) / result.pool_size:.3g}%" if result is not None else "",
        subset=subset,
        training_lines=training_lines(trainer.state.global_step, ledger.training),
        selector_config_yaml=yaml.safe_dump(redact(plain_values(result.config)), sort_keys=True)
        if result is not None
        else "",
    )


def replace_section(body: str, section: str) -> str:
    """``body`` with its budget section (between the markers) replaced by ``section``, or appended.

    Example:
        >>> once = replace_section("# Model", "budget: 1e12")
        >>> replace_section(once, "budget: 2e12").count("budget:")
        1
    """
    if BUDGET_SECTION_START in body and BUDGET_SECTION_END in body:
        before, rest = body.split(BUDGET_SECTION_START, 1)
        body = before.rstrip("\n") + rest.split(BUDGET_SECTION_END, 1)[1]
    return f"{body.rstrip()}\n\n{BUDGET_SECTION_START}\n{section.strip()}\n{BUDGET_SECTION_END}\n"
