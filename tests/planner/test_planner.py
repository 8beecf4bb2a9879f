import json
import math

import numpy as np
import pytest

from hf_cads.cli import main
from hf_cads.planner import (
    BENT_SHARE,
    PerformanceFit,
    break_even_ratios,
    fit_performance_curve,
    fit_selectors,
    make_plan,
    metric_ceiling,
    pareto_frontier,
    recommend,
    unbent_fit_reason,
)
from hf_cads.planner.recommend import _value_at_scale
from hf_cads.records import RunRecord, append_record, read_records, recorded_keys, run_key

C_FULL = 1e15


def curve(flops, p0, p_max, lam, c_full=C_FULL):
    return (p_max - p0) * (1 - np.exp(-lam * np.asarray(flops) / c_full)) + p0


@pytest.mark.parametrize(
    "p0,p_max,lam,higher",
    [(0.25, 0.72, 4.0, True), (2.6, 1.4, 2.5, False), (0.05, 0.9, 12.0, True)],
    ids=["accuracy", "loss", "fast-saturating"],
)
def test_fit_recovers_known_parameters_from_noisy_points(p0, p_max, lam, higher):
    rng = np.random.default_rng(0)
    flops = np.geomspace(0.01, 1.5, 40) * C_FULL
    noise = 0.01 * abs(p_max - p0)
    observed = curve(flops, p0, p_max, lam) + rng.normal(0, noise, len(flops))
    fit = fit_performance_curve(flops, observed, C_FULL, higher_is_better=higher)
    errors = fit.parameter_errors
    for name, truth in (("p0", p0), ("p_max", p_max), ("lam", lam)):
        estimate = getattr(fit, name)
        assert abs(estimate - truth) < 4 * errors[name] + 1e-9, (name, estimate, truth, errors[name])
        assert abs(estimate - truth) < 0.1 * abs(truth), (name, estimate, truth)
        assert 0 < errors[name] < 0.2 * abs(truth)
    assert fit.rmse == pytest.approx(noise, rel=0.35)
    assert (fit.p0 <= fit.p_max) == higher


def test_fit_respects_bounds_and_rejects_too_few_points():
    flops = np.array([0.1, 0.2, 0.4, 0.8, 1.0]) * C_FULL
    # Data that go the wrong way for "higher is better" must not give P_max < P0 or lambda < 0.
    fit = fit_performance_curve(flops, [0.5, 0.45, 0.4, 0.38, 0.35], C_FULL, higher_is_better=True)
    assert 0 <= fit.p0 <= fit.p_max and fit.lam >= 0
    with pytest.raises(ValueError, match="at least 4 runs"):
        fit_performance_curve(flops[:3], [0.1, 0.2, 0.3], C_FULL)
    with pytest.raises(ValueError, match="c_full"):
        fit_performance_curve(flops, [0.1, 0.2, 0.3, 0.4, 0.5], 0.0)


@pytest.mark.parametrize("shape", ["curve", "step", "line", "wrong-way"])
def test_fit_reaches_the_bounded_least_squares_minimum_on_awkward_data(shape):
    """Few points shaped like a step (one jump), a straight line or the wrong direction are what
    bootstrap resamples of small sweeps look like: the fit must still be the bounded minimum, no worse
    than scipy's curve_fit started from many values of lambda."""
    from scipy.optimize import curve_fit

    def model(x, a, delta, lam):
        return a + delta * (1 - np.exp(-lam * x))

    for seed in range(3):
        rng = np.random.default_rng(seed)
        x = np.sort(np.concatenate([[0.0], rng.uniform(0.02, 0.6, 5)]))
        base = {
            "curve": 0.3 + 0.3 * (1 - np.exp(-4 * x)),
            "step": np.where(x > 0, 0.55, 0.4),
            "line": 0.4 + 0.3 * x,
            "wrong-way": 0.6 - 0.2 * x,
        }[shape]
        y = base + rng.normal(0, 0.02, len(x))
        fit = fit_performance_curve(x * C_FULL, y, C_FULL, higher_is_better=True)
        assert 0 <= fit.p0 <= fit.p_max and fit.lam > 0
        sse = fit.rmse**2 * len(x)
        assert sse == pytest.approx(float(np.sum((fit.predict(x * C_FULL) - y) ** 2)), rel=1e-9, abs=1e-15)
        best_reference = np.inf
        for lam0 in np.geomspace(0.01, 1e4, 13):
            try:
                params, _ = curve_fit(model, x, y, p0=[y[0], 0.1, lam0], bounds=([0, 0, 0], [np.inf] * 3), maxfev=2000)
            except RuntimeError:
                continue
            best_reference = min(best_reference, float(np.sum((model(x, *params) - y) ** 2)))
        assert sse <= best_reference * (1 + 1e-4) + 1e-12, (shape, seed, sse, best_reference)


