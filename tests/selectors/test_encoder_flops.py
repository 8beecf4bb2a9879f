"""The embedding selector's FLOP charge is exact for every encoder family users pick for embeddings.

Each case builds a tiny random model of the family, saves it with a sentence-transformers stack
(Transformer -> Pooling [-> Dense -> Normalize]) in a local folder, loads it back (no Hub) with eager
attention, and compares the selector's charged FLOPs with torch's FlopCounterMode around the same
work: the selector's own scoring (several length-sorted batches), and SentenceTransformer.encode of
the same rows in one batch. The charge counts the same matmuls, so the tolerance (0.1%) is far
tighter than the 1% goal: a missed BERT pooler (0.3% here) or Dense head fails it.
"""

import pytest
import torch
from datasets import Dataset
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, LlamaConfig, MPNetConfig, Qwen2Config, T5Config

from hf_cads import get_selector
from hf_cads.flops import FlopProfile
from hf_cads.testing import tiny_tokenizer

POOL = [
    "the cat sat on the mat",
    "2 + 2 = 4, and 3 + 5 = 8; what is 7 + 6?",
    "short",
    "True and not False or ( False and True ) is",
    "def add(a, b): return a + b",
    "a longer row about sorting lists of numbers in python with a key function and reverse order",
]
TARGET = ["not ( True ) and ( True ) is", "False or not True is"]

FAMILIES = {
    # MiniLM-style BERT (BertModel keeps its pooler: one dense on the first token per sequence).
    "bert": (
        lambda vocab: BertConfig(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=128,
        ),
        "mean",
        None,
    ),
    "mpnet": (
        lambda vocab: MPNetConfig(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=130,
        ),
        "mean",
        None,
    ),
    # The reproduction: v1.0 DenseReluDense, d_kv (64) != d_model / heads (16).
    "t5-v1.0": (
        lambda vocab: T5Config(
            vocab_size=vocab, d_model=64, d_ff=128, num_layers=2, num_heads=4, feed_forward_proj="relu"
        ),
        "mean",
        None,
    ),
    # sentence-T5 / GTR: v1.1 gated-gelu encoder, mean pooling, a bias-free Dense projection, normalised.
    "gtr-t5 (v1.1 gated-gelu + Dense)": (
        lambda vocab: T5Config(
            vocab_size=vocab, d_model=64, d_ff=96, d_kv=8, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu"
        ),
        "mean",
        512,
    ),
    # Decoder-only embedders (Qwen3-Embedding / e5-mistral style): no LM head, last-token pooling.
    "qwen2 (last token)": (
        lambda vocab: Qwen2Config(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        ),
        "lasttoken",
        None,
    ),
    "llama (last token)": (
        lambda vocab: LlamaConfig(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=32,
        ),
        "lasttoken",
        None,
    ),
}


@pytest.fixture(scope="module")
def plain_tokenizer():
    tokenizer = tiny_tokenizer(POOL * 3 + TARGET * 3, vocab_size=320)
    tokenizer.chat_template = None  # plain text in, as sentence encoders take it
    return tokenizer


def build_encoder(family, tokenizer, folder):
    """The family's tiny random model as a sentence-transformers folder, loaded back with eager attention."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoModel, T5EncoderModel

    make_config, pooling, dense_out = FAMILIES[family]
    config = make_config(len(tokenizer))
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    # A T5 checkpoint holds only the encoder, as sentence-T5/GTR's do (sentence-transformers loads T5EncoderModel).
    (T5EncoderModel(config) if isinstance(config, T5Config) else AutoModel.from_config(config)).save_pretrained(
        folder / "transformer"
    )
    tokenizer.save_pretrained(folder / "transformer")
    modules = [models.Transformer(str(folder / "transformer"), max_seq_length=64)]
    width = modules[0].get_embedding_dimension()
    modules.append(models.Pooling(width, pooling_mode=pooling))
    if dense_out:
        modules += [
            models.Dense(width, dense_out, bias=False, activation_function=torch.nn.Identity()),
            models.Normalize(),
        ]
    SentenceTransformer(modules=modules, device="cpu").save(str(folder / "encoder"))
    return SentenceTransformer(str(folder / "encoder"), device="cpu", model_kwargs={"attn_implementation": "eager"})


def counted(fn):
    with FlopCounterMode(display=False) as counter:
        result = fn()
    return result, counter.get_total_flops()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_embedding_charge_matches_flop_counter(family, plain_tokenizer, tmp_path):
    encoder = build_encoder(family, plain_tokenizer, tmp_path)
    assert encoder[0].auto_model.config._attn_implementation == "eager"
    pool, target = Dataset.from_dict({"text": POOL}), Dataset.from_dict({"text": TARGET})

    # The selector's own scoring: 3 length-sorted batches of the pool, 1 of the target.
    selector = get_selector("embedding", model=encoder, batch_size=2, show_progress=False)
    estimate = selector.estimate_flops(pool, target)
    result, measured = counted(lambda: selector.select(pool, target=target, k=2))
    assert result.flops == pytest.approx(measured, rel=1e-3)
    assert estimate == pytest.approx(result.flops, rel=1e-9)

    # SentenceTransformer.encode of the same rows, one batch each (so both pad alike).
    one_batch = get_selector("embedding", model=encoder, batch_size=len(POOL), show_progress=False)
    charged = one_batch.select(pool, target=target, k=2).flops
    _, encode_measured = counted(
        lambda: (encoder.encode(POOL, batch_size=len(POOL)), encoder.encode(TARGET, batch_size=len(POOL)))
    )
    assert charged == pytest.approx(encode_measured, rel=1e-3)


def test_t5_config_profile_is_the_encoder_stack():
    """From a T5 config alone (planning, README figures) the profile equals the loaded T5EncoderModel's."""
    from transformers import T5EncoderModel, T5ForConditionalGeneration

    for proj in ("relu", "gated-gelu"):
        config = T5Config(
            vocab_size=300, d_model=64, d_ff=96, d_kv=32, num_layers=3, num_heads=4, feed_forward_proj=proj
        )
        from_config, from_model = FlopProfile.from_config(config), FlopProfile.from_model(T5EncoderModel(config))
        assert (
            from_config.num_params
            == from_model.num_params
            == 3 * (4 * 64 * 128 + (3 if proj != "relu" else 2) * 64 * 96)
        )
        assert from_config.attention_dim == from_model.attention_dim == 4 * 32
        assert from_config.forward_flops(2, 40) == pytest.approx(from_model.forward_flops(2, 40))
    with pytest.raises(ValueError, match="encoder-decoder.*T5EncoderModel"):
        FlopProfile.from_model(
            T5ForConditionalGeneration(T5Config(vocab_size=300, d_model=32, d_ff=64, num_layers=1, num_heads=2))
        )


def test_decoder_without_lm_head_is_not_charged_for_one():
    from transformers import Qwen2ForCausalLM, Qwen2Model

    config = Qwen2Config(
        vocab_size=5000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    base, with_head = FlopProfile.from_model(Qwen2Model(config)), FlopProfile.from_model(Qwen2ForCausalLM(config))
    assert with_head.num_params - base.num_params == 64 * 5000
