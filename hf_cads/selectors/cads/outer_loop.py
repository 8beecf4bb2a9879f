"""Running CADS: the pilot runs, the outer loop and what they produce (:class:`CADSOutcome`).

The objective and the policies are described in :mod:`hf_cads.selectors.cads.algorithm`, which also plans
a run (:func:`~hf_cads.selectors.cads.algorithm.plan_cads`) before any work.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .algorithm import (
    POOL,
    TARGET,
    AdamTheta,
    BernoulliMaskPolicy,
    CADSPlan,
    CADSTask,
    TruncatedGaussianPolicy,
    annealed_sigma,
    first_order_mixing_flops,
)
from .loss_predictor import LossPredictor

logger = logging.getLogger(__name__)


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
        policy_lr: the ``lr_s`` the policy steps used (``config.lr_s`` or :func:`default_policy_lr`).
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
    policy_lr: float | None = None

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


def train_for_budget(
    task: CADSTask, rows: np.ndarray, flop_budget: float, lr: float, batch_size: int, rng: np.random.Generator
) -> tuple[int, float]:
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
                raise RuntimeError(
                    f"{type(task).__name__}.cost returned {cost} FLOPs for a training step; it must be > 0."
                )
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
        self.block_rows = (
            rng.choice(self.num_rows, self.block, replace=False)
            if self.block < self.num_rows
            else np.arange(self.num_rows)
        )

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, float, np.ndarray]:
        """``(rows to train on, equivalent full-pool size |m|, score d log p / d s)``."""
        mask = self.policy.sample(rng, self.block_rows)
        size = self.num_rows * mask.sum() / len(self.block_rows)
        return self.block_rows[mask], float(size), self.policy.log_prob_grad(self.block_rows, mask)

    def candidates(self) -> np.ndarray:
        """The rows every mask of this step is drawn from (first-order lookahead)."""
        return self.block_rows

    def sample_weights(self, rng: np.random.Generator) -> tuple[np.ndarray, float, np.ndarray]:
        """``(weight of each candidate row in the mask's mean loss, |m|, score)``: the mask's rows,
        equally weighted."""
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


def run_pilots(
    task: CADSTask, plan: CADSPlan, config: Any, rng: np.random.Generator, initial: Sequence[Any]
) -> tuple[list[dict[str, float]], float]:
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
        pilots.append(
            {"size": size, "rows": rows_count, "budget": pilot_budget, "steps": steps, "train_loss": final_loss}
        )
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


def step_masks(
    task: CADSTask,
    masks: Any,
    theta: AdamTheta,
    predictor: LossPredictor,
    val_rows: np.ndarray,
    config: Any,
    rng: np.random.Generator,
) -> ScoredMasks:
    """Sample ``samples_per_step`` masks and score each by the objective after the step ``theta`` takes on it."""
    if config.lookahead == "first_order":
        return _step_masks_first_order(task, masks, theta, predictor, val_rows, config, rng)
    return _step_masks_exact(task, masks, theta, predictor, val_rows, config, rng)


def _step_masks_exact(
    task: CADSTask,
    masks: Any,
    theta: AdamTheta,
    predictor: LossPredictor,
    val_rows: np.ndarray,
    config: Any,
    rng: np.random.Generator,
) -> ScoredMasks:
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


def _step_masks_first_order(
    task: CADSTask,
    masks: Any,
    theta: AdamTheta,
    predictor: LossPredictor,
    val_rows: np.ndarray,
    config: Any,
    rng: np.random.Generator,
) -> ScoredMasks:
    """All masks from one batched pass: per-example gradients ``G`` of the candidate rows and the
    target gradient ``g_val``.

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
        update = torch.cat(
            [
                u.reshape(-1)
                for u in step(
                    [g.view(shape) for g, shape in zip((train_grads[k] if transfer else grad).split(sizes), shapes)]
                )
            ]
        )
        new_val = float(val_loss) + float(g_val @ update)
        new_gap = _gap(float(train_losses[k]) + float(train_grads[k] @ update), predicted, two_sided)
        out.penalties.append(new_gap**2)
        out.objectives.append(new_val + alpha * out.penalties[-1])
        out.rewards.append(out.objectives[-1] if reward_objective else new_val)
        out.scores.append(score)
        mean_grad.add_(grad, alpha=1.0 / samples)
    out.mean_grads = [g.view(shape) for g, shape in zip(mean_grad.split(sizes), shapes)]
    return out


def default_policy_lr(policy_steps: int) -> float:
    """``lr_s`` when none is given: 0.05 for a long outer loop, larger for a short one (an LM's outer loop
    sized by ``gamma`` has ~10 steps, in which 0.05 moves a source mean by ~0.02), so that
    ``lr_s * steps`` stays >= 10."""
    return max(0.05, 10.0 / max(1, policy_steps))


class AdvantageBaseline:
    """Advantages ``f(m) - b`` of an outer step's rewards against a moving-average baseline ``b`` (or, with
    ``kind="step"``, the mean of the step's other rewards),
    divided by their running RMS when ``normalize`` (so ``lr_s`` does not depend on the loss scale)."""

    def __init__(self, momentum: float, normalize: bool, kind: str = "moving_average") -> None:
        self.momentum, self.normalize, self.kind = momentum, normalize, kind
        self.baseline: float | None = None
        self.scale: float | None = None

    def __call__(self, rewards: np.ndarray) -> np.ndarray:
        values = np.asarray(rewards, dtype=np.float64)
        self.baseline = float(values.mean()) if self.baseline is None else self.baseline
        if self.kind == "step":
            # Leave-one-out mean of this step's masks: they share the target rows (and block), so
            # whatever those add to every reward (a hard target batch) cancels exactly.
            advantages = values - (values.sum() - values) / (len(values) - 1)
        else:
            advantages = values - self.baseline
        if self.normalize:
            rms = float(np.sqrt(np.mean(advantages**2)))
            self.scale = rms if self.scale is None else self.momentum * self.scale + (1 - self.momentum) * rms
            advantages = advantages / max(self.scale, 1e-12)
        self.baseline = self.momentum * self.baseline + (1 - self.momentum) * float(values.mean())
        return advantages


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
    lr_s = config.lr_s if config.lr_s is not None else default_policy_lr(plan.outer_steps - warmup_steps)
    target_rows = min(config.target_batch_size, task.num_target_rows)
    advantages = AdvantageBaseline(config.baseline_momentum, config.normalize_advantage, config.baseline)
    outer_flops = 0.0
    history: list[dict[str, Any]] = []
    progress = tqdm(
        range(plan.outer_steps), desc=f"CADS-{'E' if by_example else 'S'} outer loop", disable=not config.show_progress
    )
    for step in progress:
        policy_step = step - warmup_steps
        masks.start_step(
            rng,
            step,
            annealed_sigma(max(policy_step, 0), plan.outer_steps - warmup_steps, config.sigma_start, config.sigma_end),
        )
        val_rows = rng.choice(task.num_target_rows, target_rows, replace=False)
        scored = step_masks(task, masks, theta, predictor, val_rows, config, rng)
        theta.step(scored.mean_grads)
        outer_flops += scored.flops
        rewards, scores = np.asarray(scored.rewards), scored.scores
        record = {
            "step": step,
            "objective": float(np.mean(scored.objectives)),
            "val_loss": scored.val_loss,
            "penalty": float(np.mean(scored.penalties)),
        }
        # During warm-up only theta moves: until it reaches the budget-C loss level the penalty rewards
        # whatever data theta already fits, which says nothing about the budget.
        if policy_step >= 0:
            masks.update(np.mean([a * g for a, g in zip(advantages(rewards), scores)], axis=0), lr_s)
        else:
            record["warmup"] = True
        record.update(masks.record())
        history.append(record)
        progress.set_postfix(objective=f"{record['objective']:.4f}")
    _restore(params, initial)

    if isinstance(masks, ExampleMasks):
        probabilities = masks.policy.probabilities.copy()
        favoured = int(np.clip(round(probabilities.sum()), 1, task.num_rows))
        outcome = CADSOutcome(
            "example",
            plan,
            predictor,
            pilots,
            pilot_flops,
            outer_flops,
            favoured,
            probabilities=probabilities,
            history=history,
            policy_lr=lr_s,
        )
    else:
        mixture = masks.policy.mixture(masks.sizes)
        favoured = int(max(1, np.rint(masks.policy.means * masks.sizes).sum()))
        outcome = CADSOutcome(
            "source",
            plan,
            predictor,
            pilots,
            pilot_flops,
            outer_flops,
            favoured,
            source_names=list(source_names or []),
            source_ratios=masks.policy.means.copy(),
            mixture=dict(zip(source_names or [], mixture.tolist())),
            history=history,
            policy_lr=lr_s,
        )
    message = (
        f"CADS-{'E' if by_example else 'S'} overhead: {outcome.flops:.4g} FLOPs = "
        f"{outcome.flops / plan.train_budget:.3f} x C (pilots {pilot_flops:.4g}, outer loop {outer_flops:.4g}; "
        f"paper's (n/A + 2*gamma) * C = {plan.paper_overhead_flops:.4g})"
    )
    logger.info(message)
    if config.show_progress:
        tqdm.write(message)
    return outcome
