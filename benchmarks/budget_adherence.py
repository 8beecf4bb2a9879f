"""Budget adherence: FLOPs spent / budget for 5 budgets (goal 0.97-1.00, never above).

BudgetedTrainer with BM25 selection on the real shared-data pool, a LoRA Llama built from a config
(``--model`` takes any causal LM name instead, e.g. smollm2-135m-instruct), with and without
gradient accumulation.

    python benchmarks/budget_adherence.py [--model smollm2-135m-instruct]

Writes benchmarks/results/budget_adherence.{json,md}.
"""

from __future__ import annotations

import json
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import RESULTS, make_parser, write_markdown
from peft import LoraConfig

from hf_cads import BudgetedTrainer, BudgetedTrainingArguments
from hf_cads.data import build_multisource_pool, load_bbh_target
from hf_cads.testing import tiny_causal_lm, tiny_tokenizer


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--model", default=None, help="causal LM name/path (default: a 4-layer Llama from a config)")
    parser.add_argument("--budgets", default="2e10,5e10,1e11,2e11,4e11")
    options = parser.parse_args()
    pool = build_multisource_pool("boolean_expressions", max_per_source=150, max_chars=800, seed=0)
    validation, _ = load_bbh_target("boolean_expressions")
    budgets = [float(b) for b in options.budgets.split(",")]
    rows = []
    for accumulation in (1, 4):
        for budget in budgets:
            if options.model:
                from hf_cads.models import load_causal_lm

                model, tokenizer = load_causal_lm(options.model)
            else:
                tokenizer = tiny_tokenizer(pool["text"], vocab_size=1000)
                model = tiny_causal_lm(tokenizer, hidden_size=128, intermediate_size=344, num_hidden_layers=4)
            with tempfile.TemporaryDirectory() as out:
                args = BudgetedTrainingArguments(
                    output_dir=out,
                    flop_budget=budget,
                    selector="bm25",
                    selection_fraction=0.5,
                    per_device_train_batch_size=4,
                    gradient_accumulation_steps=accumulation,
                    max_length=128,
                    learning_rate=1e-3,
                    save_strategy="no",
                    report_to="none",
                    use_cpu=True,
                    disable_tqdm=True,
                    seed=0,
                )
                trainer = BudgetedTrainer(
                    model=model,
                    args=args,
                    train_dataset=pool,
                    processing_class=tokenizer,
                    selection_target=validation,
                    peft_config=LoraConfig(r=8, target_modules=["q_proj", "v_proj"]),
                )
                trainer.train()
            ledger = trainer.flop_ledger
            rows.append(
                {
                    "budget": budget,
                    "gradient_accumulation": accumulation,
                    "spent": ledger.spent,
                    "ratio": ledger.spent / budget,
                    "steps": trainer.state.global_step,
                    "selection_flops": ledger.entries["selection"],
                }
            )
            print(rows[-1], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "budget_adherence.json").write_text(
        json.dumps({"model": options.model or "llama-4L-128d (config)", "rows": rows}, indent=2)
    )
    lines = ["| budget | grad. accumulation | steps | spent / budget | goal 0.97-1.00 |", "|---|---|---|---|---|"]
    for r in rows:
        ok = 0.97 <= r["ratio"] <= 1.0
        lines.append(
            f"| {r['budget']:.1e} | {r['gradient_accumulation']} | {r['steps']} | {r['ratio']:.4f} | "
            f"{'yes' if ok else 'NO'} |"
        )
    write_markdown("budget_adherence", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
