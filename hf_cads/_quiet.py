"""Quiet by default: other libraries' progress bars and import-time warnings that say nothing about
the run are hidden unless the ``hf_cads`` logger is at DEBUG (``hf-cads --verbose``).

- :func:`quiet_loading` hides the bars of short, many-part steps: ``datasets``' per-file bars while
  presets load, its "Flattening the indices" / "Creating parquet" bars while a subset is written, and
  ``transformers``' "Loading weights" / GGUF "Converting and de-quantizing" bars while a model loads.
  The long phases (scoring, training) keep their one bar each: they run outside it. Evaluation's
  length depends on the user's test set, so its bars appear only once it has run
  :data:`LATE_BAR_SECONDS` (:func:`late_bar_delay`).
- :func:`hold_kernel_warnings` (called by ``import hf_cads``) holds back the bitsandbytes / kernels
  warnings that importing ``transformers`` (through peft) prints on a machine without the
  ``kernels-community`` 4-bit CPU kernel; :func:`release_kernel_warnings` prints them once 4-bit
  loading is requested, where they matter.
- :func:`hide_upstream_warnings` (called by the ``hf-cads`` command line) hides two warnings the
  libraries print to each other on every LoRA run: peft reading transformers' deprecated
  ``is_gradient_checkpointing``, and peft unable to reach the Hub (offline) to compare the base
  model's vocabulary with the saved adapter's (hf_cads never resizes it).

Example:
    >>> import datasets
    >>> with quiet_loading():
    ...     datasets.are_progress_bars_disabled()
    True
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

PACKAGE_LOGGER = "hf_cads"

# Modules that call ``tqdm.auto.tqdm`` directly (no library-wide switch): their ``tqdm`` is swapped
# for a disabled one inside :func:`quiet_loading`.
_PLAIN_TQDM_MODULES = ("transformers.modeling_gguf_pytorch_utils",)

# (logger, message prefix) of the warnings :func:`hold_kernel_warnings` holds back.
KERNEL_WARNINGS = (
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community"),
    ("kernels._internals.hf_hub", "Skipping publisher trust check for 'kernels-community/"),
)


# (category, message regex) of the warnings :func:`hide_upstream_warnings` hides.
UPSTREAM_WARNINGS = (
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
    (UserWarning, r"Could not find a config file in .* - will assume that the vocabulary was not modified"),
)


def hide_upstream_warnings() -> None:
    """Hide the :data:`UPSTREAM_WARNINGS` for the rest of the process, unless ``--verbose``: for the
    command line, which owns its process (a library call leaves the caller's warning filters alone)."""
    if verbose():
        return
    for category, message in UPSTREAM_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


# How long a usually short step (evaluating the target) runs before its progress bar appears.
LATE_BAR_SECONDS = 5.0


def late_bar_delay() -> float:
    """Seconds before the bar of a usually short step appears (tqdm's ``delay``): :data:`LATE_BAR_SECONDS`,
    or 0 with ``hf-cads --verbose``.

    Example:
        >>> late_bar_delay() == (0.0 if verbose() else LATE_BAR_SECONDS)
        True
    """
    return 0.0 if verbose() else LATE_BAR_SECONDS


def verbose() -> bool:
    """Whether ``hf-cads --verbose`` (the ``hf_cads`` logger at DEBUG) asks for every bar and line."""
    return logging.getLogger(PACKAGE_LOGGER).isEnabledFor(logging.DEBUG)


@contextmanager
def _datasets_bars_off() -> Iterator[None]:
    import datasets

    if datasets.are_progress_bars_disabled() or "HF_DATASETS_DISABLE_PROGRESS_BARS" in os.environ:
        yield
        return
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.enable_progress_bars()


@contextmanager
def _transformers_bars_off() -> Iterator[None]:
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as transformers_logging

    if not transformers_logging.is_progress_bar_enabled() or "HF_HUB_DISABLE_PROGRESS_BARS" in os.environ:
        yield
        return
    hub_was_disabled = hub_utils.are_progress_bars_disabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.enable_progress_bar()  # turns huggingface_hub's bars on as well
        if hub_was_disabled:
            hub_utils.disable_progress_bars()


@contextmanager
def _plain_tqdm_off(module_name: str) -> Iterator[None]:
    module = sys.modules[module_name]
    original = getattr(module, "tqdm", None)
    if original is None:
        yield
        return
    module.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        module.tqdm = original


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Hide ``datasets``' progress bars (and ``transformers``' and the GGUF loader's, where those are
    imported) for the duration, unless the ``hf_cads`` logger is at DEBUG (``hf-cads --verbose``) or
    ``HF_DATASETS_DISABLE_PROGRESS_BARS`` / ``HF_HUB_DISABLE_PROGRESS_BARS`` say otherwise. Each
    library's switch is put back as it was on exit.
    """
    if verbose():
        yield
        return
    with ExitStack() as stack:
        stack.enter_context(_datasets_bars_off())
        if "transformers" in sys.modules:
            stack.enter_context(_transformers_bars_off())
        for name in _PLAIN_TQDM_MODULES:
            if name in sys.modules:
                stack.enter_context(_plain_tqdm_off(name))
        yield


class _HoldKernelWarnings(logging.Filter):
    """Keeps the :data:`KERNEL_WARNINGS` records back (until released) unless ``--verbose``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix
        self.held: list[logging.LogRecord] = []
        self.released = False

    def filter(self, record: logging.LogRecord) -> bool:
        if self.released or verbose() or not str(record.msg).startswith(self.prefix):
            return True
        self.held.append(record)
        return False


def _kernel_filters() -> list[tuple[logging.Logger, _HoldKernelWarnings]]:
    found = []
    for name, _ in KERNEL_WARNINGS:
        logger = logging.getLogger(name)
        found += [(logger, f) for f in logger.filters if isinstance(f, _HoldKernelWarnings)]
    return found


def hold_kernel_warnings() -> None:
    """Hold back the 4-bit kernel warnings that importing ``transformers`` (peft -> bitsandbytes)
    prints on every run, 4-bit or not; :func:`release_kernel_warnings` prints them. Idempotent."""
    if _kernel_filters():
        return
    for name, prefix in KERNEL_WARNINGS:
        logging.getLogger(name).addFilter(_HoldKernelWarnings(prefix))


def release_kernel_warnings() -> None:
    """4-bit loading was requested: print the held kernel warnings, and let later ones through."""
    for logger, hold in _kernel_filters():
        hold.released = True
        held, hold.held = hold.held, []
        for record in held:
            logger.handle(record)
