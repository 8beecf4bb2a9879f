"""Property tests: the ledger never passes its budget, and SelectionResult keeps its invariants."""

import numpy as np
import pytest
from datasets import Dataset
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_cads.flops import BudgetExceededError, FlopLedger
from hf_cads.selectors import ScoreOutput, Selector, top_k_indices

charges = st.lists(
    st.tuples(
        st.sampled_from(["selection", "train", "eval"]), st.floats(min_value=0, max_value=1e15, allow_nan=False)
    ),
    max_size=40,
)


@given(budget=st.floats(min_value=1.0, max_value=1e16, allow_nan=False, allow_infinity=False), charges=charges)
def test_ledger_never_exceeds_budget_and_breakdown_sums(budget, charges):
    ledger = FlopLedger(budget=budget)
    accepted = {"selection": 0.0, "train": 0.0, "eval": 0.0}
    for phase, flops in charges:
        try:
            ledger.charge(phase, flops)
            accepted[phase] += flops
        except BudgetExceededError:
            assert phase != "eval"
        assert ledger.spent <= budget * (1 + 1e-9)
    breakdown = ledger.breakdown()
    assert breakdown["total"] == pytest.approx(breakdown["selection"] + breakdown["train"])
    for phase in accepted:
        assert breakdown[phase] == pytest.approx(accepted[phase])


class FixedScores(Selector):
    requires_target = False

    def __init__(self, scores):
        super().__init__()
        self._scores = np.asarray(scores, dtype=float)

    def score(self, pool, target):
        return ScoreOutput(self._scores, 1.0)

    def estimate_flops(self, pool, target):
        return 1.0


@settings(max_examples=60, deadline=None)
@given(
    scores=st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=60),
    data=st.data(),
)
def test_selection_result_invariants(scores, data):
    k = data.draw(st.integers(min_value=1, max_value=len(scores)))
    pool = Dataset.from_dict({"text": [f"row {i}" for i in range(len(scores))]})
    result = FixedScores(scores).select(pool, k=k)
    indices = result.indices
    assert len(indices) == k == len(result.dataset) == len(result.scores)
    assert len(set(indices.tolist())) == k
    assert indices.min() >= 0 and indices.max() < len(scores)
    assert list(indices) == sorted(indices)
    assert np.array_equal(result.scores, np.asarray(scores)[indices])
    assert result.dataset["text"] == [f"row {i}" for i in indices]
    assert result.dataset["pool_index"] == indices.tolist()
    # nothing left out scores higher than something kept
    left_out = np.setdiff1d(np.arange(len(scores)), indices)
    if len(left_out):
        assert np.asarray(scores)[left_out].max() <= result.scores.min()


@given(
    st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=50),
    st.integers(min_value=1, max_value=50),
)
def test_top_k_ties_break_towards_lower_index(scores, k):
    k = min(k, len(scores))
    chosen = top_k_indices(np.array(scores), k)
    reference = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
    assert chosen.tolist() == sorted(reference)


def test_nan_scores_are_refused_not_silently_ranked():
    pool = Dataset.from_dict({"text": ["a", "b", "c"]})
    with pytest.raises(ValueError, match=r"NaN scores for pool rows \[1\]"):
        FixedScores([0.1, float("nan"), 0.3]).select(pool, k=1)