def test_delta_method_interval_matches_parameter_sampling():
    rng = np.random.default_rng(1)
    flops = np.geomspace(0.02, 1.0, 12) * C_FULL
    fit = fit_performance_curve(flops, curve(flops, 0.3, 0.7, 3.0) + rng.normal(0, 0.02, 12), C_FULL)
    at = np.array([0.05, 0.3, 1.0]) * C_FULL
    samples = rng.multivariate_normal([fit.p0, fit.p_max, fit.lam], fit.covariance, size=20000)
    sampled = np.array([curve(at, *s) for s in samples])
    low, high = fit.interval(at, confidence=0.9)
    q_low, q_high = np.quantile(sampled, [0.05, 0.95], axis=0)
    np.testing.assert_allclose(high - low, q_high - q_low, rtol=0.1)


def test_pareto_frontier_on_a_hand_made_set():
    flops = [1, 2, 2, 3, 4, 5, 6, 0.5]
    accuracy = [0.1, 0.3, 0.2, 0.25, 0.5, 0.5, 0.7, 0.05]
    # 0.5 FLOPs/0.05 starts it; at 2 FLOPs only the better run counts; (3, 0.25) and (5, 0.5) are
    # dominated by cheaper runs at least as good.
    assert pareto_frontier(flops, accuracy, higher_is_better=True).tolist() == [7, 0, 1, 4, 6]
    losses = [-a for a in accuracy]
    assert pareto_frontier(flops, losses, higher_is_better=False).tolist() == [7, 0, 1, 4, 6]
    assert pareto_frontier([3, 2, 1], [1.0, 1.0, 1.0]).tolist() == [2]


def make_fit(
    label, p0, p_max, lam, cost, selection, pool, selector=None, higher=True, model_params=0, selection_params=0
):
    return PerformanceFit(
        label=label,
        p0=p0,
        p_max=p_max,
        lam=lam,
        covariance=np.diag([1e-4, 1e-4, 1e-2]),
        c_full=cost * pool,
        higher_is_better=higher,
        cost_per_example=cost,
        selection_flops=selection,
        pool_size=pool,
        selector=selector or label,
        model_params=model_params,
        selection_model_params=selection_params,
    )


FITS = {
    "random": make_fit("random", 0.20, 0.55, 2.0, 1.0e12, 0.0, 400),
    "bm25": make_fit("bm25", 0.20, 0.62, 3.0, 1.1e12, 4.0e9, 400),
    # Expensive: its curve starts late (C >= C_select) and rises slowly, but to a higher plateau.
    "perplexity": make_fit(
        "perplexity", 0.20, 0.80, 1.2, 0.9e12, 1.5e14, 400, model_params=10**8, selection_params=10**8
    ),
}


def brute_force(budget, fits, targets, costs=None):
    best = None
    for label, fit in fits.items():
        selection = (costs or {}).get(label, fit.selection_flops) / targets
        for k in range(1, fit.pool_size + 1):
            if fit.cost_per_example * k + selection > budget:
                break
            value = float(fit.predict(fit.cost_per_example * k + fit.selection_flops))
            score = value if fit.higher_is_better else -value
            if best is None or score > best[0]:
                best = (score, label, k, value)
    return best


@pytest.mark.parametrize("budget", [2e13, 8e13, 1.6e14, 2.2e14, 3e14, 6e14])
@pytest.mark.parametrize("targets", [1, 3, 20])
def test_recommendation_equals_brute_force_over_the_fitted_curves(budget, targets):
    expected = brute_force(budget, FITS, targets)
    selector, k, predicted, (low, high) = recommend(budget, FITS, targets=targets)
    assert (selector, k) == (expected[1], expected[2])
    assert predicted == pytest.approx(expected[3], rel=1e-12)
    assert low < predicted < high


