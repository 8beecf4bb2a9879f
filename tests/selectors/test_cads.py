import numpy as np
import pytest
import torch
from datasets import Dataset

from hf_cads import get_selector
from hf_cads.selectors.cads import CADSSelector
from hf_cads.selectors.cads.algorithm import TruncatedGaussianPolicy, annealed_sigma
from hf_cads.selectors.cads.backends import TensorBackend
from hf_cads.selectors.cads.bilevel import allocate_by_mixture
from hf_cads.selectors.cads.loss_predictor import LossPredictor


# -- loss predictor ----------------------------------------------------------------------------
def test_loss_predictor_interpolates_falls_back_and_reports_loo():
    sizes = np.array([50, 100, 200, 400, 800])
    losses = 0.1 + 0.05 * np.log(sizes) + np.array([0.0, 0.01, -0.01, 0.005, 0.0])
    predictor = LossPredictor.fit(sizes, losses)
    assert np.allclose(predictor(sizes), losses)  # the spline passes through the pilot measurements
    assert predictor.method_at(300) == "spline" and predictor.method_at(1600) == "log-linear" == predictor.method_at(
        10
    )
    slope, intercept = np.polyfit(np.log(sizes), losses, 1)
    assert predictor(1600) == pytest.approx(intercept + slope * np.log(1600))
    assert predictor(10) == pytest.approx(intercept + slope * np.log(10))
    # leave-one-out by hand: refit on 4 points, predict the fifth
    errors = [
        (LossPredictor.fit(np.delete(sizes, i), np.delete(losses, i))(sizes[i]) - losses[i]) ** 2 for i in range(5)
    ]
    assert predictor.loo_mse() == pytest.approx(np.mean(errors))
    assert predictor.to_dict()["loo_mse"] > 0


def test_loss_predictor_bad_input():
    with pytest.raises(ValueError, match=">= 2 different subset sizes"):
        LossPredictor.fit([100, 100], [0.3, 0.4])
    with pytest.raises(ValueError, match="finite"):
        LossPredictor.fit([100, 200], [0.3, float("nan")])
    assert np.isnan(LossPredictor.fit([100, 200], [0.3, 0.4]).loo_mse())


def test_truncated_gaussian_score_is_the_log_density_gradient():
    from scipy.stats import truncnorm

    policy = TruncatedGaussianPolicy(3)
    policy.means = np.array([0.05, 0.5, 0.9])
    ratios, sigma, eps = np.array([0.2, 0.4, 0.99]), 0.25, 1e-6

    def log_density(means):
        return truncnorm.logpdf(ratios, (0 - means) / sigma, (1 - means) / sigma, loc=means, scale=sigma)

    numeric = (log_density(policy.means + eps) - log_density(policy.means - eps)) / (2 * eps)
    assert np.allclose(policy.log_prob_grad(ratios, sigma), numeric, rtol=1e-4)
    samples = np.stack([policy.sample(np.random.default_rng(i), sigma) for i in range(200)])
    assert samples.min() >= 0 and samples.max() <= 1
    assert annealed_sigma(0, 10, 0.3, 0.05) == pytest.approx(0.3) and annealed_sigma(
        9, 10, 0.3, 0.05
    ) == pytest.approx(0.05)


def test_allocate_by_mixture_respects_capacity():
    counts = allocate_by_mixture(30, np.array([0.7, 0.2, 0.1]), np.array([10, 50, 50]))
    assert counts.sum() == 30 and counts[0] == 10 and counts[1] > counts[2]


