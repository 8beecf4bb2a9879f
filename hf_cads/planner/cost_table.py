"""Costs before the first run: what each selector and each trained row cost, from configs alone.

The model is built from its config on PyTorch's ``meta`` device (shapes, no weights, no memory), so
an 8B model's cost table takes seconds and no download beyond ``config.json`` and the tokenizer
(the embedding selector's row is the exception: it loads its small sentence encoder).
Selection FLOPs are each selector's own :meth:`~hf_cads.selectors.Selector.estimate_flops` on the
meta model (the number :func:`~hf_cads.selectors.select_within_budget` charges: on the pool with
repeated rows dropped); training FLOPs are the trainer's expected cost of shuffled, padded
micro-batches (:func:`~hf_cads.trainer.mean_step_flops`) on the tokenised pool.

Example:
    >>> from datasets import Dataset
    >>> from hf_cads.planner.cost_table import estimate_costs
    >>> from hf_cads.testing import tiny_causal_lm, tiny_tokenizer
    >>> pool = Dataset.from_dict({"text": [f"row {i}: " + "word " * (i % 7 + 2) for i in range(50)]})
    >>> target = Dataset.from_dict({"text": ["row 3: word word", "row 9: word"]})
    >>> tokenizer = tiny_tokenizer(pool["text"])
    >>> config = tiny_causal_lm(tokenizer).config
    >>> table = estimate_costs(config, tokenizer, pool, target, budget=1e9, selectors=["random", "bm25"])
    >>> [(row.selector, row.largest_k <= 50) for row in table.rows]
    [('random', True), ('bm25', True)]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..flops import FlopProfile, LoraSpec, validate_budget

DEFAULT_ESTIMATE_SELECTORS = ("random", "bm25", "embedding", "perplexity", "less")
"""The selectors a cost table lists unless told otherwise (CADS sizes itself to the budget; name it to add it)."""


@dataclass(frozen=True)
class SelectorCost:
    """One selector's row of a :class:`CostTable`.

    Attributes:
        selector: the selector's name.
        selection_flops: what selecting from the pool costs (the selector's own estimate).
        largest_k: the most rows the budget trains on after paying for selection (0: none).
        fraction: ``largest_k`` over the pool's rows.
        selection_share: ``selection_flops / budget``.
        selection_model_params: matmul parameters of the model the selector scores with (0: none).
        size_ratio: training / selection model matmul parameters (``nan`` without a selection model).
    """

    selector: str
    selection_flops: float
    largest_k: int
    fraction: float
    selection_share: float
    selection_model_params: int
    size_ratio: float


@dataclass(frozen=True)
class CostTable:
    """Costs of selecting from a pool and training on it, per selector, under ``budget``.

    ``train_flops_per_row`` is the expected training cost of one pool row for one epoch;
    ``train_flops_per_epoch`` of every pool row (``C_full``).
    """

    model: str
    model_params: int
    pool_rows: int
    target_rows: int
    pool_tokens: int
    target_tokens: int
    train_flops_per_row: float
    train_flops_per_epoch: float
    budget: float
    epochs: float
    rows: tuple[SelectorCost, ...]
    settings: dict[str, Any] = field(default_factory=dict)

    def row(self, selector: str) -> SelectorCost:
        """The row of ``selector``."""
        for row in self.rows:
            if row.selector == selector:
                return row
        raise KeyError(f"No selector {selector!r} in this cost table; it lists {[r.selector for r in self.rows]}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        """The table as text: the pool and the training cost, then one line per selector."""
        lines = [
            f"model {self.model}: {self.model_params:,} matmul parameters; "
            f"pool {self.pool_rows:,} rows ({self.pool_tokens:,} tokens), "
            f"target {self.target_rows:,} rows ({self.target_tokens:,} tokens)",
            f"training: {self.train_flops_per_row:.4g} FLOPs per row, "
            f"{self.train_flops_per_epoch:.4g} FLOPs per epoch of the pool (C_full); "
            f"budget {self.budget:.4g} FLOPs = {self.budget / self.train_flops_per_epoch:.3g} x C_full",
            "",
            f"{'selector':<12} {'selection FLOPs':>16} {'share of K':>10} {'largest k':>10} {'fraction':>9} "
            f"{'train/sel size':>14}",
        ]
        for row in self.rows:
            ratio = "-" if math.isnan(row.size_ratio) else f"{row.size_ratio:.3g}x"
            lines.append(
                f"{row.selector:<12} {row.selection_flops:>16.4g} {row.selection_share:>10.2%} {row.largest_k:>10,} "
                f"{row.fraction:>9.1%} {ratio:>14}"
            )
        lines.append(
            "(training FLOPs are the trainer's expected cost of shuffled, padded batches of "
            f"{self.settings.get('batch_size')} rows; each selected row costs the pool's mean)"
        )
        return "\n".join(lines)


def meta_model(config: Any) -> Any:
    """A causal LM with ``config``'s shapes on the ``meta`` device: no weights, no memory.

    Example:
        >>> from transformers import LlamaConfig
        >>> model = meta_model(LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        ...                               num_attention_heads=32, num_key_value_heads=8, vocab_size=128256))
        >>> next(model.parameters()).device.type, FlopProfile.from_model(model).num_params > 7e9
        ('meta', True)
    """
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def load_model_config(name_or_path: str) -> Any:
    """The model's config (a built-in alias, a local folder or a Hub id), without its weights.

    Example:
        >>> load_model_config("smollm2-135m-instruct").model_type  # doctest: +SKIP
        'llama'
    """
    from transformers import AutoConfig

    from ..models import resolve_causal_lm

    where = resolve_causal_lm(name_or_path)
    try:
        if where.gguf_file:
            return AutoConfig.from_pretrained(where.path, gguf_file=where.gguf_file)
        return AutoConfig.from_pretrained(where.path)
    except (OSError, ValueError) as err:
        detail = " ".join(str(err).split())
        raise OSError(
            f"Could not read the config of {name_or_path!r}: {detail} Pass a folder holding config.json, a Hub id "
            "(online), or a built-in model such as 'smollm2-135m-instruct'."
        ) from err


def train_flops_per_row(
    profile: FlopProfile,
    token_lengths: Sequence[int],
    batch_size: int,
    gradient_accumulation_steps: int = 1,
    *,
    seed: int = 0,
    gradient_checkpointing: bool = False,
) -> float:
    """Expected FLOPs of training one row of these token lengths for one epoch: the trainer's mean
    optimizer-step cost of shuffled, right-padded micro-batches, spread over the rows of a step.

    Example:
        >>> from transformers import LlamaConfig
        >>> profile = FlopProfile.from_config(LlamaConfig(hidden_size=64, intermediate_size=128,
        ...     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, vocab_size=100))
        >>> train_flops_per_row(profile, [10] * 8, batch_size=1) == profile.train_step_flops(1, 10)
        True
    """
    from ..trainer import mean_step_flops

    lengths = [int(n) for n in token_lengths]
    if not lengths:
        raise ValueError("The pool has no rows to train on; pass a non-empty pool.")
    per_step = max(1, int(batch_size)) * max(1, int(gradient_accumulation_steps))
    steps = math.ceil(len(lengths) / per_step)
    as_array = np.asarray(lengths)
    priced: dict[tuple[int, int], float] = {}

    def batch_cost(chunk: np.ndarray) -> float:
        # The trainer's price of a right-padded micro-batch, computed once per shape: a large pool
        # has ~10^5 batches but a few hundred shapes.
        shape = (len(chunk), int(as_array[chunk].max()))
        if shape not in priced:
            priced[shape] = profile.train_step_flops(*shape, gradient_checkpointing=gradient_checkpointing)
        return priced[shape]

    step = mean_step_flops(
        profile, lengths, int(batch_size), int(gradient_accumulation_steps), seed=seed, batch_cost=batch_cost
    )
    return float(step * steps / len(lengths))


def largest_affordable_k(budget: float, selection_flops: float, per_row: float, pool_rows: int, epochs: float) -> int:
    """The most rows ``k <= pool_rows`` with ``selection + epochs * per_row * k <= budget`` (0: none).

    Example:
        >>> largest_affordable_k(1e6, 2e5, 1e3, 10_000, 1.0)
        800
    """
    spendable = budget - selection_flops
    cost = epochs * per_row
    if spendable <= 0 or not cost > 0:
        return 0
    k = min(pool_rows, int(math.floor(spendable / cost)))
    while k > 0 and selection_flops + cost * k > budget:
        k -= 1  # floor() of a ratio can land one above in floating point
    return max(k, 0)


def estimate_costs(
    config: Any,
    tokenizer: Any,
    pool: Any,
    target: Any,
    budget: float,
    *,
    selectors: Sequence[str] = DEFAULT_ESTIMATE_SELECTORS,
    selector_options: Mapping[str, Mapping[str, Any]] | None = None,
    selection_model: tuple[Any, Any] | None = None,
    max_seq_length: int = 512,
    batch_size: int = 8,
    gradient_accumulation_steps: int = 1,
    epochs: float = 1.0,
    lora: LoraSpec | None = None,
    gradient_checkpointing: bool = False,
    seed: int = 0,
    model_name: str | None = None,
) -> CostTable:
    """The cost table of training ``config``'s model on ``pool`` for ``target`` under ``budget`` FLOPs.

    Args:
        config: the trained model's config (:func:`load_model_config`); the model is built on the
            meta device.
        tokenizer: the trained model's tokenizer (counts the pool's training tokens).
        pool / target: ``datasets.Dataset`` s as the selectors and the trainer take them.
        budget: FLOPs for selection + training of one finetune.
        selectors: which selectors to list (by registered name).
        selector_options: per-selector options (``selector_kwargs``), e.g. LESS's ``projection_dim``.
        selection_model: ``(config, tokenizer)`` of the model the LM-based selectors score with
            (``None``: the trained model, as a run without ``model_name_or_path`` does).
        max_seq_length / batch_size / gradient_accumulation_steps / epochs / lora /
            gradient_checkpointing / seed: the training settings the FLOPs depend on.
    """
    from ..selectors import get_selector_class
    from ..selectors.within_budget import build_selector, selection_model_params
    from ..trainer import tokenize_for_causal_lm

    budget = validate_budget(budget)
    if not epochs > 0:
        raise ValueError(f"epochs must be > 0, got {epochs!r}.")
    model = meta_model(config)
    if lora is not None:
        # A run hands its selectors the model with the adapters attached: a selector that scores with
        # the trained model pays for the adapters' matmuls too.
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(r=lora.rank, target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
        )
    profile = FlopProfile.from_config(config, lora=lora)
    # The frozen base's parameters (what run records call model_params), not counting LoRA adapters.
    base_params = int(FlopProfile.from_config(config).num_params)
    pool_ids = tokenize_for_causal_lm(pool, tokenizer, max_seq_length, role="pool")["input_ids"]
    target_ids = tokenize_for_causal_lm(target, tokenizer, max_seq_length, role="target")["input_ids"]
    lengths = [len(ids) for ids in pool_ids]
    per_row = train_flops_per_row(
        profile,
        lengths,
        batch_size,
        gradient_accumulation_steps,
        seed=seed,
        gradient_checkpointing=gradient_checkpointing,
    )
    scorer = None
    if selection_model is not None:
        scorer = meta_model(selection_model[0])
    rows = []
    for name in selectors:
        options = dict((selector_options or {}).get(name, {}))
        options.setdefault("show_progress", False)
        uses_own_model = scorer is not None and get_selector_class(name).uses_model and name != "embedding"
        selector = build_selector(
            name,
            options,
            seed=seed,
            training_model=model,
            training_tokenizer=tokenizer,
            selector_model=scorer if uses_own_model else None,
        )
        if uses_own_model:
            selector.tokenizer = selection_model[1]  # type: ignore[index]
        selector.validate_inputs(pool, target)
        unique, _ = selector.unique_pool(pool)
        selector.fit_to_budget(budget, unique, target)
        selection = float(selector.estimate_flops(unique, target))
        k = largest_affordable_k(budget, selection, per_row, len(pool), epochs)
        params = int(selection_model_params(selector))
        rows.append(
            SelectorCost(
                selector=name,
                selection_flops=selection,
                largest_k=k,
                fraction=k / len(pool),
                selection_share=selection / budget,
                selection_model_params=params,
                size_ratio=base_params / params if params else float("nan"),
            )
        )
    return CostTable(
        model=model_name or str(getattr(config, "_name_or_path", "") or config.model_type),
        model_params=base_params,
        pool_rows=len(pool),
        target_rows=len(target),
        pool_tokens=int(np.sum(lengths)),
        target_tokens=int(sum(len(ids) for ids in target_ids)),
        train_flops_per_row=per_row,
        train_flops_per_epoch=per_row * len(pool),
        budget=budget,
        epochs=float(epochs),
        rows=tuple(rows),
        settings={
            "max_seq_length": max_seq_length,
            "batch_size": batch_size,
            "gradient_accumulation_steps": gradient_accumulation_steps,
            "lora_rank": lora.rank if lora is not None else 0,
            "gradient_checkpointing": gradient_checkpointing,
        },
    )
