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
tensors; see :mod:`hf_cads.selectors.cads_backends`). Every FLOP the task spends is counted.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np

from .cads_predictor import LossPredictor

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

    def __init__(self, params: Sequence[Any], lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
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
        return [
            -self.lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + self.eps) for m, v in zip(first, second)
        ]

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


def _mean_cost(task: CADSTask, split: str, size: int, with_grad: bool, rng: np.random.Generator, draws: int = 8) -> float:
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
    from ..flops import matmul_flops

    return float(matmul_flops(masks, candidates, num_params) + 2 * matmul_flops(masks, num_params, 1))


def task_num_params(task: CADSTask) -> int:
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
                f"one training step ({step:.4g} FLOPs). Raise train_budget (at least {budget * step / pilot_budget:.3g}), "
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
        post_step_train = _mean_cost(task, POOL, rows_per_mask, False, rng) if config.policy_reward == "objective" else 0.0
        step_flops = _mean_cost(task, TARGET, target_rows, True, rng) + config.samples_per_step * (
            _mean_cost(task, POOL, rows_per_mask, True, rng) + post_step_train + _mean_cost(task, TARGET, target_rows, False, rng)
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


# -- running -----------------------------------------------------------------------------------
@dataclass
class CADSOutcome:
    """The learned selection distribution and everything CADS measured on the way.

    Attributes:
        probabilities: CADS-E's ``s_i`` per pool row (``None`` for CADS-S).
        source_names / source_ratios / mixture: CADS-S's sources, learned kept fractions ``mu_j`` and
            the resulting mixture (``None`` for CADS-E).
        favoured_size: the subset size the learned distribution puts most weight on.
        predictor: the fitted loss predictor; ``pilots`` the measurements behind it.
        flops / pilot_flops / outer_flops: FLOPs actually spent.
        history: per outer step, the mean objective, validation loss and penalty (and mixture / mean ``s``).
    """

    granularity: str
    plan: CADSPlan
    predictor: LossPredictor
    pilots: list[dict[str, float]]
    pilot_flops: float
    outer_flops: float
    favoured_size: int
    probabilities: np.ndarray | None = None
    source_names: list[str] | None = None
    source_ratios: np.ndarray | None = None
    mixture: dict[str, float] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def flops(self) -> float:
        return self.pilot_flops + self.outer_flops

    def extras(self) -> dict[str, Any]:
        """What goes into ``SelectionResult.extras``."""
        budget = self.plan.train_budget
        out: dict[str, Any] = {
            "granularity": self.granularity,
            "train_budget": budget,
            "favoured_size": self.favoured_size,
            "loss_predictor": self.predictor.to_dict(),
            "loss_predictor_loo_mse": self.predictor.loo_mse(),
            "pilot_runs": self.pilots,
            "overhead_flops": self.flops,
            "overhead_pilot_flops": self.pilot_flops,
            "overhead_outer_flops": self.outer_flops,
            "overhead_multiple_of_budget": self.flops / budget,
            "paper_overhead_flops": self.plan.paper_overhead_flops,
            "outer_steps": self.plan.outer_steps,
            "history": self.history,
        }
        if self.source_names is not None:
            out["mixture"] = dict(self.mixture or {})
            out["source_ratios"] = dict(zip(self.source_names, np.asarray(self.source_ratios).tolist()))
        if self.probabilities is not None:
            out["probabilities"] = self.probabilities
        return out


def _snapshot(params: Sequence[Any]) -> list[Any]:
    return [p.detach().clone() for p in params]


def _restore(params: Sequence[Any], values: Sequence[Any]) -> None:
    import torch

    with torch.no_grad():
        for p, v in zip(params, values):
            p.copy_(v)


def train_for_budget(task: CADSTask, rows: np.ndarray, flop_budget: float, lr: float, batch_size: int, rng: np.random.Generator) -> tuple[int, float]:
    """AdamW minibatch training on ``rows`` until the next step would pass ``flop_budget``.

    At least one step is taken. Returns ``(steps, FLOPs spent)``.
    """
    import torch

    params = task.parameters()
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    spent, steps = 0.0, 0
    while True:
        order = rng.permutation(rows)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            cost = task.cost(batch, POOL, True)
            if cost <= 0:
                raise RuntimeError(f"{type(task).__name__}.cost returned {cost} FLOPs for a training step; it must be > 0.")
            if steps > 0 and spent + cost > flop_budget:
                return steps, spent
            _, grads, flops = task.loss(batch, POOL, True)
            for p, g in zip(params, grads or []):
                p.grad = g
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            spent += flops
            steps += 1


class ExampleMasks:
    """CADS-E masks: Bernoulli(s_i) over a random block of rows (all rows when ``block_size`` is None)."""

    def __init__(self, num_rows: int, config: Any) -> None:
        self.num_rows = num_rows
        self.policy = BernoulliMaskPolicy(num_rows, config.init_probability)
        self.block = num_rows if config.block_size is None else min(config.block_size, num_rows)
        self.block_rows = np.arange(num_rows)

    def start_step(self, rng: np.random.Generator, step: int, sigma: float) -> None:
        # All masks of one step share the block, so their objectives differ by the mask alone.
        self.block_rows = rng.choice(self.num_rows, self.block, replace=False) if self.block < self.num_rows else np.arange(self.num_rows)

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, float, np.ndarray]:
        """``(rows to train on, equivalent full-pool size |m|, score d log p / d s)``."""
        mask = self.policy.sample(rng, self.block_rows)
        size = self.num_rows * mask.sum() / len(self.block_rows)
        return self.block_rows[mask], float(size), self.policy.log_prob_grad(self.block_rows, mask)

    def candidates(self) -> np.ndarray:
        """The rows every mask of this step is drawn from (first-order lookahead)."""
        return self.block_rows

    def sample_weights(self, rng: np.random.Generator) -> tuple[np.ndarray, float, np.ndarray]:
        """``(weight of each candidate row in the mask's mean loss, |m|, score)``: the mask's rows, equally weighted."""
        mask = self.policy.sample(rng, self.block_rows)
        size = self.num_rows * mask.sum() / len(self.block_rows)
        return mask / mask.sum(), float(size), self.policy.log_prob_grad(self.block_rows, mask)

    def update(self, grad: np.ndarray, lr: float) -> None:
        # Natural-gradient step: the raw score grows like 1 / (s(1-s)) near the bounds.
        self.policy.step(self.block_rows, self.policy.fisher_inverse(self.block_rows) * grad, lr)

    def record(self) -> dict[str, Any]:
        return {"mean_probability": float(self.policy.probabilities.mean())}