def test_recommendation_for_a_loss_and_with_overridden_selection_costs():
    loss_fits = {
        label: make_fit(
            label, 2.5, 2.5 - (f.p_max - f.p0) * 2, f.lam, f.cost_per_example, f.selection_flops, 400, higher=False
        )
        for label, f in FITS.items()
    }
    costs = {"perplexity": 3e14}
    for budget in (1e14, 3.2e14, 5e14):
        expected = brute_force(budget, loss_fits, 1, costs)
        rec = recommend(budget, loss_fits, costs)
        assert (rec.selector, rec.k) == expected[1:3]
        assert rec.chosen.selection_flops == (
            3e14 if rec.selector == "perplexity" else loss_fits[rec.selector].selection_flops
        )
    with pytest.raises(ValueError, match="affords no selector"):
        recommend(5e11, FITS)
    with pytest.raises(ValueError, match="without a fit"):
        recommend(1e14, FITS, {"less": 1.0})


def test_amortising_selection_over_targets_favours_the_expensive_selector():
    budget = 1.9e14
    assert recommend(budget, FITS, targets=1).selector != "perplexity"
    assert recommend(budget, FITS, targets=50).selector == "perplexity"


def test_break_even_ratio_is_monotone_in_selection_cost():
    budget = 2e14
    costs = np.geomspace(1e12, 5e14, 12)
    ratios = [break_even_ratios(FITS, budget, {"perplexity": c})[0] for c in costs]
    scales = np.array([r.scale for r in ratios])
    finite = scales[np.isfinite(scales) & (scales > 0)]
    assert len(finite) >= 8
    assert np.all(np.diff(scales) >= 0), scales
    assert np.all(np.diff(finite) > 0)
    # At the break-even size the expensive selector ties with the best cheap one.
    example = ratios[6]
    fits_value = _value_at_scale(FITS["perplexity"], budget, costs[6], 1, example.scale)
    cheap_value = max(
        _value_at_scale(FITS[c], budget, FITS[c].selection_flops, 1, example.scale) for c in ("random", "bm25")
    )
    assert fits_value == pytest.approx(cheap_value, abs=1e-6)
    assert example.ratio == pytest.approx(example.scale * 1.0) and example.versus in {"random", "bm25"}
    # A free expensive selector with the better curve is always ahead; a worse curve never gets ahead.
    assert break_even_ratios(FITS, budget, {"perplexity": 0.0})[0].scale == 0.0
    worse = dict(FITS, perplexity=make_fit("perplexity", 0.2, 0.5, 1.0, 0.9e12, 1e13, 400))
    assert all(r.selection_share == pytest.approx(c / budget) for r, c in zip(ratios, costs))
    assert math.isinf(break_even_ratios(worse, budget)[0].scale)


def synthetic_records(rng):
    """Runs of three selectors whose metric follows known curves, as the pipeline would record them."""
    truths = {
        "random": (0.2, 0.55, 2.0, 0.0, 0),
        "bm25": (0.2, 0.62, 3.0, 4e9, 0),
        "perplexity": (0.2, 0.7, 5.0, 1.5e14, 10**8),
    }
    records = []
    for label, (p0, p_max, lam, selection, selection_params) in truths.items():
        for seed in (0, 1):
            for fraction in (0.05, 0.1, 0.2, 0.4, 0.8):
                k = int(400 * fraction)
                train = 1e12 * k
                value = curve(train + selection, p0, p_max, lam, c_full=4e14) + rng.normal(0, 0.005)
                records.append(
                    RunRecord(
                        selector=label,
                        selector_config={"seed": seed},
                        model="tiny",
                        model_params=10**8,
                        selection_model_params=selection_params,
                        pool_size=400,
                        k=k,
                        tokens_trained=100 * k,
                        selection_flops=selection,
                        train_flops=train,
                        metrics={"accuracy": float(value)},
                        baseline_metrics={"accuracy": p0},
                        seed=seed,
                        target="boolean_expressions",
                        selection_fraction=fraction,
                    )
                )
    return records