# -- CADS-S on the real pool with a tiny LM ----------------------------------------------------
def test_cads_s_on_the_real_pool_returns_a_mixture_and_charges_its_flops(small_pool, bbh_target, tokenizer, tiny_lm):
    before = {name: value.clone() for name, value in tiny_lm.state_dict().items()}
    selector = get_selector(
        "cads-s",
        model=tiny_lm,
        tokenizer=tokenizer,
        train_budget=2e10,
        max_length=96,
        outer_steps=4,
        show_progress=False,
        seed=0,
    )
    estimate = selector.estimate_flops(small_pool, bbh_target[0])
    result = selector.select(small_pool, target=bbh_target[0])
    mixture = result.extras["mixture"]
    assert sorted(mixture) == ["alpaca_seed", "bbh", "code_alpaca", "gsm8k"]
    assert sum(mixture.values()) == pytest.approx(1.0) and min(mixture.values()) > 0
    assert len(result) == result.extras["favoured_size"]
    chosen = np.asarray(result.dataset["source"])
    pool_sources = np.asarray(small_pool["source"])
    for source, ratio in result.extras["source_ratios"].items():  # each source contributes its learned share
        assert (chosen == source).sum() == round(ratio * (pool_sources == source).sum())
    assert result.flops == pytest.approx(result.extras["overhead_flops"])
    assert result.flops == pytest.approx(estimate, rel=0.15)
    assert result.extras["overhead_multiple_of_budget"] == pytest.approx(result.flops / 2e10)
    predictor = result.extras["loss_predictor"]
    assert len(predictor["sizes"]) == 5 and np.isfinite(result.extras["loss_predictor_loo_mse"])
    # the model handed in (as BudgetedTrainer does) is never modified
    assert all(torch.equal(before[name], value) for name, value in tiny_lm.state_dict().items())
    # an explicit size is honoured and split by the learned mixture
    sized = selector.choose(result.all_scores, 40, small_pool, result.extras)
    assert len(sized) == 40
    shares = {s: np.mean(pool_sources[sized] == s) for s in mixture}
    assert all(abs(shares[s] - mixture[s]) < 0.05 for s in mixture)


