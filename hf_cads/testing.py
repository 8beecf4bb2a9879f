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

from typing import Any, Iterable

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
