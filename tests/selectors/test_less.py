import numpy as np
import pytest
import torch
from datasets import Dataset, concatenate_datasets
from peft import LoraConfig, get_peft_model
from torch.utils.flop_counter import FlopCounterMode

from hf_cads import BudgetedTrainer, BudgetedTrainingArguments, LESSSelector, get_selector
from hf_cads.data import load_bbh_examples
from hf_cads.selectors.less.features import linear_schedule
from hf_cads.selectors.less.gradients import PerExampleGradients, adam_update_direction
from hf_cads.selectors.less.projection import (
    PROJECTION_CHUNK_ELEMENTS,
    RandomProjection,
    SparseProjection,
    make_projection,
)
from hf_cads.selectors.scoring import TokenBatcher
from hf_cads.testing import assert_close_at_scale, tiny_causal_lm

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Small and fast, but enough projection dimensions for the JL noise to stay below the signal.
FAST = dict(
    projection_dim=1024,
    max_length=64,
    warmup_fraction=0.2,
    warmup_epochs=2,
    learning_rate=1e-3,
    lora_r=8,
    lora_target_modules=ALL_LINEAR,
    show_progress=False,
)


def labelled(dataset, n, source, start=0):
    rows = dataset.select(range(start, start + n))
    return Dataset.from_dict({"text": rows["text"], "source": [source] * n})


@pytest.fixture(scope="module")
def task_pool(small_pool, data_dir):
    """30 dyck_languages + 30 boolean_expressions rows among 30 GSM8K and 30 Code Alpaca rows."""
    dyck = load_bbh_examples("dyck_languages", data_dir)
    boolean = load_bbh_examples("boolean_expressions", data_dir)
    parts = [
        labelled(dyck, 30, "dyck_languages"),
        labelled(boolean, 30, "boolean_expressions"),
        labelled(small_pool.filter(lambda r: r["source"] == "gsm8k"), 30, "gsm8k"),
        labelled(small_pool.filter(lambda r: r["source"] == "code_alpaca"), 30, "code_alpaca"),
    ]
    pool = concatenate_datasets(parts).shuffle(seed=0).flatten_indices()
    # Held-out examples of each task are the targets.
    targets = {"dyck_languages": dyck.select(range(200, 216)), "boolean_expressions": boolean.select(range(200, 216))}
    return pool, targets


def lora_model(tokenizer, seed=0):
    model = get_peft_model(
        tiny_causal_lm(tokenizer, seed=seed), LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"])
    )
    with torch.no_grad():  # fresh LoRA has B = 0, which would make every lora_A gradient zero
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.1)
    return model


# -- building blocks ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["linear", "vmap"])
def test_vectorised_per_example_gradients_equal_a_backward_loop(tokenizer, small_pool, method):
    model = lora_model(tokenizer)
    batcher = TokenBatcher(tokenizer, batch_size=6, max_length=48)
    texts = ["Q: 2 + 2?\nA: 4", "not ( True ) and False is", *small_pool["text"][:4]]
    batch = batcher.pad(batcher.tokenize(texts), range(6))
    assert (batch.attention_mask == 0).any(), "the batch must contain padding"
    assert PerExampleGradients(model).method == "linear"  # LoRA only: the batched linear path by default
    vectorised = PerExampleGradients(model, method=method)(batch.input_ids, batch.attention_mask)
    loop = PerExampleGradients(model, method="loop")(batch.input_ids, batch.attention_mask)
    assert vectorised.shape == (6, sum(p.numel() for p in model.parameters() if p.requires_grad))
    assert loop.abs().max() > 1e-3
    assert_close_at_scale(vectorised, loop, rel=1e-5, what=f"{method} vs loop gradients")
    # rows differ: these really are per-example gradients, not one batch gradient repeated
    assert not torch.allclose(vectorised[0], vectorised[1])