class SourceMasks:
    """CADS-S masks: kept fractions ``r_j ~ TruncNormal(mu_j, sigma^2)`` and that share of each source's rows.

    With ``block_size`` set, ``block_size`` rows are drawn from the resulting mixture instead of all of them.
    """

    def __init__(self, source_codes: np.ndarray, num_sources: int, config: Any) -> None:
        self.rows = [np.flatnonzero(source_codes == j) for j in range(num_sources)]
        self.sizes = np.array([len(r) for r in self.rows], dtype=np.float64)
        self.policy = TruncatedGaussianPolicy(num_sources, config.init_probability)
        self.block_size = config.block_size
        self.sigma = config.sigma_start
        self.first_order = config.lookahead == "first_order"
        self.per_source = None if config.block_size is None else max(1, config.block_size // num_sources)
        self.candidate_rows = np.concatenate(self.rows)
        self.candidate_source = np.concatenate([np.full(len(r), j) for j, r in enumerate(self.rows)])

    def start_step(self, rng: np.random.Generator, step: int, sigma: float) -> None:
        self.sigma = sigma
        if self.first_order and self.per_source is not None:
            # A stratified draw: every source is represented, so any mixture can be scored on these rows.
            picked = [rng.choice(r, min(self.per_source, len(r)), replace=False) for r in self.rows]
            self.candidate_rows = np.concatenate(picked)
            self.candidate_source = np.concatenate([np.full(len(r), j) for j, r in enumerate(picked)])

    def candidates(self) -> np.ndarray:
        return self.candidate_rows

    def sample_weights(self, rng: np.random.Generator) -> tuple[np.ndarray, float, np.ndarray]:
        """The mixture's expected mask gradient: source ``j``'s share spread over its candidate rows."""
        ratios = self.policy.sample(rng, self.sigma)
        kept = ratios * self.sizes
        share = kept / kept.sum() if kept.sum() > 0 else self.sizes / self.sizes.sum()
        counts = np.bincount(self.candidate_source, minlength=len(self.rows)).astype(np.float64)
        weights = share[self.candidate_source] / counts[self.candidate_source]
        return weights, max(float(kept.sum()), 1.0), self.policy.log_prob_grad(ratios, self.sigma)

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, float, np.ndarray]:
        ratios = self.policy.sample(rng, self.sigma)
        kept = ratios * self.sizes
        if self.block_size is None:
            counts = np.rint(kept).astype(int)
        else:
            share = kept / kept.sum() if kept.sum() > 0 else self.sizes / self.sizes.sum()
            counts = np.minimum(rng.multinomial(self.block_size, share), self.sizes.astype(int))
        if counts.sum() == 0:
            counts[int(np.argmax(ratios))] = 1
        rows = np.concatenate([rng.choice(r, c, replace=False) for r, c in zip(self.rows, counts) if c > 0])
        return rows, max(float(kept.sum()), 1.0), self.policy.log_prob_grad(ratios, self.sigma)

    def update(self, grad: np.ndarray, lr: float) -> None:
        # Natural-gradient step: the raw score grows like 1 / sigma as sigma is annealed.
        self.policy.step(self.policy.fisher_inverse(self.sigma) * grad, lr)

    def record(self) -> dict[str, Any]:
        return {"sigma": self.sigma, "mixture": self.policy.mixture(self.sizes).tolist()}


