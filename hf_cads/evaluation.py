"""Exact-match accuracy of greedy answers, for targets whose answers are a few tokens long.

BBH tasks such as ``boolean_expressions`` (``True``/``False``) or the multiple-choice ones
(``(A)``...) are judged by exact match: the model reads ``Q: <question>\\nA:`` (the layout the pool
and the target texts use, see :func:`hf_cads.data.format_qa`) and must produce the answer. Decoding
is greedy and stops after one token more than the longest answer needs, so a run costs a handful
of forward passes per batch and its FLOPs (prefill plus KV-cached steps,
:meth:`hf_cads.flops.FlopProfile.generation_flops`) are exact. Long-answer targets (GSM8K's
worked solutions) are left to the loss: :func:`answers_fit` says whether exact match applies.

Example:
    >>> from hf_cads.evaluation import exact_match  # doctest: +SKIP
    >>> result = exact_match(model, tokenizer, test.select(range(32)), max_new_tokens=8)  # doctest: +SKIP
    >>> result.accuracy, result.flops  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .data import format_qa, prompt_answer_pairs
from .flops import FlopProfile
from .selectors.scoring import TokenBatcher

QUESTION_ANSWER_COLUMNS = (("input", "target"), ("question", "answer"))
"""Column pairs holding a question and its reference answer (BBH, GSM8K)."""


@dataclass
class ExactMatchResult:
    """Accuracy of greedy answers: ``correct`` of ``total``, the decoded ``predictions`` and the FLOPs spent."""

    accuracy: float
    correct: int
    total: int
    flops: float
    predictions: list[str]


def question_answer_pairs(dataset: Any, tokenizer: Any = None) -> tuple[list[str], list[str]]:
    """``(questions, answers)`` from a dataset with ``input``/``target`` or ``question``/``answer`` columns
    (questions as bare text, prompted as ``Q: ...\nA:``), or ``(prompts, answers)`` of prompt-completion
    and chat data: the prompt rendered as in training and the last completion."""
    for question, answer in QUESTION_ANSWER_COLUMNS:
        if question in dataset.column_names and answer in dataset.column_names:
            return [str(q) for q in dataset[question]], [str(a) for a in dataset[answer]]
    pairs = prompt_answer_pairs(dataset, tokenizer)
    if pairs is not None:
        return pairs
    raise ValueError(
        "Exact match needs question and answer columns "
        f"({' or '.join('/'.join(p) for p in QUESTION_ANSWER_COLUMNS)}), "
        "or prompt/completion or messages; "
        f"the target test set has {dataset.column_names}. Set exact_match_max_new_tokens: 0 to skip exact match."
    )


def normalise_answer(text: str) -> str:
    """The first line of a generated answer, without surrounding spaces or a final full stop."""
    first_line = text.strip().split("\n", 1)[0].strip()
    return first_line[:-1].rstrip() if first_line.endswith(".") else first_line


def answer_token_counts(tokenizer: Any, answers: Sequence[str]) -> list[int]:
    """Tokens each answer takes after ``A:`` (with its leading space, as the model would write it)."""
    return [len(ids) for ids in tokenizer([" " + a.strip() for a in answers], add_special_tokens=False)["input_ids"]]


def answers_fit(tokenizer: Any, answers: Sequence[str], max_new_tokens: int) -> bool:
    """Whether every answer is short enough for exact match with ``max_new_tokens`` generated tokens
    (one is kept to see that the answer ended)."""
    return max_new_tokens > 1 and len(answers) > 0 and max(answer_token_counts(tokenizer, answers)) < max_new_tokens


def exact_match(
    model: Any,
    tokenizer: Any,
    dataset: Any,
    *,
    max_new_tokens: int = 8,
    batch_size: int = 8,
    max_length: int = 512,
    show_progress: bool = False,
    progress_delay: float = 0.0,
) -> ExactMatchResult:
    """Greedy-decode an answer to every row of ``dataset`` and compare it with the reference.

    A prediction is correct when its first line (stripped, final full stop dropped) equals the
    reference answer exactly. Decoding stops after ``longest answer + 1`` tokens (at most
    ``max_new_tokens``) or when every row of a batch has produced EOS. Prompts longer than
    ``max_length`` keep their end (the question's last part and ``A:``). With ``show_progress``, a bar
    appears once decoding has run ``progress_delay`` seconds.

    Raises:
        ValueError: the dataset has no question/answer columns, or an answer needs
            ``max_new_tokens`` tokens or more (use the loss for long-answer targets).
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    questions, answers = question_answer_pairs(dataset, tokenizer)
    rendered = prompt_answer_pairs(dataset, tokenizer) is not None and not any(
        q in dataset.column_names and a in dataset.column_names for q, a in QUESTION_ANSWER_COLUMNS
    )
    if not answers_fit(tokenizer, answers, max_new_tokens):
        longest = max(answer_token_counts(tokenizer, answers)) if answers else 0
        raise ValueError(
            f"Exact match with max_new_tokens={max_new_tokens} needs answers shorter than that, but the longest takes "
            f"{longest} tokens; raise max_new_tokens or judge this target by its loss only."
        )
    new_tokens = min(max_new_tokens, max(answer_token_counts(tokenizer, answers)) + 1)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError(
            "The tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token before exact match."
        )
    keep = max(2, max_length - new_tokens)
    # Your own prompt-completion / chat data is prompted exactly as it was trained on.
    encoded = tokenizer(questions if rendered else [format_qa(q, "").rstrip() for q in questions])["input_ids"]
    prompts = [list(ids)[-keep:] for ids in encoded]
    batcher = TokenBatcher(tokenizer, batch_size=batch_size, max_length=max_length)
    profile = FlopProfile.from_model(model)
    generation = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=new_tokens,
        pad_token_id=pad_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    device = next(model.parameters()).device
    predictions = [""] * len(prompts)
    flops = 0.0
    was_training = model.training
    model.eval()
    try:
        with (
            torch.no_grad(),
            tqdm(
                total=len(prompts), desc="exact match", unit="row", disable=not show_progress, delay=progress_delay
            ) as bar,
        ):
            for rows in batcher.plan(prompts):
                # Left padding: every prompt ends where generation starts.
                batch = tokenizer.pad(
                    {"input_ids": [prompts[r] for r in rows]}, padding_side="left", return_tensors="pt"
                )
                input_ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
                output = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=generation)
                generated = output[:, input_ids.shape[1] :]
                flops += profile.generation_flops(len(rows), int(input_ids.shape[1]), int(generated.shape[1]))
                for row, text in zip(rows, tokenizer.batch_decode(generated, skip_special_tokens=True)):
                    predictions[row] = normalise_answer(text)
                bar.update(len(rows))
    finally:
        model.train(was_training)
    correct = int(np.sum([p == a.strip() for p, a in zip(predictions, answers)]))
    return ExactMatchResult(correct / len(answers), correct, len(answers), flops, predictions)


__all__ = [
    "ExactMatchResult",
    "answer_token_counts",
    "answers_fit",
    "exact_match",
    "normalise_answer",
    "question_answer_pairs",
]
