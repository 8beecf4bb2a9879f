"""Analytic FLOP estimates: the per-token matmul structure of a transformer (:class:`FlopProfile`)
and the cost formulas of the non-model work selectors do (BM25, dense products).

The estimates count the floating point operations of matrix multiplications (2 per multiply-add),
which is what dominates LLM compute and what :class:`torch.utils.flop_counter.FlopCounterMode`
measures. Unlike the common ``6 * N * tokens`` rule they include the attention score term
(``QK^T`` and ``AV``, quadratic in the sequence length) and they know that LoRA leaves the base
weights frozen, so their backward pass needs input gradients only (no weight-gradient matmuls).

Example:
    >>> from transformers import LlamaConfig
    >>> from hf_cads.flops import FlopProfile
    >>> profile = FlopProfile.from_config(LlamaConfig(hidden_size=64, intermediate_size=128,
    ...     num_hidden_layers=2, num_attention_heads=4, vocab_size=1000))
    >>> profile.train_step_flops(batch_size=8, seq_len=128) > profile.forward_flops(batch_size=8, seq_len=128)
    True
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from ..lora import DEFAULT_LORA_TARGET_MODULES, target_modules_of


@dataclass(frozen=True)
class LoraSpec:
    """Which linear layers carry LoRA adapters, and their rank.

    ``target_modules`` are matched against the last component of a module name, as peft does for
    a list of names (``"q_proj"`` matches ``model.layers.0.self_attn.q_proj``).
    """

    rank: int
    target_modules: tuple[str, ...] = DEFAULT_LORA_TARGET_MODULES

    @classmethod
    def from_peft_config(cls, peft_config: Any) -> LoraSpec:
        # hf_cads's defaults when the config names no layers (BudgetedTrainer fills them in too).
        modules = target_modules_of(peft_config)
        return cls(rank=int(peft_config.r), target_modules=tuple(sorted(modules)))


@dataclass(frozen=True)
class LinearLayer:
    """One matmul weight of a model: ``in_features x out_features`` applied to every token."""

    name: str
    in_features: int
    out_features: int
    trainable: bool = True
    input_needs_grad: bool = True

    @property
    def macs_per_token(self) -> int:
        return self.in_features * self.out_features


@dataclass(frozen=True)
class FlopProfile:
    """Per-token matmul structure of a transformer, from which every cost estimate is derived.

    Build one with :meth:`from_config` (no weights needed, e.g. for planning),
    :meth:`from_model` (reads the actual ``nn.Linear`` modules and their ``requires_grad``) or
    :meth:`from_sentence_encoder` (a ``SentenceTransformer``: its transformer plus the heads after
    pooling).
    """

    linears: tuple[LinearLayer, ...]
    num_layers: int
    attention_dim: int
    """``num_heads * head_dim``: the width of the ``QK^T`` and ``AV`` products per layer."""
    name: str = "model"
    per_sequence: tuple[LinearLayer, ...] = ()
    """Linears applied once per sequence rather than per token: a BERT/MPNet pooler on the first
    token, or a sentence-transformers ``Dense`` head on the pooled embedding (sentence-T5, GTR)."""
    block_output_is_residual: bool = False
    """Each block's last linear (``down_proj``) writes straight into the residual stream (a pre-norm
    decoder without a norm after its MLP, e.g. Llama, unlike Gemma 2/3): the backward pass never
    reads its output, so activation checkpointing's rerun stops before it."""

    # -- structure -----------------------------------------------------------------------------
    @functools.cached_property  # every forward_flops call reads it: summed once, not per batch
    def num_params(self) -> int:
        """Matmul parameters (embedding lookups excluded, an untied LM head included)."""
        return sum(layer.macs_per_token for layer in self.linears)

    @functools.cached_property
    def _rerun_params(self) -> int:
        # torch's non-reentrant checkpoint stops the rerun once every tensor the backward needs is
        # back, which leaves out the ops after the last of them: a residual-writing last linear.
        last_of_block = {}
        for layer in self.linears:
            if _in_block(layer.name):
                last_of_block[next(p for p in layer.name.split(".") if p.isdigit())] = layer.name
        skipped = set(last_of_block.values()) if self.block_output_is_residual else set()
        return sum(
            layer.macs_per_token for layer in self.linears if _in_block(layer.name) and layer.name not in skipped
        )

    @property
    def trainable_params(self) -> int:
        return sum(layer.macs_per_token for layer in self.linears if layer.trainable)

    @property
    def is_full_finetune(self) -> bool:
        return all(layer.trainable for layer in self.linears)

    # -- estimates -----------------------------------------------------------------------------
    def forward_flops(self, batch_size: int, seq_len: int) -> float:
        """FLOPs of one forward pass over ``batch_size`` sequences padded to ``seq_len``."""
        tokens = batch_size * seq_len
        linear = 2.0 * tokens * self.num_params + 2.0 * batch_size * sum(
            layer.macs_per_token for layer in self.per_sequence
        )
        # QK^T and AV: each 2 * s * s * d per sequence and layer. Measured kernels compute the full
        # square even under a causal mask, so the estimate does too.
        attention = 4.0 * batch_size * seq_len * seq_len * self.attention_dim * self.num_layers
        return linear + attention

    def backward_flops(self, batch_size: int, seq_len: int, *, embeddings_need_grad: bool = False) -> float:
        """FLOPs of the backward pass: input gradients where needed, weight gradients where trainable.
        ``embeddings_need_grad``: the embedding output requires grad even though the embeddings are
        frozen (as activation checkpointing sets it up), so the first block's input gradients are
        computed too."""
        linear = 0.0
        for layers, rows in ((self.linears, batch_size * seq_len), (self.per_sequence, batch_size)):
            for layer in layers:
                per_row = 0
                if layer.input_needs_grad or embeddings_need_grad:
                    per_row += layer.macs_per_token
                if layer.trainable:
                    per_row += layer.macs_per_token
                linear += 2.0 * rows * per_row
        attention = 8.0 * batch_size * seq_len * seq_len * self.attention_dim * self.num_layers
        return linear + attention

    def checkpoint_rerun_flops(self, batch_size: int, seq_len: int) -> float:
        """FLOPs that activation checkpointing reruns in the backward pass: the forward through the
        transformer blocks (the linears of numbered layers, and attention), without each block's last
        linear when :attr:`block_output_is_residual`. The LM head and poolers sit outside the
        checkpointed blocks.

        Example:
            >>> from transformers import LlamaConfig
            >>> profile = FlopProfile.from_config(LlamaConfig(hidden_size=64, intermediate_size=128,
            ...     num_hidden_layers=2, num_attention_heads=4, vocab_size=1000))
            >>> head, down_proj = 2 * 8 * 64 * 1000, 2 * 2 * 8 * 128 * 64
            >>> profile.forward_flops(1, 8) - profile.checkpoint_rerun_flops(1, 8) == head + down_proj
            True
        """
        attention = 4.0 * batch_size * seq_len * seq_len * self.attention_dim * self.num_layers
        return 2.0 * batch_size * seq_len * self._rerun_params + attention

    def train_step_flops(self, batch_size: int, seq_len: int, *, gradient_checkpointing: bool = False) -> float:
        """FLOPs of forward + backward for one micro-batch (the optimizer update is negligible).

        With ``gradient_checkpointing`` the backward pass first reruns the blocks' forward
        (:meth:`checkpoint_rerun_flops`), and transformers makes the embedding output require grad
        (``enable_input_require_grads``), so the first block's input gradients are computed as well.
        """
        forward = self.forward_flops(batch_size, seq_len)
        if not gradient_checkpointing:
            return forward + self.backward_flops(batch_size, seq_len)
        recompute = self.checkpoint_rerun_flops(batch_size, seq_len)
        return forward + recompute + self.backward_flops(batch_size, seq_len, embeddings_need_grad=True)

    def lm_head_train_flops(self, positions: int, *, recomputed_in_backward: bool = False) -> float:
        """Training FLOPs of the LM head over ``positions`` token positions: forward, input gradient and,
        where trainable, weight gradient. ``recomputed_in_backward``: a chunked head that never keeps
        the logits (TRL's fused LM head) computes them once more in the backward pass.

        Example:
            >>> from transformers import LlamaConfig
            >>> profile = FlopProfile.from_config(LlamaConfig(hidden_size=64, intermediate_size=128,
            ...     num_hidden_layers=2, num_attention_heads=4, vocab_size=1000), lora=LoraSpec(rank=4))
            >>> profile.lm_head_train_flops(10) == 2 * 2 * 10 * 64 * 1000  # frozen: forward + input grad
            True
        """
        passes_per_layer = (
            (2 + int(layer.trainable) + int(recomputed_in_backward)) * layer.macs_per_token
            for layer in self.linears
            if "lm_head" in layer.name.split(".")
        )
        return 2.0 * positions * sum(passes_per_layer)

    def generation_flops(self, batch_size: int, prompt_len: int, new_tokens: int) -> float:
        """FLOPs of greedy generation with a KV cache, as ``model.generate`` runs it: one forward over
        the (padded) prompts whose LM head is applied to the last position only, then
        ``new_tokens - 1`` one-token steps, each attending over everything generated so far (the
        last generated token needs no forward of its own)."""
        head = sum(layer.macs_per_token for layer in self.linears if layer.name.endswith("lm_head"))
        total = self.forward_flops(batch_size, prompt_len) - 2.0 * batch_size * (prompt_len - 1) * head
        for step in range(1, max(int(new_tokens), 1)):
            context = prompt_len + step
            total += (
                2.0 * batch_size * self.num_params + 4.0 * batch_size * context * self.attention_dim * self.num_layers
            )
        return total

    # -- constructors --------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Any, lora: LoraSpec | None = None) -> FlopProfile:
        """Analytic profile of a decoder (Llama/Mistral/Qwen/GPT-2 style) or encoder (BERT, MPNet, or
        the encoder stack of a T5 config, as ``T5EncoderModel`` and sentence-T5/GTR run it).

        With ``lora`` the base weights are frozen and adapters of rank ``lora.rank`` are added to
        every linear layer whose name is in ``lora.target_modules``.
        """
        c = _normalise_config(config)
        layers: list[LinearLayer] = []
        d, hd = c["hidden_size"], c["head_dim"]
        q_out = c["num_heads"] * hd
        kv_out = c["num_kv_heads"] * hd
        block = [("q_proj", d, q_out), ("k_proj", d, kv_out), ("v_proj", d, kv_out), ("o_proj", q_out, d)]
        if c["gated_mlp"]:
            block += [("gate_proj", d, c["ffn"]), ("up_proj", d, c["ffn"]), ("down_proj", c["ffn"], d)]
        else:
            block += [("up_proj", d, c["ffn"]), ("down_proj", c["ffn"], d)]
        for index in range(c["num_layers"]):
            for short, fan_in, fan_out in block:
                layers.append(LinearLayer(f"layers.{index}.{short}", fan_in, fan_out))
        if c["lm_head"]:
            layers.append(LinearLayer("lm_head", d, c["vocab_size"]))
        if c["pooler"]:
            layers.append(LinearLayer("pooler.dense", d, d))
        profile = cls(
            tuple(layers),
            c["num_layers"],
            q_out,
            name=c["name"],
            block_output_is_residual=c["block_output_is_residual"],
        )
        return profile.with_lora(lora) if lora is not None else profile

    @classmethod
    def from_model(cls, model: Any) -> FlopProfile:
        """Profile of an instantiated ``torch.nn.Module``, reading its linear layers and trainability.

        peft LoRA layers are recognised through their parts: the wrapped ``base_layer`` is a frozen
        ``nn.Linear`` and ``lora_A`` / ``lora_B`` are trainable ones.
        """
        import torch

        config = getattr(model, "config", None)
        if config is None:
            raise ValueError(
                f"{type(model).__name__} has no `.config`; FlopProfile.from_model needs a transformers model."
            )
        if getattr(config, "is_encoder_decoder", False) and getattr(model, "decoder", None) is not None:
            raise ValueError(
                f"{type(model).__name__} is an encoder-decoder model; FlopProfile counts encoder-only and "
                "decoder-only models. For a T5 sentence encoder load the encoder alone (T5EncoderModel, "
                "as sentence-transformers does)."
            )
        c = _normalise_config(config)
        layers: list[LinearLayer] = []
        per_sequence: list[LinearLayer] = []
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                layer = LinearLayer(
                    name, module.in_features, module.out_features, trainable=module.weight.requires_grad
                )
                # BERT/RoBERTa/MPNet poolers read the first token only.
                (per_sequence if "pooler" in name.split(".") else layers).append(layer)
        output_embeddings = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if output_embeddings is not None and not any(
            isinstance(m, torch.nn.Linear) for m in output_embeddings.modules()
        ):
            # A head applied as a matmul with the (tied) embedding matrix rather than through an nn.Linear.
            layers.append(LinearLayer("lm_head", c["hidden_size"], c["vocab_size"], trainable=False))
        embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        embeddings_frozen = embeddings is None or not embeddings.weight.requires_grad
        profile = cls(
            tuple(layers),
            c["num_layers"],
            c["num_heads"] * c["head_dim"],
            name=c["name"],
            per_sequence=tuple(per_sequence),
            block_output_is_residual=c["block_output_is_residual"],
        )
        return profile._skip_first_block_input_grads() if embeddings_frozen else profile

    @classmethod
    def from_sentence_encoder(cls, encoder: Any) -> FlopProfile:
        """Profile of a ``sentence_transformers.SentenceTransformer`` as ``encode`` runs it.

        The transformer module is read with :meth:`from_model` (BERT/MiniLM, MPNet, a T5 encoder,
        or a decoder-only model without its LM head); linears of modules before the ``Pooling``
        module run per token, those after it (e.g. the ``Dense`` projection of sentence-T5/GTR)
        once per sequence. Pooling and normalisation are not matmuls.

        Example:
            >>> from sentence_transformers import SentenceTransformer  # doctest: +SKIP
            >>> profile = FlopProfile.from_sentence_encoder(SentenceTransformer("all-MiniLM-L6-v2"))  # doctest: +SKIP
            >>> profile.forward_flops(batch_size=32, seq_len=128)  # doctest: +SKIP
        """
        import torch

        transformer: FlopProfile | None = None
        per_token: list[LinearLayer] = []
        per_sequence: list[LinearLayer] = []
        pooled = False
        for index, module in enumerate(encoder):
            kind = type(module).__name__
            if hasattr(module, "auto_model"):
                if transformer is not None:
                    raise ValueError(f"{type(encoder).__name__} has two transformer modules; FlopProfile reads one.")
                transformer = cls.from_model(module.auto_model)
                continue
            for name, part in module.named_modules():
                if part is not module and hasattr(part, "auto_model"):
                    raise ValueError(
                        f"Module {index} ({kind}) of the sentence encoder nests a transformer (e.g. a Router); "
                        "FlopProfile reads a plain Transformer -> Pooling -> (Dense) stack."
                    )
                if isinstance(part, (torch.nn.RNNBase, torch.nn.modules.conv._ConvNd)):
                    raise ValueError(
                        f"Module {index} ({kind}) of the sentence encoder runs a {type(part).__name__}, whose "
                        "FLOPs FlopProfile does not count; use a transformer-based encoder."
                    )
                if isinstance(part, torch.nn.Linear):
                    layer = LinearLayer(
                        f"{index}.{name}".rstrip("."),
                        part.in_features,
                        part.out_features,
                        trainable=part.weight.requires_grad,
                    )
                    (per_sequence if pooled else per_token).append(layer)
            pooled = pooled or kind == "Pooling"
        if transformer is None:
            raise ValueError(
                f"{type(encoder).__name__} has no transformer module (one with `.auto_model`); FlopProfile "
                "counts transformer-based sentence encoders."
            )
        return replace(
            transformer,
            linears=transformer.linears + tuple(per_token),
            per_sequence=transformer.per_sequence + tuple(per_sequence),
        )

    def with_lora(self, lora: LoraSpec) -> FlopProfile:
        """The same model with frozen base weights and LoRA adapters on ``lora.target_modules``."""
        if lora.rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {lora.rank}.")
        targets = set(lora.target_modules)
        layers: list[LinearLayer] = []
        frozen_per_sequence = tuple(replace(layer, trainable=False) for layer in self.per_sequence)
        for layer in self.linears:
            layers.append(LinearLayer(layer.name, layer.in_features, layer.out_features, trainable=False))
            if layer.name.rsplit(".", 1)[-1] in targets:
                layers.append(LinearLayer(f"{layer.name}.lora_A", layer.in_features, lora.rank))
                layers.append(LinearLayer(f"{layer.name}.lora_B", lora.rank, layer.out_features))
        if not any(layer.trainable for layer in layers):
            raise ValueError(
                f"LoRA target_modules {sorted(targets)} match no linear layer of {self.name}; "
                f"available names: {sorted({layer.name.rsplit('.', 1)[-1] for layer in self.linears})}."
            )
        profile = replace(self, linears=tuple(layers), per_sequence=frozen_per_sequence)
        return profile._skip_first_block_input_grads()

    def _skip_first_block_input_grads(self) -> FlopProfile:
        """With frozen embeddings the first block's q/k/v (and their LoRA A) read a tensor that
        needs no gradient, so autograd computes no input gradient for them."""
        first_inputs = {"q_proj", "k_proj", "v_proj", "query", "key", "value", "c_attn"}
        updated = []
        for layer in self.linears:
            parts = layer.name.split(".")
            digits = [p for p in parts if p.isdigit()]
            reads_embeddings = _in_block(layer.name) and digits[0] == "0" and bool(first_inputs & set(parts))
            is_lora_b = "lora_B" in parts
            updated.append(
                LinearLayer(
                    layer.name,
                    layer.in_features,
                    layer.out_features,
                    trainable=layer.trainable,
                    input_needs_grad=not (reads_embeddings and not is_lora_b),
                )
            )
        return replace(self, linears=tuple(updated))