def test_trainable_parameters_outside_linear_layers_fall_back_to_vmap(tokenizer):
    model = lora_model(tokenizer)
    norm = next(p for name, p in model.named_parameters() if name.endswith("layers.0.input_layernorm.weight"))
    norm.requires_grad_(True)
    batcher = TokenBatcher(tokenizer, batch_size=3, max_length=24)
    batch = batcher.pad(batcher.tokenize(["a b c d e f", "true and false", "x"]), range(3))
    auto = PerExampleGradients(model)
    assert auto.method == "vmap"
    assert_close_at_scale(
        auto(batch.input_ids, batch.attention_mask),
        PerExampleGradients(model, method="loop")(batch.input_ids, batch.attention_mask),
        rel=1e-5,
    )
    with pytest.raises(ValueError, match="input_layernorm.*method='vmap'"):
        PerExampleGradients(model, method="linear")


def test_random_projection_is_seeded_chunked_and_norm_preserving():
    torch.manual_seed(0)
    vectors = torch.randn(6, 50_000)
    for kind in ("rademacher", "gaussian"):
        projection = RandomProjection(50_000, 512, seed=3, kind=kind)
        assert projection.num_chunks > 1 and projection.chunk_rows * 512 <= PROJECTION_CHUNK_ELEMENTS
        out = projection(vectors)
        assert torch.equal(out, RandomProjection(50_000, 512, seed=3, kind=kind)(vectors))
        # the matrix does not depend on how many vectors are projected at once
        assert_close_at_scale(torch.cat([projection(vectors[:2]), projection(vectors[2:])]), out, rel=1e-5)
        assert not torch.allclose(out, RandomProjection(50_000, 512, seed=4, kind=kind)(vectors))
        ratio = out.norm(dim=1) / vectors.norm(dim=1)
        assert torch.all((ratio > 0.85) & (ratio < 1.15)), ratio  # JL scaling keeps norms
    rademacher = RandomProjection(50_000, 512, seed=3).chunk(0)
    assert set(rademacher.unique().tolist()) == {-1.0, 1.0}
    assert projection.flops(6) == 2 * 6 * 50_000 * 512


def test_adam_update_direction_is_the_step_adam_takes():
    torch.manual_seed(0)
    parameter = torch.nn.Parameter(torch.randn(50))
    optimizer = torch.optim.Adam([parameter], lr=0.1, betas=(0.8, 0.95), eps=1e-6)
    for _ in range(3):
        parameter.grad = torch.randn(50)
        optimizer.step()
    state = optimizer.state[parameter]
    gradient = torch.randn(50)
    direction = adam_update_direction(
        gradient[None].clone(),
        state["exp_avg"],
        state["exp_avg_sq"],
        step=int(state["step"]),
        betas=(0.8, 0.95),
        eps=1e-6,
    )[0]
    before = parameter.detach().clone()
    parameter.grad = gradient
    optimizer.step()
    assert torch.allclose(before - parameter.detach(), 0.1 * direction, atol=1e-6)


# -- the selector ------------------------------------------------------------------------------
@pytest.mark.parametrize("projection", ["sparse", "gaussian"])
def test_less_ranks_the_matching_source_first_and_charges_measured_flops(task_pool, tokenizer, projection):
    pool, targets = task_pool
    selector = get_selector(
        "less", model=tiny_causal_lm(tokenizer), tokenizer=tokenizer, projection_type=projection, **FAST
    )
    estimate = selector.estimate_flops(pool, targets["dyck_languages"])
    with FlopCounterMode(display=False) as counter:
        result = selector.select(pool, target=targets["dyck_languages"], k=30)
    sources = np.array(pool["source"])
    assert np.mean(sources[result.indices] == "dyck_languages") >= 0.8
    mean_score = {s: result.all_scores[sources == s].mean() for s in set(sources)}
    assert max(mean_score, key=mean_score.get) == "dyck_languages", mean_score
    # charged = estimated before the work = counted by torch's FlopCounterMode
    assert result.flops == pytest.approx(estimate, rel=1e-9)
    breakdown = result.extras["flops_breakdown"]
    assert sum(breakdown.values()) == pytest.approx(result.flops)
    assert breakdown["warmup"] > 0 and breakdown["pool_gradients"] > breakdown["target_gradients"] > 0
    num_params, projected = result.extras["num_lora_params"], (len(pool) + 16) * 2  # rows x 2 checkpoints
    if projection == "sparse":
        # 4 signed non-zeros per gradient entry, applied by scatter-adds, which FlopCounterMode does not see
        assert breakdown["projection"] == 2 * 4 * num_params * projected
        assert result.flops - breakdown["projection"] == pytest.approx(counter.get_total_flops(), rel=0.01)
    else:  # a dense matmul, counted
        assert breakdown["projection"] == 2 * num_params * 1024 * projected
        assert result.flops == pytest.approx(counter.get_total_flops(), rel=0.01)
    assert len(result.extras["checkpoint_learning_rates"]) == 2


