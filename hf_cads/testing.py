"""Small real objects for tests and examples: a tokenizer trained on the spot and tiny random models.

They need no download, so tests stay offline and fast while exercising the real code paths.

Example:
    >>> from hf_cads.testing import tiny_tokenizer, tiny_causal_lm
    >>> tokenizer = tiny_tokenizer(["the cat sat on the mat", "2 + 2 = 4"])
    >>> model = tiny_causal_lm(tokenizer)
    >>> model.config.num_hidden_layers
    2
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tiny_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts``, with pad/eos and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama_config(vocab_size: int, **overrides: Any) -> Any:
    from transformers import LlamaConfig

    options = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        attn_implementation="eager",
        tie_word_embeddings=False,
    )
    options.update(overrides)
    return LlamaConfig(**options)


def tiny_causal_lm(tokenizer: Any = None, vocab_size: int | None = None, seed: int = 0, **overrides: Any) -> Any:
    """A 2-layer randomly initialised ``LlamaForCausalLM`` (eager attention, so FLOPs are measurable)."""
    import torch
    from transformers import LlamaForCausalLM

    size = vocab_size or len(tokenizer)
    config = tiny_llama_config(size, **overrides)
    if tokenizer is not None:
        config.pad_token_id = tokenizer.pad_token_id
        config.eos_token_id = tokenizer.eos_token_id
        config.bos_token_id = tokenizer.bos_token_id
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def assert_close_at_scale(actual: Any, expected: Any, rel: float = 1e-5, what: str = "values") -> None:
    """Assert that two float arrays agree to ``rel`` times the largest ``|expected|``.

    Scores computed with other thread counts, process splits or CPUs (Intel and AMD round
    differently) agree to a fraction of their scale, not element by element: a relative tolerance
    per element fails on entries near zero, where only rounding noise is left.

    Example:
        >>> assert_close_at_scale([1.0, 1e-9], [1.0, 2e-9], rel=1e-6)
    """
    import numpy as np

    def as_array(values: Any) -> Any:
        values = values.detach().cpu().numpy() if hasattr(values, "detach") else values
        return np.asarray(values, dtype=np.float64)

    actual, expected = as_array(actual), as_array(expected)
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shapes differ, {actual.shape} vs {expected.shape}")
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    worst = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    if not worst <= rel * scale:
        raise AssertionError(f"{what}: largest difference {worst:.3g} exceeds {rel:g} x scale {scale:.3g}")