def _in_block(name: str) -> bool:
    """Whether a module name lies inside a numbered transformer block (``model.layers.3.mlp.up_proj``)."""
    return any(part.isdigit() for part in name.split("."))


POST_MLP_NORM_MODEL_TYPES = frozenset({"gemma2", "gemma3", "gemma3_text", "olmo2"})
"""Decoders whose blocks normalise the MLP output before adding it to the residual stream."""

T5_MODEL_TYPES = frozenset({"t5", "mt5", "umt5"})
"""Configs read as their encoder stack (``T5EncoderModel``), as sentence encoders use them."""


def _normalise_config(config: Any) -> dict[str, Any]:
    """Read the shape fields of a transformers config under their different names."""

    def pick(*names: str, default: Any = None) -> Any:
        for n in names:
            value = getattr(config, n, None)
            if value is not None:
                return value
        if default is None:
            raise ValueError(
                f"Cannot read {names[0]!r} from {type(config).__name__}; FLOP estimates support decoder "
                "(Llama, Mistral, Qwen, GPT-2), BERT-style encoder and T5 encoder configs."
            )
        return default

    hidden = int(pick("hidden_size", "n_embd", "d_model"))
    heads = int(pick("num_attention_heads", "n_head", "num_heads"))
    # T5 sets the per-head width independently of d_model (d_kv; 64 in every released size).
    head_dim = int(getattr(config, "head_dim", None) or getattr(config, "d_kv", None) or hidden // heads)
    kv_heads = int(pick("num_key_value_heads", default=heads))
    ffn = int(pick("intermediate_size", "n_inner", "ffn_dim", "d_ff", default=4 * hidden))
    model_type = getattr(config, "model_type", "") or ""
    bert_like = {"bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "electra"}
    # A T5 config describes encoder and decoder; as an embedding model only the encoder stack runs.
    t5_encoder = model_type in T5_MODEL_TYPES
    is_encoder = t5_encoder or (
        bool(getattr(config, "is_encoder_decoder", False)) is False and model_type in bert_like
    )
    # Gemma 2/3 name it hidden_activation (gelu_pytorch_tanh, gated); GPT-2 activation_function.
    act = str(pick("hidden_act", "hidden_activation", "activation_function", default=""))
    if t5_encoder:
        # v1.0 "relu" (wi, wo); v1.1 / GTR "gated-gelu" (wi_0, wi_1, wo).
        gated = bool(
            getattr(config, "is_gated_act", str(getattr(config, "feed_forward_proj", "")).startswith("gated-"))
        )
    else:
        gated = model_type not in bert_like | {"gpt2"} and (
            "silu" in act
            or "swiglu" in act
            or "gelu_pytorch_tanh" in act
            or model_type in {"llama", "mistral", "qwen2", "gemma", "gemma2", "gemma3_text"}
        )
    return {
        "name": getattr(config, "_name_or_path", "") or model_type or "model",
        "hidden_size": hidden,
        "num_heads": heads,
        "num_kv_heads": kv_heads,
        "head_dim": head_dim,
        "ffn": ffn,
        "num_layers": int(pick("num_hidden_layers", "n_layer", "num_layers")),
        "vocab_size": int(pick("vocab_size")),
        "gated_mlp": gated,
        "lm_head": not is_encoder,
        "pooler": False,
        # Post-norm encoders and decoders that normalise the MLP output read it in the backward pass.
        "block_output_is_residual": not is_encoder and model_type not in POST_MLP_NORM_MODEL_TYPES,
    }


def flop_counter(display: bool = False) -> Any:
    """A ``torch.utils.flop_counter.FlopCounterMode`` that also counts the in-place ``addmm_``, which the
    stock one misses: TRL's fused LM head accumulates its backward matmuls with it (off CUDA), so
    the stock count of an SFT step leaves them out.

    Example:
        >>> import torch
        >>> accumulator = torch.zeros(8, 4)
        >>> with flop_counter() as counter:
        ...     _ = accumulator.addmm_(torch.ones(8, 16), torch.ones(16, 4))
        >>> counter.get_total_flops() == 2 * 8 * 16 * 4
        True
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    def addmm_in_place(self_shape: Any, a_shape: Any, b_shape: Any, *args: Any, **kwargs: Any) -> int:
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]

    return FlopCounterMode(display=display, custom_mapping={torch.ops.aten.addmm_: addmm_in_place})


def bm25_flops(num_documents: int, query_terms: Iterable[int] | int) -> float:
    """Arithmetic operations of Okapi BM25 scoring: ~10 per (query term, document) pair.

    Not matmul FLOPs, but the same currency: the term-frequency lookup, the saturation
    ``tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avglen))`` and the IDF-weighted accumulation.
    """
    terms = query_terms if isinstance(query_terms, int) else sum(query_terms)
    return 10.0 * float(num_documents) * float(terms)


def matmul_flops(rows: int, inner: int, cols: int) -> float:
    """FLOPs of a dense ``rows x inner`` by ``inner x cols`` product, e.g. a random projection of
    ``rows`` vectors or a similarity matrix: ``2 * rows * inner * cols``."""
    return 2.0 * float(rows) * float(inner) * float(cols)
