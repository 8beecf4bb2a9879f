"""The language-model CADS setting shared by the cost, easy-case and landscape benchmarks.

SmolLM2-135M-Instruct + LoRA (r=8 on q/k/v/o) selecting from the shared 4-source pool
(``hf_cads.data.build_multisource_pool``: alpaca_seed, bbh, code_alpaca, gsm8k; ``per_source`` rows each)
for a target: GSM8K test questions (``"gsm8k"``) or a BBH task (its first examples). The training budget
``C`` is counted in steps of ``batch_size`` rows of the pool's 90th-percentile length.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

MODEL = "smollm2-135m-instruct"


@dataclass
class LMSetting:
    pool: Any
    validation: Any
    test: Any
    model: Any
    tokenizer: Any
    step_flops: float
    sources: list[str]

    def budget(self, steps: int) -> float:
        return steps * self.step_flops


def load_setting(
    target: str = "gsm8k",
    per_source: int = 60,
    validation_rows: int = 32,
    test_rows: int = 64,
    max_length: int = 128,
    batch_size: int = 8,
    max_chars: int = 600,
) -> LMSetting:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets
    import transformers

    from hf_cads.data import build_multisource_pool, load_bbh_examples, load_gsm8k
    from hf_cads.flops import FlopProfile
    from hf_cads.models import load_causal_lm
    from hf_cads.selectors.scoring import TokenBatcher

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    pool = build_multisource_pool(
        None if target == "gsm8k" else target, max_per_source=per_source, max_chars=max_chars, seed=0
    )
    examples = load_gsm8k("test") if target == "gsm8k" else load_bbh_examples(target)
    examples = examples.filter(lambda row: len(row["text"]) <= max_chars)
    validation = examples.select(range(validation_rows))
    test = examples.select(range(validation_rows, validation_rows + test_rows))
    model, tokenizer = load_causal_lm(MODEL)
    batcher = TokenBatcher(tokenizer, batch_size=batch_size, max_length=max_length, add_eos=True)
    lengths = [len(ids) for ids in batcher.tokenize(list(pool["text"]))]
    step_flops = FlopProfile.from_model(model).train_step_flops(batch_size, int(np.percentile(lengths, 90)))
    return LMSetting(pool, validation, test, model, tokenizer, float(step_flops), sorted(set(pool["source"])))
