"""What CADS trains while it selects: a causal LM (the registered selector) or a small torch model on tensors.

A backend is bound to a pool and a target set with ``backend.prepare(pool, target, config)`` and returns
a :class:`~hf_cads.selectors.cads.algorithm.CADSTask`. Both backends train a private copy of the model, so the
model a caller (or ``BudgetedTrainer``) hands in is never changed, and count FLOPs with
:class:`~hf_cads.flops.FlopProfile`.

Example (CADS on a regression MLP, data in ``x`` / ``y`` columns):
    >>> import torch
    >>> from hf_cads import get_selector
    >>> from hf_cads.selectors.cads.backends import TensorBackend
    >>> mlp = lambda: torch.nn.Sequential(torch.nn.Linear(1, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    >>> backend = TensorBackend(mlp)
    >>> selector = get_selector("cads-s", train_budget=1e8, backend=backend)  # doctest: +SKIP
    >>> result = selector.select(pool, target=validation)  # doctest: +SKIP
    >>> result.extras["mixture"]  # doctest: +SKIP
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ...flops import FlopProfile, LinearLayer
from ...lora import DEFAULT_LORA_R, DEFAULT_LORA_TARGET_MODULES
from ..scoring import TokenBatcher, check_next_token_targets, masked_token_losses
from .algorithm import POOL


# -- small torch models on numeric columns -----------------------------------------------------
def linear_stack_profile(module: Any, name: str = "model") -> FlopProfile:
    """FLOP profile of a model whose matmuls are its ``nn.Linear`` layers (an MLP), one row = one token.

    The first layer's input is data, so its backward needs no input gradient.
    """
    import torch

    linears = [(n, m) for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise ValueError(
            f"{type(module).__name__} has no nn.Linear layers; TensorBackend counts FLOPs of linear layers only."
        )
    layers = tuple(
        LinearLayer(
            n or "linear", m.in_features, m.out_features, trainable=m.weight.requires_grad, input_needs_grad=index > 0
        )
        for index, (n, m) in enumerate(linears)
    )
    return FlopProfile(layers, num_layers=0, attention_dim=0, name=name)


@dataclass
class TensorBackend:
    """CADS backend for a small torch model trained on numeric pool columns.

    Args:
        model_factory: builds the initial model ``theta_0`` (called once per ``prepare``, after seeding
            torch with the selector's seed).
        loss: ``"mse"`` (regression; ``y`` a number or vector) or ``"cross_entropy"`` (``y`` a class id).
        feature_column / label_column: pool and target columns with the inputs and labels.
    """

    model_factory: Callable[[], Any]
    loss: Literal["mse", "cross_entropy"] = "mse"
    feature_column: str = "x"
    label_column: str = "y"

    def __post_init__(self) -> None:
        if self.loss not in ("mse", "cross_entropy"):
            raise ValueError(f"loss must be 'mse' or 'cross_entropy', got {self.loss!r}.")
        if not callable(self.model_factory):
            raise TypeError("model_factory must be a callable returning a torch.nn.Module.")

    def prepare(self, pool: Any, target: Any, config: Any) -> TensorTask:
        import torch

        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            model = self.model_factory()
        return TensorTask(
            model,
            self._tensors(pool, "pool"),
            self._tensors(target, "target"),
            self.loss,
        )

    def _tensors(self, dataset: Any, role: str) -> tuple[Any, Any]:
        import torch

        for column in (self.feature_column, self.label_column):
            if column not in dataset.column_names:
                raise ValueError(
                    f"The {role} dataset has no {column!r} column (columns: {dataset.column_names}); "
                    "set TensorBackend(feature_column=..., label_column=...)."
                )
        features = torch.as_tensor(np.asarray(dataset[self.feature_column], dtype=np.float32))
        if features.ndim == 1:
            features = features[:, None]
        labels = np.asarray(dataset[self.label_column])
        if self.loss == "cross_entropy":
            return features, torch.as_tensor(labels.astype(np.int64))
        labels_t = torch.as_tensor(labels.astype(np.float32))
        return features, labels_t[:, None] if labels_t.ndim == 1 else labels_t


class TensorTask:
    """A :class:`~hf_cads.selectors.cads.algorithm.CADSTask` over in-memory tensors (full-batch losses)."""

    def __init__(self, model: Any, pool: tuple[Any, Any], target: tuple[Any, Any], loss: str) -> None:
        self.model = model
        self.data = {POOL: pool, "target": target}
        self.loss_name = loss
        self.profile = linear_stack_profile(model)
        self.num_rows = len(pool[0])
        self.num_target_rows = len(target[0])

    def parameters(self) -> list[Any]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def _per_example(self, outputs: Any, labels: Any) -> Any:
        import torch

        if self.loss_name == "cross_entropy":
            return torch.nn.functional.cross_entropy(outputs, labels, reduction="none")
        return ((outputs - labels) ** 2).reshape(len(labels), -1).mean(dim=1)

    def loss(self, rows: np.ndarray, split: str, with_grad: bool) -> tuple[float, list[Any] | None, float]:
        import torch

        features, labels = self.data[split]
        index = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        with torch.set_grad_enabled(with_grad):
            value = self._per_example(self.model(features[index]), labels[index]).mean()
        grads = list(torch.autograd.grad(value, self.parameters())) if with_grad else None
        return float(value.detach()), grads, self.cost(rows, split, with_grad)

    def per_example(self, rows: np.ndarray, split: str) -> tuple[np.ndarray, Any, float]:
        import torch
        from torch.func import functional_call, grad_and_value, vmap

        features, labels = self.data[split]
        index = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        params = {n: p.detach() for n, p in self.model.named_parameters() if p.requires_grad}

        def one(values: dict[str, Any], x: Any, y: Any) -> Any:
            return self._per_example(functional_call(self.model, values, (x[None],)), y[None])[0]

        grads, losses = vmap(grad_and_value(one), in_dims=(None, 0, 0))(params, features[index], labels[index])
        flat = torch.cat([grads[n].reshape(len(index), -1) for n in names], dim=1)
        return losses.detach().numpy().astype(np.float64), flat, self.cost(rows, split, True)

    def cost(self, rows: np.ndarray, split: str, with_grad: bool) -> float:
        count = len(rows)
        return self.profile.train_step_flops(count, 1) if with_grad else self.profile.forward_flops(count, 1)


# -- causal language models --------------------------------------------------------------------
@dataclass
class CausalLMBackend:
    """CADS backend for a causal LM: LoRA adapters (or full finetuning) on a private copy of ``model``.

    Args:
        model / tokenizer: the model to select for; it is deep-copied, never modified.
        lora_r: rank of the fresh LoRA adapters CADS trains (``0``: train all weights of the copy). A
            model that already carries peft adapters keeps them and trains those.
        lora_target_modules: linear layers that get adapters.
        text_column / target_text_column: where the text is (see :func:`hf_cads.data.get_texts`).
    """

    model: Any
    tokenizer: Any
    lora_r: int = DEFAULT_LORA_R
    lora_target_modules: Sequence[str] = DEFAULT_LORA_TARGET_MODULES
    text_column: str | None = None
    target_text_column: str | None = None

    def prepare(self, pool: Any, target: Any, config: Any) -> CausalLMTask:
        from ...data import get_texts

        pool_texts = get_texts(pool, self.text_column, self.tokenizer, role="pool")
        target_texts = get_texts(target, self.target_text_column or self.text_column, self.tokenizer, role="target")
        return CausalLMTask(
            self._working_copy(config.seed),
            self.tokenizer,
            pool_texts,
            target_texts,
            config.batch_size,
            config.max_length,
        )

    def _working_copy(self, seed: int) -> Any:
        import torch

        working = copy.deepcopy(self.model)
        if hasattr(working, "peft_config"):
            return working
        if self.lora_r > 0:
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(
                r=self.lora_r,
                lora_alpha=2 * self.lora_r,
                lora_dropout=0.0,
                target_modules=list(self.lora_target_modules),
                task_type="CAUSAL_LM",
            )
            try:
                with torch.random.fork_rng():
                    torch.manual_seed(seed)
                    return get_peft_model(working, lora)
            except ValueError as err:
                raise ValueError(
                    f"CADS could not add LoRA adapters on {list(self.lora_target_modules)}: {err}. Set "
                    "lora_target_modules to linear layers of this model, or lora_r=0 for full finetuning."
                ) from err
        for p in working.parameters():
            p.requires_grad_(True)
        return working


class CausalLMTask:
    """A :class:`~hf_cads.selectors.cads.algorithm.CADSTask` for a causal LM: per-example mean token loss.

    Rows are tokenised once (EOS appended, as the trainer does) and run in length-sorted micro-batches of
    ``batch_size``; FLOPs come from the padded shapes actually run.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        pool_texts: list[str],
        target_texts: list[str],
        batch_size: int,
        max_length: int,
    ) -> None:
        self.model = model
        self.model.eval()  # no dropout: the objective of a mask must not change between evaluations
        self.batcher = TokenBatcher(tokenizer, batch_size=batch_size, max_length=max_length, add_eos=True)
        self.token_ids = {POOL: self.batcher.tokenize(pool_texts), "target": self.batcher.tokenize(target_texts)}
        for split, ids in self.token_ids.items():
            check_next_token_targets(ids, role=split)
        self.profile = FlopProfile.from_model(model)
        self.num_rows = len(self.token_ids[POOL])
        self.num_target_rows = len(self.token_ids["target"])
        self.device = next(model.parameters()).device
        self._gradients: Any = None  # PerExampleGradients, built on first use (first-order lookahead)

    def parameters(self) -> list[Any]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def _subset(self, rows: np.ndarray, split: str) -> list[list[int]]:
        ids = self.token_ids[split]
        return [ids[int(r)] for r in rows]

    def loss(self, rows: np.ndarray, split: str, with_grad: bool) -> tuple[float, list[Any] | None, float]:
        import torch

        subset = self._subset(rows, split)
        params = self.parameters()
        grads = [torch.zeros_like(p) for p in params] if with_grad else None
        total, flops = 0.0, 0.0
        for batch in self.batcher.batches(subset):
            input_ids = batch.input_ids.to(self.device)
            mask = batch.attention_mask.to(self.device)
            with torch.set_grad_enabled(with_grad):
                logits = self.model(input_ids=input_ids, attention_mask=mask).logits
                summed = masked_token_losses(logits, input_ids, mask).sum() / len(subset)
            if with_grad:
                for acc, g in zip(grads, torch.autograd.grad(summed, params)):
                    acc.add_(g)
                flops += self.profile.train_step_flops(*batch.shape)
            else:
                flops += self.profile.forward_flops(*batch.shape)
            total += float(summed.detach())
        return total, grads, flops

    def per_example(self, rows: np.ndarray, split: str) -> tuple[np.ndarray, Any, float]:
        """Per-example losses and LoRA gradients in the same length-sorted micro-batches as :meth:`loss`."""
        import torch

        from ..less.gradients import PerExampleGradients

        if self._gradients is None:
            self._gradients = PerExampleGradients(self.model)
        subset = self._subset(rows, split)
        losses = np.zeros(len(subset))
        grads = None
        flops = 0.0
        for batch in self.batcher.batches(subset):
            batch_losses, batch_grads = self._gradients.losses_and_gradients(
                batch.input_ids.to(self.device), batch.attention_mask.to(self.device)
            )
            if grads is None:
                grads = torch.zeros(
                    (len(subset), batch_grads.shape[1]), dtype=batch_grads.dtype, device=batch_grads.device
                )
            grads[torch.as_tensor(batch.rows, device=grads.device)] = batch_grads
            losses[batch.rows] = batch_losses.float().cpu().numpy()
            flops += self.profile.train_step_flops(*batch.shape)
        return losses, grads, flops

    def cost(self, rows: np.ndarray, split: str, with_grad: bool) -> float:
        shapes = self.batcher.padded_shapes(self._subset(rows, split))
        step = self.profile.train_step_flops if with_grad else self.profile.forward_flops
        return float(sum(step(b, s) for b, s in shapes))