def test_fit_selectors_from_records_recovers_each_curve():
    fits, skipped = fit_selectors(synthetic_records(np.random.default_rng(2)), "accuracy")
    assert not skipped and set(fits) == {"random", "bm25", "perplexity"}
    assert fits["perplexity"].lam == pytest.approx(5.0, rel=0.15)
    assert fits["bm25"].p_max == pytest.approx(0.62, abs=0.02)
    assert fits["perplexity"].selection_flops == 1.5e14 and fits["random"].cost_per_example == 1e12
    assert fits["perplexity"].c_full == 4e14


def test_undetermined_fit_warns_unless_asked_not_to(caplog):
    """A step (every trained run at one value) leaves lambda undetermined: infinite intervals and a
    warning, which bootstrap callers that use only predictions can turn off."""
    records = [r for r in synthetic_records(np.random.default_rng(4)) if r.selector == "random"]
    for r in records:
        r.metrics["accuracy"] = 0.5
    with caplog.at_level("WARNING", logger="hf_cads.planner.fit"):
        fits, _ = fit_selectors(records, "accuracy")
    assert "undetermined parameters" in caplog.text and np.isinf(fits["random"].covariance).all()
    assert fits["random"].predict([4e14])[0] == pytest.approx(0.5, abs=1e-6)
    caplog.clear()
    with caplog.at_level("WARNING", logger="hf_cads.planner.fit"):
        quiet, _ = fit_selectors(records, "accuracy", warn_undetermined=False)
    assert caplog.text == "" and np.isinf(quiet["random"].covariance).all()


def test_records_file_round_trip_keys_and_damaged_lines(tmp_path, caplog):
    path = tmp_path / "runs.jsonl"
    records = synthetic_records(np.random.default_rng(3))[:3]
    for record in records:
        append_record(path, record)
    loaded = read_records(path)
    assert [r.to_dict() for r in loaded] == [r.to_dict() for r in records]
    assert recorded_keys(path) == {r.key for r in records} and len(recorded_keys(path)) == 3
    key = run_key("bm25", {"aggregate": "max", "show_progress": True}, 0.1, None, 0, "m", "t")
    assert key == run_key("bm25", {"show_progress": False, "aggregate": "max"}, 0.1, None, 0, "m", "t")
    assert key != run_key("bm25", {"aggregate": "max"}, 0.1, None, 1, "m", "t")
    with open(path, "a") as handle:
        handle.write('{"selector": "bm25", "k": ')  # a run killed mid-write
    assert len(read_records(path)) == 3 and "malformed last line" in caplog.text
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "not json", *lines[1:3]]) + "\n")
    with pytest.raises(ValueError, match=r"runs.jsonl:2"):
        read_records(path)
    with pytest.raises(FileNotFoundError, match="hf-cads sweep"):
        read_records(tmp_path / "missing.jsonl")