def test_several_subtasks_score_their_best_match(task_pool, tokenizer):
    pool, targets = task_pool
    target = concatenate_datasets(
        [targets["dyck_languages"].select(range(8)), targets["boolean_expressions"].select(range(8))]
    )
    result = get_selector(
        "less", model=tiny_causal_lm(tokenizer), tokenizer=tokenizer, subtask_column="task", **FAST
    ).select(pool, target=target, k=60)
    assert result.extras["subtasks"] == ["boolean_expressions", "dyck_languages"]
    per_subtask = result.extras["subtask_scores"]
    assert per_subtask.shape == (len(pool), 2)
    assert np.allclose(result.all_scores, per_subtask.max(axis=1))
    sources = np.array(pool["source"])
    # each sub-task's column ranks its own task's rows above every other source
    for column, task in enumerate(result.extras["subtasks"]):
        mean_score = {s: per_subtask[sources == s, column].mean() for s in set(sources)}
        assert max(mean_score, key=mean_score.get) == task, (task, mean_score)


def test_features_are_unit_norm_deterministic_and_per_row(task_pool, tokenizer):
    pool, _ = task_pool
    model = tiny_causal_lm(tokenizer)
    options = dict(FAST, projection_dim=256)

    def features(seed, rows=slice(0, 12)):
        selector = get_selector("less", model=model, tokenizer=tokenizer, seed=seed, **options)
        token_ids = selector.encode(pool)
        checkpoints, _ = selector.warmup(token_ids)
        return (
            selector,
            checkpoints,
            token_ids,
            selector.gradient_features(token_ids[rows], checkpoints[-1], optimizer_aware=True)[0],
        )

    selector, checkpoints, token_ids, first = features(seed=0)
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(first, features(seed=0)[3])
    assert not np.allclose(first, features(seed=1)[3], atol=1e-2)
    # a row's feature does not depend on which other rows are computed with it
    subset, _ = selector.gradient_features(token_ids[3:7], checkpoints[-1], optimizer_aware=True)
    assert np.allclose(subset, first[3:7], atol=1e-5)
    # target features (plain gradients) differ from the pool's Adam directions
    plain, _ = selector.gradient_features(token_ids[:12], checkpoints[-1], optimizer_aware=False)
    assert np.allclose(np.linalg.norm(plain, axis=1), 1.0, atol=1e-5) and not np.allclose(plain, first, atol=1e-2)


def test_interrupted_run_resumes_from_its_shards(task_pool, tokenizer, tmp_path):
    pool, targets = task_pool
    pool, target = pool.select(range(48)), targets["dyck_languages"].select(range(6))
    options = dict(FAST, projection_dim=256, shard_size=16, feature_dir=str(tmp_path / "features"))
    first = get_selector("less", model=tiny_causal_lm(tokenizer), tokenizer=tokenizer, **options).select(
        pool, target=target, k=10
    )
    assert first.extras["resumed_feature_files"] == 0
    stored = sorted((tmp_path / "features").rglob("*.npy"))
    assert len(stored) == 2 * (1 + 3)  # per checkpoint: target + 3 pool shards
    assert all(np.load(path).dtype == np.float16 for path in stored)
    # simulate a run killed during the last shard of the last checkpoint (the index is not marked complete)
    manifest = tmp_path / "features" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"complete": true', '"complete": false'))
    (tmp_path / "features" / "features" / "checkpoint-1" / "pool-00002.npy").unlink()
    (tmp_path / "features" / "warmup" / "epoch-1.pt").unlink()
    selector = get_selector("less", model=tiny_causal_lm(tokenizer), tokenizer=tokenizer, **options)
    computed = []
    original = selector.gradient_features
    selector.gradient_features = lambda ids, *a, **kw: computed.append(len(ids)) or original(ids, *a, **kw)
    second = selector.select(pool, target=target, k=10)
    assert computed == [16]  # only the missing shard
    assert second.extras["resumed_feature_files"] == len(stored) - 1
    assert_close_at_scale(second.all_scores, first.all_scores, rel=1e-4, what="LESS scores")
    assert second.flops == pytest.approx(first.flops)
    with pytest.raises(ValueError, match="another model, pool, warmup or projection.*projection_dim: 256 -> 128"):
        get_selector(
            "less", model=tiny_causal_lm(tokenizer), tokenizer=tokenizer, **dict(options, projection_dim=128)
        ).select(pool, target=target, k=10)


