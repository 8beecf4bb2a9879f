"""Perplexity-scores a real pool with a saved model, caching shard by shard (used by test_resume.py,
which kills this process mid-run and runs it again).

    python tests/scripts/score_pool.py --model DIR --cache-dir DIR [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARD_SIZE = 4
K = 24


def score(model_dir: str, cache_dir: str | None) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_cads import get_selector
    from hf_cads.data import build_multisource_pool

    pool = build_multisource_pool("boolean_expressions", max_per_source=40, max_chars=600, seed=0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    selector = get_selector(
        "perplexity",
        model=model,
        tokenizer=tokenizer,
        shard_size=SHARD_SIZE,
        max_length=256,
        cache_dir=cache_dir,
        show_progress=False,
    )
    result = selector.select(pool, k=K)
    return {
        "indices": result.indices.tolist(),
        "scores": result.all_scores.tolist(),
        "flops": result.flops,
        "cache": result.extras.get("cache"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    result = score(args.model, args.cache_dir)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(result, handle)


if __name__ == "__main__":
    main()
