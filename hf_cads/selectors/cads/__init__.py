"""CADS (budget-aware data selection): the ``cads`` selector (aliases ``cads-e``, ``cads-s``) and its
parts, registered on import.

- :mod:`.config`: :class:`CADSSelectorConfig`, the options;
- :mod:`.bilevel`: :class:`CADSSelector`, selecting for a training budget;
- :mod:`.algorithm`: the mask policies, the optimizer of ``theta`` and the cost plan;
- :mod:`.outer_loop`: the pilot runs and the policy-gradient outer loop;
- :mod:`.loss_predictor`: the loss predictor ``l(|m|)`` fitted from the pilot runs;
- :mod:`.backends`: what CADS trains while it selects (a causal LM, or a torch model on tensors).

Example:
    >>> from hf_cads.selectors.cads import CADSSelector
    >>> CADSSelector(granularity="source", train_budget=1e12).config.granularity
    'source'
"""

from .backends import CausalLMBackend, TensorBackend
from .bilevel import CADSSelector
from .config import CADSSelectorConfig

__all__ = ["CADSSelector", "CADSSelectorConfig", "CausalLMBackend", "TensorBackend"]