@pytest.mark.parametrize("wrapped", [False, True])
def test_callers_model_is_left_untouched(tokenizer, task_pool, wrapped):
    pool, targets = task_pool
    model = lora_model(tokenizer) if wrapped else tiny_causal_lm(tokenizer)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    ids = torch.tensor([tokenizer("not ( True ) and False is")["input_ids"]])
    logits_before = model(input_ids=ids).logits.detach()
    selector = get_selector("less", model=model, tokenizer=tokenizer, **dict(FAST, projection_dim=64, warmup_epochs=1))
    selector.select(pool.select(range(12)), target=targets["dyck_languages"].select(range(3)), k=4)
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert not any("lora" in name for name, _ in model.named_modules()) or wrapped
    # the selection model started from the function the caller's model computes (adapters merged)
    selection = selector.selection_model()
    with torch.no_grad():
        for name, value in selector._initial_lora.items():
            dict(selection.named_parameters())[name].copy_(value)
    assert torch.allclose(selection(input_ids=ids).logits, logits_before, atol=1e-5)


def test_budgeted_trainer_charges_less_warmup_and_features(tmp_path, task_pool, tokenizer):
    pool, targets = task_pool
    pool, target = pool.select(range(40)), targets["dyck_languages"].select(range(6))
    selection = get_selector(
        "less", model=tiny_causal_lm(tokenizer), tokenizer=tokenizer, seed=0, **FAST
    ).estimate_flops(pool, target)
    budget = selection + 2e9  # a handful of training steps of the tiny model
    args = BudgetedTrainingArguments(
        output_dir=str(tmp_path / "out"),
        flop_budget=budget,
        selector="less",
        selection_k=16,
        selector_kwargs=FAST,
        per_device_train_batch_size=4,
        max_length=64,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = BudgetedTrainer(
        model=tiny_causal_lm(tokenizer),
        args=args,
        train_dataset=pool,
        processing_class=tokenizer,
        selection_target=target,
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    ledger = trainer.flop_ledger
    assert trainer.selection_result.selector == "less" and len(trainer.selection_result) == 16
    assert ledger.entries["selection"] == pytest.approx(trainer.selection_result.flops) == pytest.approx(selection)
    stages = ledger.selection.stages
    assert stages["warmup"] > 0 and stages["pool_gradients"] > 0 and stages["projection"] > 0
    assert sum(stages.values()) == pytest.approx(ledger.entries["selection"])
    split = ledger.selection.flops_split  # pool part (warmup + pool features + their projection) and the target's part
    assert split["pool"] > 5 * split["target"] > 0 and split["pool"] + split["target"] == pytest.approx(
        ledger.entries["selection"]
    )
    assert split["pool"] > stages["warmup"] + stages["pool_gradients"]
    trainer.train()
    assert ledger.spent <= budget and ledger.entries["train"] > 0
    from hf_cads.records import record_from_trainer

    record = record_from_trainer(trainer, {"target_loss": 1.0})
    assert record.selection_split == split and record.selection_flops == pytest.approx(ledger.entries["selection"])


def test_a_one_step_warmup_still_trains_and_scores(task_pool, tokenizer):
    # 16 rows x warmup_fraction 0.05 = one warmup batch: a schedule rising from exactly 0 would give that
    # step (the whole epoch) learning rate 0, and every score would be 0.
    for total in range(1, 6):
        for ramp in range(0, total + 1):
            assert all(linear_schedule(step, total, ramp) > 0 for step in range(total)), (total, ramp)
    pool, targets = task_pool
    options = dict(FAST, warmup_fraction=0.05, warmup_epochs=1)
    result = get_selector("less", model=tiny_causal_lm(tokenizer), tokenizer=tokenizer, **options).select(
        pool.select(range(16)), target=targets["dyck_languages"].select(range(4)), k=4
    )
    assert len(result.extras["checkpoint_learning_rates"]) == 1 and result.extras["checkpoint_learning_rates"][0] > 0
    scores = np.asarray(result.all_scores)
    assert np.abs(scores).max() > 0 and np.ptp(scores) > 0


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [0, -8, 2.5])
def test_projection_dim_must_be_positive(dim):
    with pytest.raises(ValueError, match="projection_dim must be a positive integer"):
        get_selector("less", projection_dim=dim)
    with pytest.raises(ValueError, match="projection dimension must be a positive integer"):
        RandomProjection(100, dim)


def test_model_without_lora_compatible_modules(tokenizer, task_pool):
    pool, targets = task_pool
    selector = get_selector(
        "less", model=tiny_causal_lm(tokenizer), tokenizer=tokenizer, lora_target_modules=["c_attn"]
    )
    with pytest.raises(ValueError, match=r"no LoRA-compatible \(linear\) layers.*q_proj"):
        selector.select(pool, target=targets["dyck_languages"], k=5)
    with pytest.raises(TypeError, match="transformers causal LM"):
        LESSSelector(model=torch.nn.Embedding(10, 4), tokenizer=tokenizer).selection_model()


def test_target_without_the_subtask_column(tokenizer, task_pool):
    pool, targets = task_pool
    selector = get_selector("less", model=tiny_causal_lm(tokenizer), tokenizer=tokenizer, subtask_column="category")
    with pytest.raises(ValueError, match="subtask_column='category' is not a column of the target"):
        selector.select(pool, target=targets["dyck_languages"], k=5)


def test_feature_dir_of_something_else_is_refused(tokenizer, task_pool, tmp_path):
    pool, targets = task_pool
    (tmp_path / "notes.txt").write_text("mine")
    selector = get_selector(
        "less",
        model=tiny_causal_lm(tokenizer),
        tokenizer=tokenizer,
        feature_dir=str(tmp_path),
        **dict(FAST, projection_dim=64),
    )
    with pytest.raises(ValueError, match="not empty and was not written by LESS"):
        selector.select(pool.select(range(8)), target=targets["dyck_languages"].select(range(2)), k=2)


@pytest.mark.parametrize(
    "option",
    [
        {"warmup_fraction": 0},
        {"warmup_fraction": 1.5},
        {"warmup_epochs": 0},
        {"projection_type": "orthogonal"},
        {"learning_rate": -1.0},
        {"lora_target_modules": []},
    ],
)
def test_bad_options(option):
    with pytest.raises(ValueError, match=next(iter(option))):
        get_selector("less", **option)


def test_less_matching_holds_over_seeds(task_pool, tokenizer):
    # Measured on 5 seeds (model and selector seed together): every seed's top 30 is all dyck_languages.
    pool, targets = task_pool
    sources = np.array(pool["source"])
    for seed in (0, 1, 2):
        selector = get_selector(
            "less", model=tiny_causal_lm(tokenizer, seed=seed), tokenizer=tokenizer, **dict(FAST, seed=seed)
        )
        result = selector.select(pool, target=targets["dyck_languages"], k=30)
        assert np.mean(sources[result.indices] == "dyck_languages") >= 0.8, seed
        mean_score = {s: result.all_scores[sources == s].mean() for s in set(sources)}
        assert max(mean_score, key=mean_score.get) == "dyck_languages", (seed, mean_score)


# -- projections ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lora_gradients(tokenizer, small_pool, bbh_target):
    """Exact per-example LoRA gradients of 64 pool rows and 8 target rows (tiny Llama, all linear layers)."""
    selector = get_selector(
        "less",
        model=tiny_causal_lm(tokenizer),
        tokenizer=tokenizer,
        max_length=64,
        lora_target_modules=ALL_LINEAR,
        projection_dim=4096,
        show_progress=False,
    )
    model = selector.selection_model()
    with torch.no_grad():  # trained-looking adapters: fresh LoRA has B = 0
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(1))
    gradients = PerExampleGradients(model)

    def exact(token_ids):
        out = torch.zeros(len(token_ids), gradients.num_params)
        for batch in selector._batcher().batches(token_ids):
            out[torch.as_tensor(batch.rows)] = gradients(batch.input_ids, batch.attention_mask).float()
        return out

    pool = small_pool.shuffle(seed=0).select(range(64))
    return exact(selector.encode(pool)), exact(selector.encode(bbh_target[1].select(range(8)), "target"))