def test_budgeted_trainer_runs_cads_and_charges_it(tmp_path, small_pool, bbh_target, tokenizer, tiny_lm):
    from peft import LoraConfig

    from hf_cads import BudgetedTrainer, BudgetedTrainingArguments

    args = BudgetedTrainingArguments(
        output_dir=str(tmp_path / "out"),
        flop_budget=9e10,
        selector="cads-s",
        per_device_train_batch_size=4,
        selector_kwargs={"train_budget": 2e10, "outer_steps": 3, "max_length": 96, "show_progress": False},
        max_length=96,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    trainer = BudgetedTrainer(
        model=tiny_lm,
        args=args,
        train_dataset=small_pool,
        processing_class=tokenizer,
        selection_target=bbh_target[0],
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    assert trainer.selection_result.flops > 0
    assert trainer.flop_ledger.entries["selection"] == pytest.approx(trainer.selection_result.flops)
    assert "mixture" in trainer.selection_result.extras
    trainer.train()
    assert trainer.flop_ledger.spent <= 9e10


# -- bad input ---------------------------------------------------------------------------------
def test_train_budget_is_required_when_cads_runs_alone(small_pool, bbh_target, tokenizer, tiny_lm):
    # Without a budget to derive it from (BudgetedTrainer's flop_budget), CADS cannot plan.
    selector = get_selector("cads-e", model=tiny_lm, tokenizer=tokenizer, show_progress=False)
    with pytest.raises(ValueError, match="CADS needs train_budget="):
        selector.estimate_flops(small_pool, bbh_target[0])
    with pytest.raises(ValueError, match="CADS needs train_budget="):
        selector.select(small_pool, target=bbh_target[0])


def test_cads_s_needs_a_source_column_with_several_sources(small_pool, bbh_target, tokenizer, tiny_lm):
    selector = get_selector("cads-s", model=tiny_lm, tokenizer=tokenizer, train_budget=1e10, show_progress=False)
    with pytest.raises(ValueError, match="no 'source' column.*CADS-E"):
        selector.select(small_pool.remove_columns("source"), target=bbh_target[0])
    one_source = small_pool.filter(lambda row: row["source"] == "gsm8k")
    with pytest.raises(ValueError, match="one source only.*CADS-E"):
        selector.select(one_source, target=bbh_target[0])


def test_budget_too_small_for_the_pilot_runs(small_pool, bbh_target, tokenizer, tiny_lm):
    selector = get_selector("cads-e", model=tiny_lm, tokenizer=tokenizer, train_budget=1e8, show_progress=False)
    with pytest.raises(ValueError, match="too small for the pilot runs.*Raise train_budget"):
        selector.estimate_flops(small_pool, bbh_target[0])
    with pytest.raises(ValueError, match="too small for the pilot runs"):
        selector.select(small_pool, target=bbh_target[0])


@pytest.mark.parametrize(
    "options,message",
    [
        ({"granularity": "token"}, "granularity must be 'example'"),
        ({"num_sampling_points": 1}, "num_sampling_points must be >= 2"),
        ({"samples_per_step": 1}, "samples_per_step must be >= 2"),
        ({"alpha": 0}, "alpha must be a finite number > 0"),
        ({"policy_reward": "loss"}, "policy_reward must be 'auto', 'objective', 'validation' or 'transfer'"),
        ({"lr_s": 0}, "lr_s must be a finite number > 0"),
        ({"baseline": "mean"}, "baseline must be 'auto', 'moving_average' or 'step'"),
        ({"train_budget": -5}, "flop_budget must be a finite number > 0"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        get_selector("cads", **{"train_budget": 1e12, **options})


def test_registry_aliases():
    assert get_selector("cads-e", train_budget=1e12).config.granularity == "example"
    assert get_selector("CADS_S", train_budget=1e12).config.granularity == "source"
    assert isinstance(get_selector("cads", train_budget=1e12), CADSSelector)


# -- the algorithm finds real signal on small tensor tasks -------------------------------------
# Each claim is a property over several seeds (data and selector seed together), with a margin: one
# seed's value moves with the CPU's float rounding and the thread count.
SEEDS = (0, 1, 2)


def _digits_with_label_noise(seed, rows=600, noise=0.3):
    from sklearn.datasets import load_digits

    digits = load_digits()
    features, labels = (digits.data / 16).astype(np.float32), digits.target
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    pool_idx, val_idx = order[:rows], order[rows : rows + 100]
    pool_labels = labels[pool_idx].copy()
    noisy = rng.random(rows) < noise
    pool_labels[noisy] = (pool_labels[noisy] + rng.integers(1, 10, noisy.sum())) % 10  # always wrong
    pool = Dataset.from_dict({"x": features[pool_idx].tolist(), "y": pool_labels.tolist()})
    target = Dataset.from_dict({"x": features[val_idx].tolist(), "y": labels[val_idx].tolist()})
    return pool, target, noisy


def test_cads_e_keeps_clean_over_mislabelled_examples():
    # Measured on 5 seeds (Intel, 1 thread): keep-probability gap clean - noisy 0.24-0.33, noisy share
    # of the kept rows 0.17-0.23 against 0.30-0.34 in the pool.
    gaps, kept_noise, pool_noise = [], [], []
    for seed in SEEDS:
        pool, target, noisy = _digits_with_label_noise(seed)
        backend = TensorBackend(
            lambda: torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)),
            loss="cross_entropy",
        )
        selector = get_selector(
            "cads-e",
            backend=backend,
            train_budget=5e7,
            seed=seed,
            batch_size=32,
            learning_rate=3e-3,
            block_size=64,
            target_batch_size=100,
            outer_steps=400,
            lr_s=0.5,
            policy_reward="objective",
            show_progress=False,
        )
        estimate = selector.estimate_flops(pool, target)
        result = selector.select(pool, target=target)
        probabilities = result.all_scores
        gaps.append(probabilities[~noisy].mean() - probabilities[noisy].mean())
        kept_noise.append(noisy[result.indices].mean())
        pool_noise.append(noisy.mean())
        assert len(result) == result.extras["favoured_size"] == round(probabilities.sum())
        assert result.flops == pytest.approx(estimate, rel=0.1)
    assert np.mean(gaps) > 0.15 and min(gaps) > 0.05, gaps
    assert all(kept < share - 0.03 for kept, share in zip(kept_noise, pool_noise)), (kept_noise, pool_noise)
    assert np.mean(kept_noise) < np.mean(pool_noise) - 0.06, (kept_noise, pool_noise)


def test_cads_s_moves_the_mixture_toward_the_useful_source():
    # Measured on 5 seeds: the signal source's share is 0.75-0.82 with the whole-objective reward (pool: 0.5).
    shares = []
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        x = rng.uniform(-1, 1, 400)
        y = np.concatenate([np.sin(np.pi * x[:200]), rng.normal(0, 1, 200)])  # second source: labels are noise
        pool = Dataset.from_dict({"x": x.tolist(), "y": y.tolist(), "source": ["signal"] * 200 + ["junk"] * 200})
        x_val = rng.uniform(-1, 1, 100)
        target = Dataset.from_dict({"x": x_val.tolist(), "y": np.sin(np.pi * x_val).tolist()})
        backend = TensorBackend(
            lambda: torch.nn.Sequential(torch.nn.Linear(1, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
        )
        result = get_selector(
            "cads-s",
            backend=backend,
            train_budget=3e7,
            seed=seed,
            batch_size=32,
            learning_rate=1e-2,
            block_size=64,
            target_batch_size=100,
            outer_steps=200,
            policy_reward="objective",
            show_progress=False,
        ).select(pool, target=target)
        shares.append(result.extras["mixture"]["signal"])
        history = result.extras["history"]
        assert history[0]["mixture"] == pytest.approx([0.5, 0.5], abs=0.01) and history[-1]["sigma"] == pytest.approx(
            0.05
        )
    assert min(shares) > 0.6 and np.mean(shares) > 0.68, shares


def test_tensor_backend_bad_columns():
    pool = Dataset.from_dict({"features": [[0.0], [1.0]], "y": [0.0, 1.0]})
    backend = TensorBackend(lambda: torch.nn.Linear(1, 1))
    with pytest.raises(ValueError, match="no 'x' column.*feature_column"):
        get_selector("cads-e", backend=backend, train_budget=1e6).select(pool, target=pool)


# -- first-order lookahead ---------------------------------------------------------------------
def test_first_order_lookahead_matches_the_exact_step_and_charges_what_it_estimates():
    from hf_cads.selectors.cads import CADSSelectorConfig
    from hf_cads.selectors.cads.algorithm import AdamTheta
    from hf_cads.selectors.cads.outer_loop import ExampleMasks, step_masks

    pool, target, _ = _digits_with_label_noise(seed=0, rows=200)
    backend = TensorBackend(
        lambda: torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)),
        loss="cross_entropy",
    )
    flat = LossPredictor.fit([10, 200], [0.5, 2.0])
    for reward in ("objective", "transfer"):
        rewards = {}
        for lookahead in ("exact", "first_order"):
            config = CADSSelectorConfig(
                train_budget=1e7,
                block_size=32,
                samples_per_step=8,
                learning_rate=1e-4,
                policy_reward=reward,
                lookahead=lookahead,
            )
            task = backend.prepare(pool, target, config)
            masks, theta = ExampleMasks(task.num_rows, config), AdamTheta(task.parameters(), config.learning_rate)
            rng = np.random.default_rng(0)
            masks.start_step(rng, 0, 0.3)
            scored = step_masks(task, masks, theta, flat, np.arange(32), config, rng)  # the same masks: same draws
            rewards[lookahead] = np.asarray(scored.rewards) - scored.val_loss
        exact, first_order = rewards["exact"], rewards["first_order"]
        spread = np.abs(exact - exact.mean()).max()
        assert spread > 0 and np.abs(first_order - exact).max() < 0.1 * spread, (reward, exact, first_order)

    # CADS-S on a first-order step: the charged FLOPs are the planned ones, far below the exact lookahead's.
    pool = Dataset.from_dict(
        {"x": np.linspace(-1, 1, 120).tolist(), "y": np.zeros(120).tolist(), "source": ["a", "b", "c"] * 40}
    )
    backend = TensorBackend(
        lambda: torch.nn.Sequential(torch.nn.Linear(1, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    )
    spent = {}
    for lookahead in ("exact", "first_order"):
        selector = get_selector(
            "cads-s",
            backend=backend,
            train_budget=3e6,
            seed=0,
            batch_size=16,
            block_size=12,
            target_batch_size=20,
            samples_per_step=8,
            outer_steps=5,
            lookahead=lookahead,
            baseline="step",
            show_progress=False,
        )
        estimate = selector.estimate_flops(pool, pool)
        result = selector.select(pool, target=pool)
        assert result.extras["overhead_outer_flops"] == pytest.approx(selector.last_outcome.plan.outer_flops, rel=1e-9)
        assert result.flops == pytest.approx(estimate, rel=0.05)
        spent[lookahead] = result.extras["overhead_outer_flops"]
    assert spent["first_order"] < spent["exact"] / 2


# -- the easy case on language data ------------------------------------------------------------
def test_cads_prefers_the_pool_source_that_matches_the_target(data_dir):
    """GSM8K target, shared 4-source pool: with the language-model defaults (transfer reward, first-order
    lookahead, step baseline) CADS-S raises gsm8k's share and CADS-E keeps gsm8k rows more often.

    Measured (tiny randomly initialised Llama, full finetuning of the copy, 40 rows per source, 12 outer
    steps, Intel, 1 thread): CADS-S gsm8k share 0.60 / 0.60 / 0.52 (pool 0.23); CADS-E keep-probability
    of gsm8k rows 0.65 / 0.68 / 0.62 against 0.34-0.55 for every other source. The old default
    (whole-objective reward) left gsm8k at 0.21-0.23.
    """
    from hf_cads.data import build_multisource_pool, load_gsm8k
    from hf_cads.testing import tiny_causal_lm, tiny_tokenizer

    pool = build_multisource_pool(None, data_dir, max_per_source=40, max_chars=400, seed=0)
    target = load_gsm8k("test", data_dir).select(range(32))
    tokenizer = tiny_tokenizer(list(pool["text"]) + list(target["text"]), vocab_size=600)
    sources = np.asarray(pool["source"])
    pool_share = float(np.mean(sources == "gsm8k"))
    shares, gaps = [], []
    for seed in SEEDS:
        options = dict(
            tokenizer=tokenizer,
            train_budget=2e10,
            max_length=96,
            outer_steps=12,
            lora_r=0,
            seed=seed,
            show_progress=False,
        )
        mixture = (
            get_selector("cads-s", model=tiny_causal_lm(tokenizer, seed=seed), **options)
            .select(pool, target=target)
            .extras
        )
        assert mixture["run_options"]["policy_reward"] == "transfer" and mixture["run_options"]["baseline"] == "step"
        shares.append(mixture["mixture"]["gsm8k"])
        keep = (
            get_selector("cads-e", model=tiny_causal_lm(tokenizer, seed=seed), **options)
            .select(pool, target=target)
            .all_scores
        )
        others = [keep[sources == s].mean() for s in set(sources) - {"gsm8k"}]
        gaps.append(keep[sources == "gsm8k"].mean() - max(others))
    assert min(shares) > pool_share + 0.15 and np.mean(shares) > pool_share + 0.25, (shares, pool_share)
    assert min(gaps) > 0.0 and np.mean(gaps) > 0.05, gaps
