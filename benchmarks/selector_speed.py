"""Examples/s and peak memory of every selector's scoring on the same pool, beside the peers a user
would reach for: rank-bm25 and bm25s for BM25 (identical top-k required), sentence-transformers'
own ``encode`` for embeddings, a plain per-example backward loop for LESS gradient features.
hf_cads selectors also report the FLOPs they charged, and so FLOP/s. The embedding selector runs with
MiniLM-L6 and with a small random GTR-shaped T5 sentence encoder (the reference's encoder family).

Each case runs in a fresh process so its peak resident memory (ru_maxrss) is its own.

    python benchmarks/selector_speed.py [--pool-size 2000] [--cases bm25,bm25-rank,...]

Writes benchmarks/results/selector_speed.{json,md}.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import resource
import time

from _common import RESULTS, make_parser, write_markdown

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TOP_K_FRACTION = 0.1


def load_inputs(pool_size: int):
    from hf_cads.data import build_multisource_pool, load_bbh_target

    per_source = max(1, pool_size // 4)
    pool = build_multisource_pool("boolean_expressions", max_per_source=per_source, max_chars=1200, seed=0)
    pool = pool.select(range(min(pool_size, len(pool))))
    validation, _ = load_bbh_target("boolean_expressions")
    return pool, validation


def top_k(scores, k):
    import numpy as np

    from hf_cads.selectors import top_k_indices

    return top_k_indices(np.asarray(scores, dtype=float), k).tolist()


LESS_OPTIONS = {"batch_size": 8, "max_length": 128, "warmup_epochs": 1, "projection_dim": 8192}
CADS_OPTIONS = {
    "batch_size": 1,
    "max_length": 128,
    "train_budget": 6e11,
    "A": 4.0,
    "num_sampling_points": 3,
    "outer_steps": 4,
    "samples_per_step": 2,
    "block_size": 4,
    "target_batch_size": 3,
}


def tiny_t5_sentence_encoder():
    """gtr-t5-base's structure (T5 encoder, mean pooling, bias-free Dense, Normalize) at a small size:
    4 gated-gelu layers of width 256 (d_kv 64), random weights. No T5 tokenizer ships offline, so
    MiniLM's WordPiece tokenizer stands in (similar token counts on English text)."""
    import tempfile

    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, T5Config, T5EncoderModel

    from hf_cads.models import resolve_encoder

    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder("all-minilm-l6-v2"))
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=256,
        d_ff=1024,
        d_kv=64,
        num_layers=4,
        num_heads=4,
        feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="tiny-t5-") as folder:
        T5EncoderModel(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        transformer = models.Transformer(folder, max_seq_length=256)
    dense = models.Dense(256, 256, bias=False, activation_function=torch.nn.Identity())
    return SentenceTransformer(
        modules=[transformer, models.Pooling(256, "mean"), dense, models.Normalize()], device="cpu"
    )


# -- cases: each returns (examples scored, seconds, top-k indices or None[, FLOPs charged]) --------
def case_selector(name: str, model_factory=None, **options):
    def run(pool, target, k):
        from hf_cads import get_selector

        model = model_factory() if model_factory is not None else None  # built outside the timed region
        selector = get_selector(name, model=model, show_progress=False, **options)
        if name in ("embedding",):
            selector._encoder()  # load outside the timed region
        if name in ("perplexity", "less"):
            selector._load_model()
        start = time.perf_counter()
        result = selector.select(pool, target=target, k=k)
        return len(pool), time.perf_counter() - start, result.indices.tolist(), result.flops

    return run


def case_lm_selector(name: str, **options):
    """A selector that scores with SmolLM2-135M, loaded (outside the timed region) and passed in."""

    def run(pool, target, k):
        from hf_cads import get_selector
        from hf_cads.models import load_causal_lm

        model, tokenizer = load_causal_lm("smollm2-135m-instruct")
        selector = get_selector(name, model=model, tokenizer=tokenizer, show_progress=False, **options)
        start = time.perf_counter()
        result = selector.select(pool, target=target, k=k)
        return len(pool), time.perf_counter() - start, result.indices.tolist()

    return run


def case_rank_bm25(pool, target, k):
    import numpy as np
    from rank_bm25 import BM25Okapi

    from hf_cads.selectors.bm25 import bm25_tokenize

    start = time.perf_counter()
    documents = [bm25_tokenize(t) for t in pool["text"]]
    index = BM25Okapi(documents)
    scores = np.mean([index.get_scores(bm25_tokenize(q)) for q in target["text"]], axis=0)
    return len(pool), time.perf_counter() - start, top_k(scores, k)


def case_bm25s(pool, target, k):
    import bm25s
    import numpy as np

    from hf_cads.selectors.bm25 import bm25_tokenize

    start = time.perf_counter()
    documents = [bm25_tokenize(t) for t in pool["text"]]
    vocabulary: dict[str, int] = {}
    ids = [[vocabulary.setdefault(w, len(vocabulary)) for w in d] for d in documents]
    retriever = bm25s.BM25(method="robertson", k1=1.5, b=0.75)
    retriever.index(bm25s.tokenization.Tokenized(ids=ids, vocab=vocabulary), show_progress=False)
    scores = np.mean(
        [retriever.get_scores([w for w in bm25_tokenize(q) if w in vocabulary]) for q in target["text"]], axis=0
    )
    return len(pool), time.perf_counter() - start, top_k(scores, k)


def case_st_encode(pool, target, k):
    import numpy as np

    from hf_cads.models import load_sentence_encoder

    encoder = load_sentence_encoder("all-minilm-l6-v2")
    start = time.perf_counter()
    pool_emb = encoder.encode(list(pool["text"]), batch_size=32, normalize_embeddings=True)
    target_emb = encoder.encode(list(target["text"]), batch_size=32, normalize_embeddings=True)
    centroid = target_emb.mean(axis=0)
    centroid /= np.linalg.norm(centroid)
    return len(pool), time.perf_counter() - start, top_k(pool_emb @ centroid, k)


CASES = {
    "random": case_selector("random"),
    "bm25 (hf_cads sparse)": case_selector("bm25"),
    "bm25 (rank-bm25)": case_rank_bm25,
    "bm25 (bm25s robertson)": case_bm25s,
    "embedding (hf_cads)": case_selector("embedding"),
    "embedding (hf_cads; tiny GTR-shaped T5 4L-256d)": case_selector(
        "embedding", model_factory=tiny_t5_sentence_encoder
    ),
    "embedding (sentence-transformers encode)": case_st_encode,
    "perplexity (SmolLM2-135M)": case_selector("perplexity", batch_size=8, max_length=256),
    # LESS: one warmup epoch on 5% of the rows, projection to 8192; the two cases differ only in how
    # per-example gradients are taken (identical features), so their top-k must agree.
    "less (SmolLM2-135M; batched gradients)": case_lm_selector("less", **LESS_OPTIONS),
    "less (SmolLM2-135M; per-example backward loop)": case_lm_selector("less", gradient_method="loop", **LESS_OPTIONS),
    # CADS optimises a subset for a training budget, so its cost follows the budget, not the pool:
    # here about one epoch over 10% of the rows (see benchmarks/cads_*.py for its overhead vs C).
    "cads-e (SmolLM2-135M)": case_lm_selector("cads-e", **CADS_OPTIONS),
    "cads-s (SmolLM2-135M)": case_lm_selector("cads-s", **CADS_OPTIONS),
}


def _child(name: str, pool_size: int, queue) -> None:
    try:
        _measure(name, pool_size, queue)
    except Exception as err:  # reported as the case's row, so the parent never waits on a dead child
        queue.put({"case": name, "error": f"{type(err).__name__}: {err}"})
        raise


def _measure(name: str, pool_size: int, queue) -> None:
    import torch

    torch.manual_seed(0)
    pool, target = load_inputs(pool_size)
    limit = int(os.environ.get("HF_CADS_BENCH_LM_ROWS", "256"))
    if "SmolLM2" in name:
        # The gradient-based selectors cost ~3x a forward per row: a quarter of the rows keeps them in minutes.
        rows = limit if "perplexity" in name else max(16, limit // 4)
        # The pool is ordered by source: a shuffled subset keeps every source (CADS-S needs several).
        pool = pool.shuffle(seed=0).select(range(min(rows, len(pool)))).flatten_indices()
    k = max(1, int(TOP_K_FRACTION * len(pool)))
    examples, seconds, indices, *charged = CASES[name](pool, target, k)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = {
        "case": name,
        "examples": examples,
        "seconds": seconds,
        "examples_per_s": examples / seconds,
        "peak_rss_mb": peak_mb,
        "top_k": indices,
    }
    if charged:
        row.update(flops=float(charged[0]), flops_per_s=float(charged[0]) / seconds)
    queue.put(row)


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--pool-size", type=int, default=2000)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    parser.add_argument("--merge", action="store_true", help="keep the other cases' rows of the last results file")
    options = parser.parse_args()
    context = mp.get_context("spawn")
    rows = []
    names = [c.strip() for c in options.cases.split(",") if c.strip()]
    unknown = [name for name in names if name not in CASES]
    if unknown:
        raise SystemExit(f"Unknown case(s) {unknown}; choose from {list(CASES)}")
    failed: list[dict] = []
    for name in names:
        queue = context.Queue()
        process = context.Process(target=_child, args=(name, options.pool_size, queue))
        process.start()
        row = queue.get()
        process.join()
        if "error" in row:
            print(f"{name:<42} FAILED: {row['error']}", flush=True)
            failed.append(row)
            continue
        rows.append(row)
        rate = f"  {row['flops_per_s']:.3g} FLOP/s" if row.get("flops_per_s") else ""
        print(
            f"{name:<42} {row['examples']:>6} ex  {row['examples_per_s']:>10.1f} ex/s{rate}  peak "
            f"{row['peak_rss_mb']:.0f} MB",
            flush=True,
        )
    reference = next((r["top_k"] for r in rows if r["case"] == "bm25 (rank-bm25)"), None)
    for r in rows:
        if r["case"].startswith("bm25") and reference is not None:
            r["identical_top_k_to_rank_bm25"] = r["top_k"] == reference
            r["top_k_overlap_with_rank_bm25"] = len(set(r["top_k"]) & set(reference)) / len(reference)
    less = {r["case"]: r["top_k"] for r in rows if r["case"].startswith("less")}
    if len(less) == 2:
        a, b = less.values()
        for r in rows:
            if r["case"].startswith("less"):
                r["identical_top_k_between_less_paths"] = a == b
    # The two MiniLM paths must agree; the random T5 encoder ranks differently by design.
    emb = {r["case"]: r["top_k"] for r in rows if r["case"].startswith("embedding") and "T5" not in r["case"]}
    if len(emb) == 2:
        a, b = emb.values()
        for r in rows:
            if r["case"] in emb:
                r["top_k_overlap_between_embedding_paths"] = len(set(a) & set(b)) / len(a)
    machine = {
        "cpu": platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_after": os.getloadavg()[0],
    }
    rows = [{k: v for k, v in r.items() if k != "top_k"} for r in rows]
    RESULTS.mkdir(parents=True, exist_ok=True)
    previous = RESULTS / "selector_speed.json"
    if options.merge and previous.is_file():
        # Keep the other cases' rows (and their checks) from the last run; replace the ones rerun here.
        ran = {r["case"] for r in rows}
        kept = [r for r in json.loads(previous.read_text())["rows"] if r["case"] not in ran]
        rows = sorted(kept + rows, key=lambda r: list(CASES).index(r["case"]) if r["case"] in CASES else len(CASES))
    previous.write_text(json.dumps({"machine": machine, "pool_size": options.pool_size, "rows": rows}, indent=2))
    lines = [
        "| case | examples | examples/s | FLOPs charged | FLOP/s | peak RSS (MB) | top-k check |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        check = ""
        if "identical_top_k_to_rank_bm25" in r:
            check = (
                f"identical to rank-bm25: {r['identical_top_k_to_rank_bm25']} "
                f"(overlap {r['top_k_overlap_with_rank_bm25']:.0%})"
            )
        elif "identical_top_k_between_less_paths" in r:
            check = f"identical top-k on both gradient paths: {r['identical_top_k_between_less_paths']}"
        elif "top_k_overlap_between_embedding_paths" in r:
            check = f"overlap between the two paths {r['top_k_overlap_between_embedding_paths']:.0%}"
        flops = (f"{r['flops']:.3g} | {r['flops_per_s']:.3g}") if r.get("flops_per_s") else "- | -"
        lines.append(
            f"| {r['case']} | {r['examples']} | {r['examples_per_s']:.1f} | {flops} | {r['peak_rss_mb']:.0f} | "
            f"{check} |"
        )
    lines += [f"| {r['case']} | - | FAILED | - | - | - | {r['error']} |" for r in failed]
    lines.append(f"\nMachine: {machine}; top-k = {TOP_K_FRACTION:.0%} of the pool.")
    write_markdown("selector_speed", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