def test_sparse_projection_keeps_similarities_and_the_selection(lora_gradients, benchmark_script):
    projection_agreement = benchmark_script("less_speed").projection_agreement  # the benchmark's measure
    pool, target = lora_gradients
    dim = (
        4096  # a quarter of the 16,384 LoRA parameters, as 8192 is ~1/112 of SmolLM2's (see benchmarks/less_speed.py)
    )
    overlaps = []
    for seed in range(4):
        sparse = SparseProjection(pool.shape[1], dim, seed=seed)
        agreement = projection_agreement(
            pool, target, sparse, RandomProjection(pool.shape[1], dim, seed=100 + seed, kind="gaussian")
        )
        dense = projection_agreement(
            pool,
            target,
            RandomProjection(pool.shape[1], dim, seed=seed, kind="gaussian"),
            RandomProjection(pool.shape[1], dim, seed=100 + seed, kind="gaussian"),
        )
        assert agreement["cosine_correlation"] >= 0.95, (seed, agreement)
        # as faithful as a dense Gaussian matrix of the same size
        assert agreement["cosine_correlation"] >= dense["cosine_correlation"] - 0.01, (seed, agreement, dense)
        overlaps.append(agreement["top_overlap"])
    # top-5% of 64 rows is 3 rows, so one near-tie moves a seed's overlap by a third: judge the mean
    assert np.mean(overlaps) >= 0.75, overlaps


