"""Per-example gradients and Adam update directions (projections: :mod:`hf_cads.selectors.less.projection`).

The building blocks of gradient-based data selection (LESS, TracIn-style influence): the gradient
of every example's own loss with respect to the trainable (e.g. LoRA) parameters, computed for a
whole batch in one vectorised pass, and the Adam update direction LESS compares pool rows by.

Example:
    >>> import torch
    >>> from hf_cads.selectors.less.gradients import PerExampleGradients
    >>> from hf_cads.selectors.less.projection import SparseProjection
    >>> grads = PerExampleGradients(lora_model)  # doctest: +SKIP
    >>> flat = grads(input_ids, attention_mask)  # batch x num_trainable_params  # doctest: +SKIP
    >>> projection = SparseProjection(grads.num_params, 8192, seed=0)  # doctest: +SKIP
    >>> features = torch.nn.functional.normalize(projection(flat), dim=-1)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

from ..scoring import masked_token_losses

GradientMethod = Literal["auto", "linear", "vmap", "loop"]
GRADIENT_METHODS: tuple[str, ...] = get_args(GradientMethod)


def trainable_parameters(model: Any) -> dict[str, Any]:
    """The parameters that require a gradient, by name, in module order."""
    return {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}


class PerExampleGradients:
    """Gradient of each example's mean next-token loss w.r.t. the model's trainable parameters.

    Methods, all returning the same gradients:

    - ``"linear"``: one ordinary batched forward and backward. Every trainable parameter must be
      the weight (or bias) of an ``nn.Linear`` (LoRA's ``lora_A``/``lora_B`` are); the backward is
      taken with respect to those layers' outputs only, and each example's weight gradient is the
      product of its own output gradients and inputs, ``sum_t g[t] x[t]^T``, summed over its tokens
      (the per-sample trick of Goodfellow, 2015). Same FLOPs as one batched training step.
    - ``"vmap"``: ``torch.func.vmap(grad(loss))`` over the batch; works for any trainable parameter.
    - ``"loop"``: the plain reference, one backward per unpadded example (tests and benchmarks).
    - ``"auto"`` (default): ``"linear"`` when every trainable parameter belongs to a linear layer,
      else ``"vmap"``.

    The batched methods give the model ``input_ids`` only (right padding): under a causal mask the
    padding never influences the real tokens, and the loss masks it out, so each row's gradient
    equals that of the unpadded example. The model must not mix rows of a batch (no batch norm).

    Gradients are returned flattened, ``batch x num_params``, in the order of :attr:`names`.
    Dropout is off while they are computed (the model is put in eval mode and restored).

    Example:
        >>> grads = PerExampleGradients(lora_model)  # doctest: +SKIP
        >>> grads(batch.input_ids, batch.attention_mask).shape  # doctest: +SKIP
        torch.Size([8, 921600])
    """

    def __init__(self, model: Any, method: GradientMethod = "auto") -> None:
        if method not in GRADIENT_METHODS:
            raise ValueError(f"method must be one of {list(GRADIENT_METHODS)}, got {method!r}.")
        params = trainable_parameters(model)
        if not params:
            raise ValueError(
                f"{type(model).__name__} has no trainable parameters to take gradients of; wrap it with "
                "LoRA (peft.get_peft_model) or set requires_grad on the parameters to differentiate."
            )
        self.model = model
        self.names = list(params)
        self.shapes = [tuple(p.shape) for p in params.values()]
        self._linear_layers, outside = _linear_owners(model, self.names)
        if method == "auto":
            method = "vmap" if outside else "linear"
        elif method == "linear" and outside:
            raise ValueError(
                f"method='linear' needs every trainable parameter to belong to an nn.Linear; {outside[:3]} do not. "
                "Use method='vmap' (any parameter) or freeze them."
            )
        self.method: GradientMethod = method

    @property
    def num_params(self) -> int:
        return int(sum(math.prod(shape) for shape in self.shapes))

    def __call__(self, input_ids: Any, attention_mask: Any) -> Any:
        return self.losses_and_gradients(input_ids, attention_mask)[1]

    def losses_and_gradients(self, input_ids: Any, attention_mask: Any) -> tuple[Any, Any]:
        """``(per-example losses (batch,), flattened per-example gradients (batch x num_params))``.

        The losses come from the same forward pass as the gradients, at no extra cost.
        """
        was_training = self.model.training
        self.model.eval()
        try:
            if self.method == "linear":
                return self._linear(input_ids, attention_mask)
            if self.method == "vmap":
                return self._vmap(input_ids, attention_mask)
            return self._loop(input_ids, attention_mask)
        finally:
            self.model.train(was_training)

    def _current_params(self) -> dict[str, Any]:
        # Read at call time: the caller may have loaded other weights (e.g. a checkpoint) in place.
        params = dict(self.model.named_parameters())
        return {name: params[name].detach() for name in self.names}

    def _example_loss(self, params: dict[str, Any], input_ids: Any, attention_mask: Any) -> Any:
        from torch.func import functional_call

        logits = functional_call(
            self.model, params, args=(), kwargs={"input_ids": input_ids.unsqueeze(0), "use_cache": False}
        ).logits
        return masked_token_losses(logits, input_ids.unsqueeze(0), attention_mask.unsqueeze(0))[0]

    def _vmap(self, input_ids: Any, attention_mask: Any) -> Any:
        import torch
        from torch.func import grad_and_value, vmap

        per_example = vmap(grad_and_value(self._example_loss), in_dims=(None, 0, 0))
        grads, losses = per_example(self._current_params(), input_ids, attention_mask)
        return losses.detach(), torch.cat([grads[name].reshape(input_ids.shape[0], -1) for name in self.names], dim=1)

    def _linear(self, input_ids: Any, attention_mask: Any) -> Any:
        import torch

        calls: list[tuple[Any, Any, Any]] = []  # (layer, input, output) of every call in the forward

        def remember(layer: Any, args: tuple[Any, ...], output: Any) -> None:
            calls.append((layer, args[0].detach(), output))

        handles = [layer.register_forward_hook(remember) for layer in self._linear_layers]
        try:
            logits = self.model(input_ids=input_ids, use_cache=False).logits
        finally:
            for handle in handles:
                handle.remove()
        # Rows are independent, so the gradient of the summed loss w.r.t. row b's activations is
        # exactly the gradient of row b's own loss.
        losses = masked_token_losses(logits, input_ids, attention_mask)
        loss = losses.sum()
        outputs = [output for _, _, output in calls]
        output_grads = torch.autograd.grad(loss, outputs, allow_unused=True)
        batch = input_ids.shape[0]
        per_example: dict[str, Any] = {}
        for (layer, inputs, _), grad_out in zip(calls, output_grads):
            if grad_out is None:
                continue
            names = self._linear_layers[layer]
            grad_out = grad_out.reshape(batch, -1, grad_out.shape[-1])
            if names[0] is not None:
                weight = torch.bmm(
                    grad_out.transpose(1, 2), inputs.reshape(batch, -1, inputs.shape[-1]).to(grad_out.dtype)
                )
                per_example[names[0]] = per_example.get(names[0], 0) + weight
            if names[1] is not None:
                per_example[names[1]] = per_example.get(names[1], 0) + grad_out.sum(dim=1)
        flat = []
        for name, shape in zip(self.names, self.shapes):
            value = per_example.get(name)
            if value is None:  # the parameter did not influence the loss
                value = torch.zeros((batch, *shape), dtype=logits.dtype, device=logits.device)
            flat.append(value.reshape(batch, -1))
        return losses.detach(), torch.cat(flat, dim=1)

    def _loop(self, input_ids: Any, attention_mask: Any) -> Any:
        import torch

        params = dict(self.model.named_parameters())
        wrt = [params[name] for name in self.names]
        rows, losses = [], []
        for row in range(input_ids.shape[0]):
            length = int(attention_mask[row].sum())
            ids = input_ids[row : row + 1, :length]
            logits = self.model(input_ids=ids, use_cache=False).logits
            loss = masked_token_losses(logits, ids, attention_mask[row : row + 1, :length])[0]
            grads = torch.autograd.grad(loss, wrt)
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
            losses.append(loss.detach())
        return torch.stack(losses), torch.stack(rows)


def _linear_owners(model: Any, names: list[str]) -> tuple[dict[Any, tuple[str | None, str | None]], list[str]]:
    """The ``nn.Linear`` layers holding the trainable parameters ``names`` -> ``(weight name or
    None, bias name or None)``, and the names that no linear layer holds."""
    import torch

    wanted = set(names)
    layers: dict[Any, tuple[str | None, str | None]] = {}
    for prefix, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            weight = f"{prefix}.weight" if f"{prefix}.weight" in wanted else None
            bias = f"{prefix}.bias" if module.bias is not None and f"{prefix}.bias" in wanted else None
            if weight or bias:
                layers[module] = (weight, bias)
    covered = {name for pair in layers.values() for name in pair if name}
    return layers, [name for name in names if name not in covered]


def adam_update_direction(
    grads: Any,
    exp_avg: Any,
    exp_avg_sq: Any,
    step: int,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> Any:
    """The direction Adam would move the parameters if its next step used ``grads`` alone.

    With the optimizer's moments ``m``, ``v`` after ``step`` updates (Xia et al., 2024, eq. 2)::

        m' = b1 m + (1 - b1) g,   v' = b2 v + (1 - b2) g^2
        direction = (m' / (1 - b1^(t+1))) / (sqrt(v' / (1 - b2^(t+1))) + eps)

    ``grads`` is ``batch x num_params``; the moments are flat ``num_params`` vectors in the same
    order. The result is a new tensor; ``grads`` is left untouched.
    """
    beta1, beta2 = betas
    t = int(step) + 1
    second = grads.square().mul_(1.0 - beta2).add_(exp_avg_sq, alpha=beta2).div_(1.0 - beta2**t).sqrt_().add_(eps)
    first = grads.mul(1.0 - beta1).add_(exp_avg, alpha=beta1).div_(1.0 - beta1**t)
    return first.div_(second)
