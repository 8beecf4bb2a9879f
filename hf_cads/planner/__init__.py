"""Compute-optimal planning: "I have K FLOPs — which selector, and how much data?".

From the run records of earlier runs (:mod:`hf_cads.records`) the planner fits, per selector, the
parametric performance model of the compute-constrained data-selection analysis

    P(C) = (P_max - P0) * (1 - exp(-lambda * C / C_full)) + P0,     C = c * k + C_select,

where ``c`` is the training cost of one selected example, ``k`` the subset size, ``C_select`` the
selector's cost and ``C_full = c * |pool|`` the cost of training on the whole pool. ``P0`` is the
metric with no training and ``P_max`` the asymptote: above ``P0`` for metrics where higher is better
(accuracy), below it for losses. It then

- finds the Pareto frontier of all runs (the best metric reached at each total FLOPs),
- recommends the selector and ``k`` that maximise the predicted metric under a budget, with an
  interval from the fit's parameter covariance (delta method),
- amortises selection cost over ``T`` targets (one selection, ``T`` finetunes), and
- reports the break-even training-to-selection model size ratio at which each expensive selector
  (perplexity, LESS, CADS) overtakes the cheap ones, and
- draws it all: FLOPs on a log x axis, one colour per selector, scatter = runs, curves = fits,
  dashed = frontier.

Before any run of your own, :mod:`~hf_cads.planner.cost_table` prices every selector and training
row from the model's config alone (``hf-cads estimate``), :mod:`~hf_cads.planner.prior` supplies the
curve shapes measured on 270 runs as a prior that your records update, and
:mod:`~hf_cads.planner.pilots` proposes the pilot runs that most reduce the expected regret of the
recommendation (``hf-cads plan --costs COSTS.json --propose N --pilot-budget B``).

The fit is bounded least squares with ``0 <= P0 <= P_max`` (mirrored for losses:
``0 <= P_max <= P0``), ``P_max <= 1`` for fractions (accuracy, exact match; :func:`metric_ceiling`)
and ``lambda > 0``. The analysis fitted with Levenberg–Marquardt, which takes
no bounds. Here the curve is linear in ``(P0, P_max)`` for a fixed ``lambda``, so those are solved in
closed form and ``lambda`` is searched over a log grid and refined (variable projection): the global
minimum, found in milliseconds even when the data fit a step or a line, which matters for bootstrap
intervals that refit thousands of times.

Example:
    >>> import numpy as np
    >>> from hf_cads.planner import fit_performance_curve, recommend
    >>> flops = np.linspace(0.05, 1.0, 12) * 1e15
    >>> accuracy = 0.2 + 0.5 * (1 - np.exp(-3 * flops / 1e15))
    >>> fit = fit_performance_curve(flops, accuracy, c_full=1e15, label="bm25",
    ...                             cost_per_example=1e12, pool_size=1000)
    >>> round(fit.p0, 3), round(fit.p_max, 3), round(fit.lam, 3)
    (0.2, 0.7, 3.0)
    >>> selector, k, predicted, interval = recommend(4e14, {"bm25": fit})
    >>> selector, k
    ('bm25', 400)
"""

from ..records import NO_SELECTION
from .cost_table import CostTable, SelectorCost, estimate_costs
from .fit import (
    BENT_SHARE,
    EXPENSIVE_SELECTORS,
    PerformanceFit,
    fit_performance_curve,
    fit_selectors,
    lower_is_better,
    metric_ceiling,
    select_records,
    unbent_fit_reason,
)
from .frontier import pareto_frontier
from .pilots import PilotDesign, PlanCandidate, propose_pilots
from .plot import plot_plan
from .prior import MeasuredPrior, Observation
from .prior_plan import PriorPlan, plan_from_prior
from .recommend import (
    BreakEven,
    PlanOption,
    Recommendation,
    affordable_k,
    break_even_ratios,
    option_at_budget,
    recommend,
)
from .report import EXTRAPOLATION_WARNING, Plan, make_plan

__all__ = [
    "BENT_SHARE",
    "BreakEven",
    "CostTable",
    "EXPENSIVE_SELECTORS",
    "EXTRAPOLATION_WARNING",
    "MeasuredPrior",
    "NO_SELECTION",
    "Observation",
    "PerformanceFit",
    "PilotDesign",
    "Plan",
    "PlanCandidate",
    "PlanOption",
    "PriorPlan",
    "Recommendation",
    "SelectorCost",
    "affordable_k",
    "break_even_ratios",
    "estimate_costs",
    "fit_performance_curve",
    "fit_selectors",
    "lower_is_better",
    "make_plan",
    "metric_ceiling",
    "option_at_budget",
    "pareto_frontier",
    "plan_from_prior",
    "plot_plan",
    "propose_pilots",
    "recommend",
    "select_records",
    "unbent_fit_reason",
]