def test_sparse_projection_is_seeded_unbiased_and_matrix_free():
    torch.manual_seed(0)
    vectors = torch.randn(6, 50_000)
    projection = SparseProjection(50_000, 512, seed=3, nonzeros=4)
    out = projection(vectors)
    assert torch.equal(out, SparseProjection(50_000, 512, seed=3, nonzeros=4)(vectors))
    assert torch.allclose(torch.cat([projection(vectors[:2]), projection(vectors[2:])]), out, atol=1e-5)
    assert not torch.allclose(out, SparseProjection(50_000, 512, seed=4)(vectors))
    positions, signs = projection.hashes()
    assert positions.shape == signs.shape == (4, 50_000)
    # one non-zero per block of 128 outputs, so a coordinate's 4 targets are distinct
    assert torch.equal(positions // 128, torch.arange(4)[:, None].expand(4, 50_000))
    assert set(signs.unique().tolist()) == {-0.5, 0.5}
    # it is the linear map whose columns those hashes describe
    matrix = torch.zeros(512, 50_000)
    for block in range(4):
        matrix[positions[block], torch.arange(50_000)] += signs[block]
    assert torch.allclose(out, vectors @ matrix.T, atol=1e-4)
    ratio = out.norm(dim=1) / vectors.norm(dim=1)
    assert torch.all((ratio > 0.85) & (ratio < 1.15)), ratio
    assert projection.flops(6) == 2 * 6 * 4 * 50_000
    assert make_projection("sparse", 10, 4, nonzeros=2).describe()["nonzeros"] == 2
    with pytest.raises(ValueError, match="nonzeros must be an integer"):
        SparseProjection(100, 8, nonzeros=9)


# -- the feature index ----------------------------------------------------------------------------
def count_feature_calls(selector):
    computed = []
    original = selector.gradient_features
    selector.gradient_features = lambda ids, *a, **kw: computed.append(len(ids)) or original(ids, *a, **kw)
    return computed


def test_a_second_target_reuses_the_pool_features(task_pool, tokenizer, tmp_path):
    pool, targets = task_pool
    dyck, boolean = targets["dyck_languages"].select(range(6)), targets["boolean_expressions"].select(range(6))
    options = dict(FAST, projection_dim=256, shard_size=48, feature_dir=str(tmp_path / "index"))
    first = get_selector("less", model=tiny_causal_lm(tokenizer), tokenizer=tokenizer, **options).select(
        pool, target=dyck, k=30
    )
    assert not first.extras["feature_index"]["reused"]
    selector = get_selector("less", model=tiny_causal_lm(tokenizer), tokenizer=tokenizer, **options)
    estimate = selector.estimate_flops(pool, boolean)
    computed = count_feature_calls(selector)
    second = selector.select(pool, target=boolean, k=30)
    assert computed == [6, 6]  # the target's rows at each of the 2 checkpoints, no pool row
    assert second.flops == pytest.approx(estimate, rel=1e-9)
    assert second.flops <= 0.1 * first.flops
    breakdown = second.extras["flops_breakdown"]
    assert breakdown["warmup"] == breakdown["pool_gradients"] == 0 and breakdown["target_gradients"] > 0
    index = second.extras["feature_index"]
    assert index["reused"] and index["dir"] == options["feature_dir"]
    original = first.extras["flops_breakdown"]
    assert index["original_flops"]["pool_gradients"] == pytest.approx(original["pool_gradients"])
    assert index["original_flops"]["warmup"] == pytest.approx(original["warmup"])
    # what was reused: warmup + pool gradients and projection (the first run's minus its target part)
    pool_projection = original["projection"] - breakdown["projection"]
    assert index["reused_flops"] == pytest.approx(original["warmup"] + original["pool_gradients"] + pool_projection)
    # the split counts the reused pool features at what they cost: the same as the first selection's pool part
    assert second.extras["flops_split"]["pool"] == pytest.approx(first.extras["flops_split"]["pool"], rel=1e-9)
    assert second.extras["flops_split"]["target"] == pytest.approx(second.flops, rel=1e-9)
    assert first.extras["flops_split"]["pool"] == pytest.approx(index["reused_flops"], rel=1e-9)
    # several targets in one pass, without an index: the same scores; the shared work is charged once
    both = get_selector(
        "less", model=tiny_causal_lm(tokenizer), tokenizer=tokenizer, **dict(options, feature_dir=None)
    ).select_many(pool, {"dyck": dyck, "boolean": boolean}, k=30)
    for single, name in ((first, "dyck"), (second, "boolean")):
        scale = np.abs(single.all_scores).max()
        assert np.allclose(both[name].all_scores, single.all_scores, rtol=0, atol=1e-4 * scale), name
        assert list(both[name].indices) == list(single.indices), name
    assert both["dyck"].flops == pytest.approx(first.flops, rel=1e-9)
    assert both["boolean"].flops == pytest.approx(second.flops, rel=1e-9)
    assert both["boolean"].extras["feature_index"]["shared_with"] == "dyck"
    sources = np.array(pool["source"])
    assert np.mean(sources[both["boolean"].indices] == "boolean_expressions") > np.mean(
        sources[both["dyck"].indices] == "boolean_expressions"
    )


def test_an_index_of_another_model_or_projection_is_refused(task_pool, tokenizer, tmp_path):
    pool, targets = task_pool
    pool, target = pool.select(range(16)), targets["dyck_languages"].select(range(2))
    options = dict(FAST, projection_dim=64, warmup_epochs=1, feature_dir=str(tmp_path / "index"))
    get_selector("less", model=tiny_causal_lm(tokenizer), tokenizer=tokenizer, **options).select(
        pool, target=target, k=4
    )
    other_model = get_selector("less", model=tiny_causal_lm(tokenizer, seed=1), tokenizer=tokenizer, **options)
    with pytest.raises(ValueError, match=r"another model, pool, warmup or projection \(model: "):
        other_model.select(pool, target=target, k=4)
    with pytest.raises(ValueError, match="projection.type: 'sparse' -> 'gaussian'"):
        get_selector(
            "less", model=tiny_causal_lm(tokenizer), tokenizer=tokenizer, **dict(options, projection_type="gaussian")
        ).select(pool, target=target, k=4)
    # with cache_dir and no feature_dir each (model, pool, projection) gets its own index folder
    cached = dict(options, feature_dir=None, cache_dir=str(tmp_path / "cache"))
    for projection_type in ("sparse", "rademacher"):
        get_selector(
            "less",
            model=tiny_causal_lm(tokenizer),
            tokenizer=tokenizer,
            **dict(cached, projection_type=projection_type),
        ).select(pool, target=target, k=4)
    assert len(list((tmp_path / "cache").glob("less-features-*"))) == 2


def test_corrupt_or_partial_index_files_are_recomputed(task_pool, tokenizer, tmp_path, caplog):
    pool, targets = task_pool
    pool, target = pool.select(range(48)), targets["dyck_languages"].select(range(6))
    options = dict(FAST, projection_dim=256, shard_size=16, feature_dir=str(tmp_path / "index"))
    first = get_selector("less", model=tiny_causal_lm(tokenizer), tokenizer=tokenizer, **options).select(
        pool, target=target, k=10
    )
    features = tmp_path / "index" / "features"
    (features / "checkpoint-0" / "pool-00000.npy").write_bytes(b"\x93NUMPY garbage")  # unreadable
    partial = features / "checkpoint-1" / "pool-00001.npy"
    partial.write_bytes(partial.read_bytes()[:200])  # truncated
    np.save(features / "checkpoint-1" / "pool-00002.npy", np.full((16, 256), 3.0, dtype=np.float16))  # not unit-norm
    np.save(features / "checkpoint-0" / "pool-00002.npy", np.zeros((15, 256), dtype=np.float16))  # wrong shape
    (tmp_path / "index" / "warmup" / "epoch-0.pt").write_bytes(b"not a checkpoint")
    selector = get_selector("less", model=tiny_causal_lm(tokenizer), tokenizer=tokenizer, **options)
    computed = count_feature_calls(selector)
    with caplog.at_level("WARNING"):
        second = selector.select(pool, target=target, k=10)
    assert sorted(computed) == [16, 16, 16, 16]  # the four bad shards, nothing else
    assert caplog.text.count("recomputing them") == 4 and "retraining that epoch" in caplog.text
    scale = np.abs(first.all_scores).max()
    assert np.allclose(second.all_scores, first.all_scores, rtol=0, atol=1e-4 * scale)
    # recomputed work is charged (the rewarmed epoch and four shards), what was reused is not
    breakdown, original = second.extras["flops_breakdown"], first.extras["flops_breakdown"]
    assert 0 < breakdown["warmup"] < original["warmup"]
    assert breakdown["pool_gradients"] == pytest.approx(original["pool_gradients"] * 4 / 6, rel=0.3)
    # the repaired index is trusted again
    third_selector = get_selector("less", model=tiny_causal_lm(tokenizer), tokenizer=tokenizer, **options)
    recomputed = count_feature_calls(third_selector)
    third = third_selector.select(pool, target=target, k=10)
    assert recomputed == []
    assert third.extras["flops_breakdown"]["pool_gradients"] == 0 and third.extras["flops_breakdown"]["warmup"] == 0


def test_projection_dim_larger_than_the_gradients_is_an_error(task_pool, tokenizer):
    pool, targets = task_pool
    selector = get_selector(
        "less", model=tiny_causal_lm(tokenizer), tokenizer=tokenizer, **dict(FAST, projection_dim=20_000)
    )
    with pytest.raises(
        ValueError,
        match=r"projection_dim=20000 is larger than the 16,384 LoRA gradient entries.*projection_dim <= 16384",
    ):
        selector.estimate_flops(pool, targets["dyck_languages"])
    with pytest.raises(ValueError, match="projection_dim=20000 is larger"):
        selector.select(pool, target=targets["dyck_languages"], k=5)