@pytest.mark.parametrize(
    "name, content",
    [
        ("runs.csv", "selector,k,target_loss\nbm25,10,1.2\nrandom,10,1.4\n"),
        ("runs.json", '[{"selector": "bm25", "k": 10}, {"selector": "random", "k": 10}]\n'),
        ("pretty.json", '[\n  {"selector": "bm25", "k": 10}\n]\n'),
        ("pool.jsonl", '{"text": "solve 2 + 3"}\n{"text": "sort this list"}\n'),
    ],
)
def test_plan_on_a_file_that_is_not_run_records_says_so_in_one_line(tmp_path, capsys, name, content):
    path = tmp_path / name
    path.write_text(content)
    assert main(["plan", str(path), "--budget", "1e14"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fix or delete" not in err
    assert f"{name} is not a file of run records" in err and "runs.jsonl" in err and "hf-cads run" in err


def test_plan_command_prints_table_and_writes_plot(tmp_path, capsys):
    path = tmp_path / "runs.jsonl"
    records = synthetic_records(np.random.default_rng(4))
    for record in records:
        append_record(path, record)
    plot = tmp_path / "plan.png"
    assert (
        main(["plan", str(path), "--budget", "1.9e14", "--metric", "accuracy", "--targets", "2", "--plot", str(plot)])
        == 0
    )
    out = capsys.readouterr().out
    plan = make_plan(records, metric="accuracy", budget=1.9e14, targets=2)
    rec = plan.recommendation
    assert f"recommendation: {rec.selector} with k={rec.k}" in out
    assert "Pareto frontier" in out and "break-even" in out and "perplexity" in out
    assert plan.break_even[0].selector == "perplexity" and 0 < plan.break_even[0].scale < math.inf
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 20_000
    # Bad input: an unrecorded metric and a malformed --selection-cost are errors that say what to pass.
    assert main(["plan", str(path), "--metric", "nope"]) == 2
    assert "recorded metrics: ['accuracy']" in capsys.readouterr().err
    assert main(["plan", str(path), "--budget", "1e14", "--metric", "accuracy", "--selection-cost", "oops"]) == 2
    assert "LABEL=FLOPS" in capsys.readouterr().err


def test_plan_warns_when_the_recommended_k_is_far_beyond_the_measured_runs():
    """Fitted on k <= 40 only, a budget that affords ~190 rows is a recommendation from the curve's
    shape alone: the report says so; a budget within ~2x of the data gets no warning."""
    records = [r for r in synthetic_records(np.random.default_rng(5)) if r.k <= 40 and r.selector != "perplexity"]
    far = make_plan(records, metric="accuracy", budget=1.9e14)
    assert far.recommendation.chosen.measured_k == 40 and far.recommendation.chosen.extrapolation > 4
    assert f"k={far.recommendation.k} is" in far.format() and "extrapolates its fitted curve" in far.format()
    assert far.to_dict()["recommendation"]["largest_measured_k"] == 40
    near = make_plan(records, metric="accuracy", budget=6e13)
    assert near.recommendation.chosen.extrapolation <= 2 and "extrapolates" not in near.format()


def test_plan_flags_fits_whose_runs_have_not_bent_the_curve():
    """Runs that still improve linearly fit a line stopped only by the metric's ceiling (accuracy 1):
    the plan says so, and warns when it recommends that selector; curves measured past their bend get
    no note."""
    rng = np.random.default_rng(6)
    bent = synthetic_records(rng)
    assert make_plan(bent, metric="accuracy", budget=2e14).unbent_fits() == {}
    straight = [
        RunRecord(**{**r.to_dict(), "key": "", "metrics": {"accuracy": 0.2 + 0.004 * r.k + rng.normal(0, 0.002)}})
        for r in bent
        if r.selector == "bm25" and r.k <= 80
    ]
    plan = make_plan([r for r in bent if r.selector == "random"] + straight, metric="accuracy", budget=3e14)
    assert plan.fits["bm25"].p_max == pytest.approx(1.0) and plan.fits["bm25"].ceiling == 1.0
    assert plan.recommendation.predicted <= 1.0  # without the ceiling this line predicted an accuracy of 1.36
    reasons = plan.unbent_fits()
    assert set(reasons) == {"bm25"} and "the metric's ceiling" in reasons["bm25"]
    text = plan.format()
    assert "have not bent its curve" in text
    assert plan.recommendation.selector == "bm25" and "may rest on a line" in text
    families = plan.to_dict()["families"]
    assert families["bm25"]["fit"]["unbent"] == reasons["bm25"] and families["random"]["fit"]["unbent"] is None
    assert (
        families["random"]["fit"]["measured_share"] >= BENT_SHARE
        and families["bm25"]["fit"]["largest_measured_k"] == 80
    )


def test_fit_keeps_a_fraction_below_its_ceiling_only_when_the_data_are_fractions():
    flops = np.array([0.0, 0.1, 0.2, 0.3, 0.4]) * 1e15
    rising = 0.2 + 1.5 * flops / 1e15  # a line that would pass 1 at 0.53 x C_full
    bounded = fit_performance_curve(flops, rising, 1e15, ceiling=1.0)
    assert bounded.p_max <= 1.0 + 1e-9 and bounded.ceiling == 1.0 and unbent_fit_reason(bounded) is not None
    assert fit_performance_curve(flops, rising, 1e15).p_max > 1.0  # no ceiling given
    percent = fit_performance_curve(flops, 100 * rising, 1e15, ceiling=1.0)  # a percentage: the ceiling cannot apply
    assert percent.ceiling == math.inf and percent.p_max > 1.0
    within = fit_performance_curve(flops, curve(flops, 0.2, 0.7, 3.0, c_full=1e15), 1e15, ceiling=1.0)
    assert within.p_max == pytest.approx(0.7, abs=1e-3) and unbent_fit_reason(within) is None


def test_unbent_fit_reason_names_each_way_a_fit_can_be_a_line():
    def fit(p0, p_max, lam, higher, ceiling=math.inf):
        return PerformanceFit(
            "s",
            p0,
            p_max,
            lam,
            np.zeros((3, 3)),
            1e14,
            higher_is_better=higher,
            cost_per_example=1e11,
            max_k=250,
            ceiling=ceiling,
        )

    assert fit(4.4, 1.5, 20.0, False).measured_share == pytest.approx(1 - math.exp(-20 * 0.25))
    assert unbent_fit_reason(fit(4.4, 1.5, 20.0, False)) is None
    assert "bound of the fit" in unbent_fit_reason(fit(4.4, 0.0, 0.03, False))
    assert "reached only" in unbent_fit_reason(fit(4.4, 2.0, 0.5, False))  # 12% of its change
    assert "ceiling" in unbent_fit_reason(fit(0.1, 1.0, 10.0, True, ceiling=1.0))
    assert unbent_fit_reason(fit(0.1, 0.8, 10.0, True, ceiling=1.0)) is None
    assert metric_ceiling("eval_accuracy") == 1.0 and metric_ceiling("exact_match") == 1.0
    assert metric_ceiling("target_loss") == math.inf and metric_ceiling("bleu") == math.inf


def test_plan_refuses_mixed_models(tmp_path):
    records = synthetic_records(np.random.default_rng(5))
    other = RunRecord(**{**records[0].to_dict(), "model": "other", "key": ""})
    with pytest.raises(ValueError, match="mix"):
        make_plan(records + [other], metric="accuracy")
    assert len(make_plan(records + [other], metric="accuracy", model="tiny").records) == len(records)
    json.dumps(other.to_dict())


def test_cads_runs_at_several_sizes_and_seeds_form_one_family(tmp_path, capsys):
    """CADS's train_budget follows each run's subset size, and the seed varies: neither may split the
    family. Long labels are shortened in the 120-column report and spelled out in the JSON."""
    from hf_cads.records import run_label

    options = dict(
        outer_steps=2,
        block_size=4,
        num_sampling_points=3,
        samples_per_step=2,
        target_batch_size=3,
        min_sampling_fraction=0.02,
        max_length=128,
        A=4.0,
        batch_size=1,
        learning_rate=1e-3,
    )
    rng = np.random.default_rng(0)
    path = tmp_path / "runs.jsonl"
    cost, selection, pool = 7e10, 3e12, 120
    for fraction in (0.05, 0.1, 0.2):
        for seed in (0, 1):
            k = round(fraction * pool)
            kwargs = dict(options, train_budget=cost * k, seed=seed)  # as the compute-optimal benchmark sets them
            total = selection + cost * k
            append_record(
                path,
                RunRecord(
                    selector="cads-s",
                    selector_config={},
                    model="m",
                    model_params=1,
                    selection_model_params=1,
                    pool_size=pool,
                    k=k,
                    tokens_trained=10 * k,
                    selection_flops=selection,
                    train_flops=cost * k,
                    metrics={"target_loss": float(4.3 - 0.1 * (1 - np.exp(-total / 5e12)) + rng.normal(0, 0.002))},
                    baseline_metrics={"target_loss": 4.3},
                    seed=seed,
                    selection_fraction=fraction,
                    target="t",
                    setup={"selector_kwargs": kwargs},
                ),
            )
    records = read_records(path)
    assert len({r.label for r in records}) == 1 and len({r.key for r in records}) == 6  # one family, six experiments
    label = records[0].label
    assert label == run_label("cads-s", options) and "train_budget" not in label and "seed" not in label
    assert "learning_rate" not in label  # set to its default value: no part of the family's name
    plan = make_plan(records, metric="target_loss", budget=4e12)
    assert label in plan.fits and plan.fits[label].num_points == 6 + 1  # six runs and the untrained baseline
    json_path = tmp_path / "plan.json"
    assert (
        main(["plan", str(path), "--budget", "4e12", "--plot", str(tmp_path / "p.png"), "--json", str(json_path)]) == 0
    )
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 120, max(out.splitlines(), key=len)
    assert "cads-s#1 = cads-s[" in out and "no curve" not in out
    assert label in json.loads(json_path.read_text())["families"]