def run_pilots(task: CADSTask, plan: CADSPlan, config: Any, rng: np.random.Generator, initial: Sequence[Any]) -> tuple[list[dict[str, float]], float]:
    """Measure the budget-``C`` training loss at each planned subset size (each pilot from ``theta_0``)."""
    from tqdm.auto import tqdm

    params = task.parameters()
    pilots: list[dict[str, float]] = []
    spent = 0.0
    runs = list(zip(plan.pilot_sizes, plan.pilot_rows, plan.pilot_budgets))
    for size, rows_count, pilot_budget in tqdm(runs, desc="CADS pilot runs", disable=not config.show_progress):
        _restore(params, initial)
        rows = rng.choice(task.num_rows, rows_count, replace=False)
        steps, train_flops = train_for_budget(task, rows, pilot_budget, config.learning_rate, config.batch_size, rng)
        final_loss, _, eval_flops = task.loss(rows, POOL, False)
        spent += train_flops + eval_flops
        pilots.append({"size": size, "rows": rows_count, "budget": pilot_budget, "steps": steps, "train_loss": final_loss})
    _restore(params, initial)
    return pilots, spent


@dataclass
class ScoredMasks:
    """One outer step's sampled masks: their objective after ``theta``'s step, reward and score."""

    val_loss: float
    objectives: list[float]
    penalties: list[float]
    rewards: list[float]
    scores: list[np.ndarray]
    mean_grads: list[Any]
    flops: float


def _gap(train_loss: float, predicted: float, two_sided: bool) -> float:
    return train_loss - predicted if two_sided else max(train_loss - predicted, 0.0)


def step_masks(task: CADSTask, masks: Any, theta: AdamTheta, predictor: LossPredictor, val_rows: np.ndarray, config: Any, rng: np.random.Generator) -> ScoredMasks:
    """Sample ``samples_per_step`` masks and score each by the objective after the step ``theta`` takes on it."""
    if config.lookahead == "first_order":
        return _step_masks_first_order(task, masks, theta, predictor, val_rows, config, rng)
    return _step_masks_exact(task, masks, theta, predictor, val_rows, config, rng)


