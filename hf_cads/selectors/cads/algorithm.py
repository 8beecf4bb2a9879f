"""The CADS algorithm, independent of what is trained: pilot runs, loss predictor, policy-gradient outer loop.

CADS (Computational budget-Aware Data Selection) poses data selection for a training budget ``C`` as

    min_m L_val(theta_C(m))   s.t.   theta_C(m) = Train(m, C)

where training on a subset ``m`` for budget ``C`` means ``C / |m|`` passes over it. The inner training
problem is replaced by a penalty and a loss predictor ``l(|m|)`` (the training loss a budget-``C`` run
reaches on ``|m|`` rows), giving one objective over the model ``theta`` and the selection parameters ``s``:

    L_CADS(theta, s) = E_{m ~ p(m|s)} [ L_val(theta) + alpha * (L_tr(theta, m) - l(|m|))^2 ]

(by default with the one-sided gap ``max(0, L_tr - l)``, see ``CADSSelectorConfig.penalty``).

Each outer step samples a few masks ``m_k``; for each, ``theta`` takes the gradient step of the objective
for ``m_k`` (a training step on ``m_k`` scaled by how far its loss is above the budget-``C`` level,
plus the validation gradient), and ``f(m_k)`` is the objective after that step (with
``policy_reward="validation"``, the validation loss alone). Evaluating after the step is what lets
``L_val`` tell masks apart (at a fixed ``theta`` it is the same for every mask and would cancel against
the baseline). ``theta`` then takes the mean step (Adam, at the downstream learning
rate), and ``s`` the Hessian-free score-function step ``E[(f(m) - b) grad_s log p(m|s)]`` with a
moving-average baseline ``b``, projected back to the feasible box. Three choices of this implementation
keep that estimator usable: the first ``warmup_fraction`` of the steps move only ``theta`` (until it
reaches the budget-``C`` loss level the penalty is about), the step on ``s`` is preconditioned by the
inverse Fisher information (a natural-gradient step that does not blow up as ``sigma`` is annealed or
``s_i`` nears 0 or 1), and advantages are divided by their running RMS (``lr_s`` is scale-free).

Two parameterisations of ``p(m|s)``:

- example level (CADS-E): ``m_i ~ Bernoulli(s_i)``, see :class:`BernoulliMaskPolicy`;
- source level (CADS-S): per-source kept fractions ``r_j ~ TruncNormal(mu_j, sigma^2)`` on ``[0, 1]``,
  ``sigma`` annealed from ``sigma_start`` to ``sigma_end``, see :class:`TruncatedGaussianPolicy`.

What is trained is behind :class:`CADSTask` (a causal LM with LoRA, or a small torch model on
tensors; see :mod:`hf_cads.selectors.cads.backends`). Every FLOP the task spends is counted.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

logger = logging.getLogger(__name__)

POOL = "pool"
TARGET = "target"


class CADSTask(Protocol):
    """What CADS needs from the model it selects for (bound to one pool and one target set).

    ``rows`` index the pool (``split="pool"``) or the target set (``split="target"``). Losses are the
    mean per-example loss over ``rows``; gradients are for :meth:`parameters`, in that order.
    """

    num_rows: int
    num_target_rows: int

    def parameters(self) -> list[Any]:
        """The trainable tensors of the selector's own working model (never the caller's model)."""

    def loss(self, rows: np.ndarray, split: str, with_grad: bool) -> tuple[float, list[Any] | None, float]:
        """``(mean loss, gradients or None, FLOPs spent)``."""

    def cost(self, rows: np.ndarray, split: str, with_grad: bool) -> float:
        """FLOPs :meth:`loss` would spend on these rows, without running the model."""

    def per_example(self, rows: np.ndarray, split: str) -> tuple[np.ndarray, Any, float]:
        """``(per-example losses, flattened per-example gradients (len(rows) x num_params), FLOPs spent)``.

        Needed by ``lookahead="first_order"`` only; costs what ``cost(rows, split, True)`` says.
        """


# -- selection distributions -------------------------------------------------------------------
class BernoulliMaskPolicy:
    """CADS-E's ``p(m|s)``: row ``i`` is in the mask with probability ``s_i``, independently.

    Example:
        >>> policy = BernoulliMaskPolicy(num_rows=4, init_probability=0.5)
        >>> mask = policy.sample(np.random.default_rng(0), np.arange(4))
        >>> policy.log_prob_grad(np.arange(4), mask).shape
        (4,)
    """

    def __init__(self, num_rows: int, init_probability: float = 0.5, bound: float = 1e-3) -> None:
        self.bound = bound
        self.probabilities = np.full(num_rows, float(np.clip(init_probability, bound, 1 - bound)))

    def sample(self, rng: np.random.Generator, block: np.ndarray) -> np.ndarray:
        """A boolean mask over ``block``; never empty (an empty subset trains nothing)."""
        probs = self.probabilities[block]
        for _ in range(16):
            mask = rng.random(len(block)) < probs
            if mask.any():
                return mask
        mask = np.zeros(len(block), dtype=bool)
        mask[int(np.argmax(probs))] = True
        return mask

    def log_prob_grad(self, block: np.ndarray, mask: np.ndarray) -> np.ndarray:
        s = self.probabilities[block]
        return (mask.astype(np.float64) - s) / (s * (1.0 - s))

    def fisher_inverse(self, block: np.ndarray) -> np.ndarray:
        """``s(1-s)``: scales the score-function step into a natural-gradient step (bounded near 0 and 1)."""
        s = self.probabilities[block]
        return s * (1.0 - s)

    def step(self, block: np.ndarray, grad: np.ndarray, lr: float) -> None:
        """Gradient descent on ``s`` and projection onto ``[bound, 1 - bound]``."""
        updated = self.probabilities[block] - lr * grad
        self.probabilities[block] = np.clip(updated, self.bound, 1.0 - self.bound)


class TruncatedGaussianPolicy:
    """CADS-S's ``p(m|s)``: the kept fraction of source ``j`` is ``r_j ~ N(mu_j, sigma^2)`` truncated to ``[0, 1]``.

    Example:
        >>> policy = TruncatedGaussianPolicy(num_sources=2, init_mean=0.5)
        >>> ratios = policy.sample(np.random.default_rng(0), sigma=0.2)
        >>> bool(((ratios >= 0) & (ratios <= 1)).all())
        True
    """

    def __init__(self, num_sources: int, init_mean: float = 0.5, bound: float = 1e-3) -> None:
        self.bound = bound
        self.means = np.full(num_sources, float(np.clip(init_mean, bound, 1.0)))

    def sample(self, rng: np.random.Generator, sigma: float) -> np.ndarray:
        from scipy.stats import truncnorm

        low, high = (0.0 - self.means) / sigma, (1.0 - self.means) / sigma
        return np.asarray(truncnorm.rvs(low, high, loc=self.means, scale=sigma, random_state=rng), dtype=np.float64)

    def log_prob_grad(self, ratios: np.ndarray, sigma: float) -> np.ndarray:
        """``d/d mu log p(r | mu, sigma)``: the Gaussian term minus the change of the truncation mass."""
        from scipy.stats import norm

        low, high = (0.0 - self.means) / sigma, (1.0 - self.means) / sigma
        mass = np.maximum(norm.cdf(high) - norm.cdf(low), 1e-12)
        return (ratios - self.means) / sigma**2 - (norm.pdf(low) - norm.pdf(high)) / (sigma * mass)

    @staticmethod
    def fisher_inverse(sigma: float) -> float:
        """``sigma^2`` (the untruncated Gaussian's): makes the step size shrink with the annealed sigma."""
        return sigma**2

    def step(self, grad: np.ndarray, lr: float) -> None:
        self.means = np.clip(self.means - lr * grad, self.bound, 1.0)

    def mixture(self, source_sizes: np.ndarray) -> np.ndarray:
        """Share of each source in the subset the means describe."""
        kept = self.means * source_sizes
        return kept / kept.sum()


def annealed_sigma(step: int, total_steps: int, sigma_start: float, sigma_end: float) -> float:
    """Geometric interpolation from ``sigma_start`` (explore) to ``sigma_end`` (commit)."""
    if total_steps <= 1:
        return float(sigma_end)
    return float(sigma_start * (sigma_end / sigma_start) ** (step / (total_steps - 1)))


class AdamTheta:
    """Adam on the task parameters, with a side-effect-free look-ahead of the step a gradient would cause.

    The outer loop evaluates ``f(m_k)`` after the step each mask would cause, then commits the mean step.
    """

    def __init__(
        self, params: Sequence[Any], lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        import torch

        self.params = list(params)
        self.lr, self.betas, self.eps = lr, betas, eps
        self.first = [torch.zeros_like(p) for p in self.params]
        self.second = [torch.zeros_like(p) for p in self.params]
        self.steps = 0

    def _moments(self, grads: Sequence[Any]) -> tuple[list[Any], list[Any]]:
        b1, b2 = self.betas
        first = [b1 * m + (1 - b1) * g for m, g in zip(self.first, grads)]
        second = [b2 * v + (1 - b2) * g * g for v, g in zip(self.second, grads)]
        return first, second

    def _update(self, first: Sequence[Any], second: Sequence[Any]) -> list[Any]:
        b1, b2 = self.betas
        t = self.steps + 1
        return [-self.lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + self.eps) for m, v in zip(first, second)]

    def gradient_step(self, grads: Sequence[Any]) -> list[Any]:
        """``-lr * g``: a plain gradient step on ``grads`` alone. Linear in ``grads``, unlike :meth:`preview`:
        Adam's normalisation by the new gradient favours small gradients whatever their direction, and
        its second moments are ~0 on coordinates that have not moved yet (LoRA's A at init)."""
        return [-self.lr * g for g in grads]

    def preview(self, grads: Sequence[Any]) -> list[Any]:
        """The step ``grads`` would cause, without moving the parameters."""
        return self._update(*self._moments(grads))

    def apply_lookahead(self, grads: Sequence[Any], plain: bool = False) -> list[Any]:
        """Move the parameters by the step ``grads`` would cause (Adam's, or with ``plain`` :meth:`gradient_step`);
        returns the step so it can be undone."""
        import torch

        update = self.gradient_step(grads) if plain else self.preview(grads)
        with torch.no_grad():
            for p, u in zip(self.params, update):
                p.add_(u)
        return update

    def undo(self, update: Sequence[Any]) -> None:
        import torch

        with torch.no_grad():
            for p, u in zip(self.params, update):
                p.sub_(u)

    def step(self, grads: Sequence[Any]) -> None:
        """Commit the Adam step for ``grads``."""
        import torch

        self.first, self.second = self._moments(grads)
        update = self._update(self.first, self.second)
        self.steps += 1
        with torch.no_grad():
            for p, u in zip(self.params, update):
                p.add_(u)


# -- planning ----------------------------------------------------------------------------------
@dataclass
class CADSPlan:
    """What CADS will run and what it will cost, fixed before any training (so budgets can be checked).

    Attributes:
        train_budget: ``C``, the FLOPs the downstream training will get.
        pilot_sizes: subset sizes ``|m|`` whose budget-``C`` training loss the pilots measure.
        pilot_rows: rows each pilot actually trains on (``|m| / A``, at least ``batch_size``).
        pilot_budgets: FLOPs of each pilot, ``C * pilot_rows / pilot_sizes`` (same passes as a full run).
        pilot_eval_flops: FLOPs of measuring each pilot's final training loss.
        outer_steps: policy-gradient steps of the outer loop.
        outer_step_flops: estimated FLOPs of one outer step.
    """

    train_budget: float
    pilot_sizes: list[int]
    pilot_rows: list[int]
    pilot_budgets: list[float]
    pilot_eval_flops: list[float]
    outer_steps: int
    outer_step_flops: float
    A: float
    gamma: float

    @property
    def pilot_flops(self) -> float:
        return float(sum(self.pilot_budgets) + sum(self.pilot_eval_flops))

    @property
    def outer_flops(self) -> float:
        return float(self.outer_steps * self.outer_step_flops)

    @property
    def estimated_flops(self) -> float:
        return self.pilot_flops + self.outer_flops

    @property
    def paper_overhead_flops(self) -> float:
        """The paper's overhead rule ``(num_sampling_points / A + 2 * gamma) * C``."""
        return (len(self.pilot_sizes) / self.A + 2 * self.gamma) * self.train_budget

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(estimated_flops=self.estimated_flops, paper_overhead_flops=self.paper_overhead_flops)
        return out


def _mean_cost(
    task: CADSTask, split: str, size: int, with_grad: bool, rng: np.random.Generator, draws: int = 8
) -> float:
    total = task.num_rows if split == POOL else task.num_target_rows
    size = max(1, min(int(size), total))
    if size == total:
        return float(task.cost(np.arange(total), split, with_grad))
    return float(np.mean([task.cost(rng.choice(total, size, replace=False), split, with_grad) for _ in range(draws)]))


def candidate_count(num_rows: int, config: Any, num_sources: int | None) -> int:
    """Rows whose per-example gradients one first-order outer step computes (all masks are scored on them).

    CADS-E: the block. CADS-S: ``block_size // num_sources`` rows of every source (at least one each).
    """
    if config.granularity == "example" or not num_sources:
        return num_rows if config.block_size is None else min(config.block_size, num_rows)
    if config.block_size is None:
        return num_rows
    return num_sources * max(1, config.block_size // num_sources)


def first_order_mixing_flops(masks: int, candidates: int, num_params: int) -> float:
    """FLOPs of turning per-example gradients into each mask's gradient and first-order losses.

    ``masks x candidates`` weights times ``candidates x params`` gradients, then two dot products per mask.
    """
    from ...flops import matmul_flops

    return float(matmul_flops(masks, candidates, num_params) + 2 * matmul_flops(masks, num_params, 1))


def task_num_params(task: CADSTask) -> int:
    """Trainable parameters of what ``task`` trains (the ``theta`` of the CADS objective)."""
    return int(sum(p.numel() for p in task.parameters()))


def plan_cads(task: CADSTask, config: Any, num_sources: int | None = None) -> CADSPlan:
    """Fix the pilot runs and the outer-loop length for ``config`` and check that the budget allows them.

    ``num_sources`` (CADS-S) sizes a first-order step's candidate rows. Raises a ``ValueError`` that
    names the fix when ``train_budget`` cannot pay for one training step of a pilot, or when
    ``gamma * train_budget`` cannot pay for one outer step.
    """
    budget = float(config.train_budget)
    num_rows = task.num_rows
    rng = np.random.default_rng(config.seed + 1)
    smallest = max(2, int(math.ceil(config.min_sampling_fraction * num_rows)))
    raw = np.geomspace(min(smallest, num_rows), num_rows, config.num_sampling_points)
    pilot_sizes = sorted({int(round(size)) for size in raw})
    if len(pilot_sizes) < 2:
        raise ValueError(
            f"The pool has {num_rows} rows, too few for pilot runs at >= 2 different subset sizes; use a larger pool."
        )
    pilot_rows = [min(size, max(config.batch_size, int(round(size / config.A)))) for size in pilot_sizes]
    pilot_budgets = [budget * rows / size for rows, size in zip(pilot_rows, pilot_sizes)]
    for size, rows, pilot_budget in zip(pilot_sizes, pilot_rows, pilot_budgets):
        step = _mean_cost(task, POOL, min(config.batch_size, rows), True, rng)
        if pilot_budget < step:
            raise ValueError(
                f"train_budget={budget:.4g} FLOPs is too small for the pilot runs: the pilot emulating a "
                f"{size}-row subset gets {pilot_budget:.4g} FLOPs ({rows} rows, budget * {rows}/{size}), less than "
                f"one training step ({step:.4g} FLOPs). Raise train_budget "
                f"(at least {budget * step / pilot_budget:.3g}), "
                "lower A, lower batch_size, or raise min_sampling_fraction."
            )
    pilot_eval = [_mean_cost(task, POOL, rows, False, rng) for rows in pilot_rows]

    if config.granularity == "example":
        block = num_rows if config.block_size is None else min(config.block_size, num_rows)
        rows_per_mask = max(1, int(round(block * config.init_probability)))
    else:
        rows_per_mask = int(round(0.5 * num_rows)) if config.block_size is None else min(config.block_size, num_rows)
    target_rows = min(config.target_batch_size, task.num_target_rows)
    if config.lookahead == "first_order":
        candidates = candidate_count(task.num_rows, config, num_sources)
        step_flops = (
            _mean_cost(task, TARGET, target_rows, True, rng)
            + _mean_cost(task, POOL, candidates, True, rng)
            + first_order_mixing_flops(config.samples_per_step, candidates, task_num_params(task))
        )
    else:
        # The post-step forward on the mask's rows only feeds the penalty term of the reward.
        post_step_train = (
            _mean_cost(task, POOL, rows_per_mask, False, rng) if config.policy_reward == "objective" else 0.0
        )
        step_flops = _mean_cost(task, TARGET, target_rows, True, rng) + config.samples_per_step * (
            _mean_cost(task, POOL, rows_per_mask, True, rng)
            + post_step_train
            + _mean_cost(task, TARGET, target_rows, False, rng)
        )
    if config.outer_steps is not None:
        outer_steps = int(config.outer_steps)
    else:
        outer_steps = int(2 * config.gamma * budget // step_flops)
        if outer_steps < 1:
            raise ValueError(
                f"gamma * train_budget = {config.gamma * budget:.4g} FLOPs cannot pay for one outer step "
                f"(~{step_flops:.4g} FLOPs for {config.samples_per_step} masks). Raise gamma or train_budget, "
                "or set outer_steps explicitly."
            )
    return CADSPlan(
        train_budget=budget,
        pilot_sizes=pilot_sizes,
        pilot_rows=pilot_rows,
        pilot_budgets=pilot_budgets,
        pilot_eval_flops=pilot_eval,
        outer_steps=outer_steps,
        outer_step_flops=step_flops,
        A=float(config.A),
        gamma=float(config.gamma),
    )