def _step_masks_exact(task: CADSTask, masks: Any, theta: AdamTheta, predictor: LossPredictor, val_rows: np.ndarray, config: Any, rng: np.random.Generator) -> ScoredMasks:
    """Each mask: a real look-ahead step of ``theta``, then forward passes on the target (and mask) rows."""
    import torch

    alpha, samples = float(config.alpha), config.samples_per_step
    two_sided = config.penalty == "squared"
    reward_objective = config.policy_reward == "objective"
    transfer = config.policy_reward == "transfer"
    params = task.parameters()
    val_loss, val_grads, spent = task.loss(val_rows, TARGET, True)
    out = ScoredMasks(float(val_loss), [], [], [], [], [torch.zeros_like(p) for p in params], 0.0)
    for _ in range(samples):
        rows, size, score = masks.sample(rng)
        predicted = predictor(size)
        train_loss, train_grads, flops = task.loss(rows, POOL, True)
        # Gradient of L_val + alpha * (L_tr - l)^2: a training step on the mask, scaled by how far its
        # loss is above (or below) what a budget-C run would reach.
        gap = _gap(train_loss, predicted, two_sided)
        grads = [gv + 2.0 * alpha * gap * gt for gv, gt in zip(val_grads, train_grads)]
        update = theta.apply_lookahead(train_grads, plain=True) if transfer else theta.apply_lookahead(grads)
        new_val, _, flops_val = task.loss(val_rows, TARGET, False)
        if reward_objective:
            new_train, _, flops_train = task.loss(rows, POOL, False)
            new_gap = _gap(new_train, predicted, two_sided)
        else:  # the validation reward never looks at the mask's loss after the step: save that forward
            new_gap, flops_train = gap, 0.0
        theta.undo(update)
        spent += flops + flops_val + flops_train
        out.penalties.append(new_gap**2)
        out.objectives.append(new_val + alpha * out.penalties[-1])
        out.rewards.append(out.objectives[-1] if reward_objective else new_val)
        out.scores.append(score)
        for acc, g in zip(out.mean_grads, grads):
            acc.add_(g, alpha=1.0 / samples)
    out.flops = spent
    return out


def _step_masks_first_order(task: CADSTask, masks: Any, theta: AdamTheta, predictor: LossPredictor, val_rows: np.ndarray, config: Any, rng: np.random.Generator) -> ScoredMasks:
    """All masks from one batched pass: per-example gradients ``G`` of the candidate rows and the target gradient ``g_val``.

    A mask with row weights ``w`` has loss ``w . losses`` and gradient ``w G``; ``theta``'s step on it is
    ``u = Adam(g_val + 2 alpha gap w G)`` and the losses after it are taken to first order,
    ``L_val + g_val . u`` and ``L_tr + (w G) . u``. Cost: one training step on the candidates and one on
    the target rows, however many masks are scored.
    """
    import torch

    alpha, samples = float(config.alpha), config.samples_per_step
    two_sided = config.penalty == "squared"
    reward_objective = config.policy_reward == "objective"
    transfer = config.policy_reward == "transfer"
    params = task.parameters()
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]
    val_loss, val_grads, spent = task.loss(val_rows, TARGET, True)
    g_val = torch.cat([g.reshape(-1) for g in val_grads])
    candidates = masks.candidates()
    losses, per_example, flops = task.per_example(candidates, POOL)
    spent += flops
    drawn = [masks.sample_weights(rng) for _ in range(samples)]
    weights = np.stack([w for w, _, _ in drawn])
    train_losses = weights @ np.asarray(losses, dtype=np.float64)
    train_grads = torch.as_tensor(weights, dtype=per_example.dtype, device=per_example.device) @ per_example
    spent += first_order_mixing_flops(samples, len(candidates), per_example.shape[1])
    out = ScoredMasks(float(val_loss), [], [], [], [], [], spent)
    mean_grad = torch.zeros_like(g_val)
    for k, (_, size, score) in enumerate(drawn):
        predicted = predictor(size)
        gap = _gap(float(train_losses[k]), predicted, two_sided)
        grad = g_val + 2.0 * alpha * gap * train_grads[k]
        step = theta.gradient_step if transfer else theta.preview
        update = torch.cat([u.reshape(-1) for u in step([g.view(shape) for g, shape in zip((train_grads[k] if transfer else grad).split(sizes), shapes)])])
        new_val = float(val_loss) + float(g_val @ update)
        new_gap = _gap(float(train_losses[k]) + float(train_grads[k] @ update), predicted, two_sided)
        out.penalties.append(new_gap**2)
        out.objectives.append(new_val + alpha * out.penalties[-1])
        out.rewards.append(out.objectives[-1] if reward_objective else new_val)
        out.scores.append(score)
        mean_grad.add_(grad, alpha=1.0 / samples)
    out.mean_grads = [g.view(shape) for g, shape in zip(mean_grad.split(sizes), shapes)]
    return out


def run_cads(
    task: CADSTask,
    plan: CADSPlan,
    config: Any,
    source_codes: np.ndarray | None = None,
    source_names: Sequence[str] | None = None,
) -> CADSOutcome:
    """Pilot runs, loss-predictor fit and the policy-gradient outer loop; see the module docstring.

    ``source_codes`` (an integer source id per pool row) and ``source_names`` are required for
    ``config.granularity == "source"``. The task's parameters are back at their initial values afterwards.
    """
    from tqdm.auto import tqdm

    rng = np.random.default_rng(config.seed)
    params = task.parameters()
    initial = _snapshot(params)
    pilots, pilot_flops = run_pilots(task, plan, config, rng, initial)
    predictor = LossPredictor.fit([p["size"] for p in pilots], [p["train_loss"] for p in pilots])

    by_example = config.granularity == "example"
    if by_example:
        masks: ExampleMasks | SourceMasks = ExampleMasks(task.num_rows, config)
    else:
        if source_codes is None or source_names is None:
            raise ValueError("CADS-S needs source_codes and source_names (one source id per pool row).")
        masks = SourceMasks(np.asarray(source_codes), len(source_names), config)
    theta = AdamTheta(params, config.learning_rate)
    warmup_steps = int(config.warmup_fraction * plan.outer_steps)
    target_rows = min(config.target_batch_size, task.num_target_rows)
    baseline: float | None = None
    advantage_scale: float | None = None
    outer_flops = 0.0
    history: list[dict[str, Any]] = []
    progress = tqdm(range(plan.outer_steps), desc=f"CADS-{'E' if by_example else 'S'} outer loop", disable=not config.show_progress)
    for step in progress:
        policy_step = step - warmup_steps
        masks.start_step(rng, step, annealed_sigma(max(policy_step, 0), plan.outer_steps - warmup_steps, config.sigma_start, config.sigma_end))
        val_rows = rng.choice(task.num_target_rows, target_rows, replace=False)
        scored = step_masks(task, masks, theta, predictor, val_rows, config, rng)
        outer_flops += scored.flops
        theta.step(scored.mean_grads)

        values = np.asarray(scored.rewards)
        record: dict[str, Any] = {
            "step": step, "objective": float(np.mean(scored.objectives)), "val_loss": scored.val_loss,
            "penalty": float(np.mean(scored.penalties)),
        }
        # During warm-up only theta moves: until it reaches the budget-C loss level the penalty rewards
        # whatever data theta already fits, which says nothing about the budget.
        if policy_step >= 0:
            baseline = float(values.mean()) if baseline is None else baseline
            if config.baseline == "step":
                # Leave-one-out mean of this step's masks: they share the target rows (and block), so
                # whatever those add to every reward (a hard target batch) cancels exactly.
                advantages = values - (values.sum() - values) / (len(values) - 1)
            else:
                advantages = values - baseline
            if config.normalize_advantage:
                # A running RMS of the advantages makes lr_s independent of the loss scale (MSE vs LM loss).
                rms = float(np.sqrt(np.mean(advantages**2)))
                advantage_scale = rms if advantage_scale is None else config.baseline_momentum * advantage_scale + (1 - config.baseline_momentum) * rms
                advantages = advantages / max(advantage_scale, 1e-12)
            masks.update(np.mean([a * g for a, g in zip(advantages, scored.scores)], axis=0), config.lr_s)
            baseline = config.baseline_momentum * baseline + (1 - config.baseline_momentum) * float(values.mean())
        else:
            record["warmup"] = True
        record.update(masks.record())
        history.append(record)
        progress.set_postfix(objective=f"{record['objective']:.4f}")
    _restore(params, initial)

    if isinstance(masks, ExampleMasks):
        probabilities = masks.policy.probabilities.copy()
        favoured = int(np.clip(round(probabilities.sum()), 1, task.num_rows))
        outcome = CADSOutcome("example", plan, predictor, pilots, pilot_flops, outer_flops, favoured, probabilities=probabilities, history=history)
    else:
        mixture = masks.policy.mixture(masks.sizes)
        favoured = int(max(1, np.rint(masks.policy.means * masks.sizes).sum()))
        outcome = CADSOutcome(
            "source", plan, predictor, pilots, pilot_flops, outer_flops, favoured,
            source_names=list(source_names or []), source_ratios=masks.policy.means.copy(),
            mixture=dict(zip(source_names or [], mixture.tolist())), history=history,
        )
    message = (
        f"CADS-{'E' if by_example else 'S'} overhead: {outcome.flops:.4g} FLOPs = {outcome.flops / plan.train_budget:.3f} x C "
        f"(pilots {pilot_flops:.4g}, outer loop {outer_flops:.4g}; paper's (n/A + 2*gamma) * C = {plan.paper_overhead_flops:.4g})"
    )
    logger.info(message)
    if config.show_progress:
        tqdm.write(message)
    return outcome
