"""Preemption of a budgeted training run: on SIGTERM or SIGINT (what cluster schedulers and spot
instances send before they kill a job, and Ctrl-C) the trainer finishes the optimizer step it is in,
saves a checkpoint with the FLOP ledger, logs where to resume, and lets the signal end the process.

:class:`PreemptionGuard` is what :meth:`~hf_cads.trainer.flop_budget.FlopBudgetMixin.train` wraps
around ``Trainer.train`` when a budget is set. It installs its handlers for the length of the run and
restores the previous ones afterwards. After the checkpoint the signal is delivered again to the
handler that was there before (the default one ends the process: exit status 143 for SIGTERM, or
``KeyboardInterrupt`` for SIGINT), so a launcher's own handler still runs. A second signal while
the step finishes is not held back. Under several processes the stop is agreed on at every step
(one all-reduce), so all of them save the same step. Handlers can be set only from the main
thread; elsewhere, or with ``TrainingArguments.enable_jit_checkpoint`` (transformers' own SIGTERM
checkpointing), the guard stays out of the way.

Resuming with ``trainer.train(resume_from_checkpoint=<the logged folder>)`` ends at the same FLOPs
and weights as a run that was never interrupted.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from transformers import TrainerCallback

logger = logging.getLogger(__name__)

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionCallback(TrainerCallback):
    """Asks the trainer to save and stop at the end of the optimizer step in which a signal came
    (added by :class:`PreemptionGuard` for the length of one ``train()`` call).

    Example:
        >>> from transformers import TrainerControl, TrainerState
        >>> class Signalled:
        ...     stopped_at_step = None
        ...     def stop_agreed(self):
        ...         return True
        >>> control = PreemptionCallback(Signalled()).on_step_end(None, TrainerState(global_step=3), TrainerControl())
        >>> control.should_save, control.should_training_stop
        (True, True)
    """

    def __init__(self, guard: PreemptionGuard) -> None:
        self.guard = guard

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.guard.stop_agreed():
            control.should_save = True
            control.should_training_stop = True
            self.guard.stopped_at_step = int(state.global_step)
        return control


class PreemptionGuard:
    """Holds SIGTERM / SIGINT for one ``train()`` call of ``trainer`` (see the module docstring).

    Example:
        >>> import signal
        >>> class Run:  # the parts of a Trainer the guard reads
        ...     args = type("Args", (), {"enable_jit_checkpoint": False})()
        ...     callback_handler = type("Handler", (), {"add_callback": lambda self, c: None,
        ...                                             "remove_callback": lambda self, c: None})()
        >>> before = signal.getsignal(signal.SIGTERM)
        >>> with PreemptionGuard(Run()) as guard:
        ...     signal.getsignal(signal.SIGTERM) == guard.handle
        True
        >>> signal.getsignal(signal.SIGTERM) is before
        True
    """

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.received: int | None = None
        self.stopped_at_step: int | None = None
        self._previous: dict[int, Any] = {}
        self._callback = PreemptionCallback(self)

    @property
    def active(self) -> bool:
        """Whether this guard may install handlers here (main thread, no transformers JIT checkpointing)."""
        jit = bool(getattr(self.trainer.args, "enable_jit_checkpoint", False))
        return not jit and threading.current_thread() is threading.main_thread()

    def __enter__(self) -> PreemptionGuard:
        if self.active:
            for number in PREEMPTION_SIGNALS:
                self._previous[number] = signal.signal(number, self.handle)
            self.trainer.callback_handler.add_callback(self._callback)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.restore()
        self.trainer.callback_handler.remove_callback(self._callback)

    def restore(self) -> None:
        """Put back the handlers that were installed before this guard."""
        for number, handler in self._previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def handle(self, number: int, frame: Any) -> None:
        """Signal handler: the first signal asks for a checkpoint; a second one is not held back."""
        if self.received is not None:
            self.restore()
            signal.raise_signal(number)
            return
        self.received = number
        logger.warning(
            "%s received: finishing this optimizer step, then saving a checkpoint and stopping.",
            signal.Signals(number).name,
        )

    def stop_agreed(self) -> bool:
        """Whether any process got a signal (summed over processes, so that all stop at one step)."""
        flag = 1.0 if self.received is not None else 0.0
        if getattr(getattr(self.trainer, "accelerator", None), "num_processes", 1) > 1:
            flag = self.trainer._global_sum([flag])[0]
        if flag > 0 and self.received is None:
            self.received = int(signal.SIGTERM)  # another process was signalled
        return flag > 0

    def checkpoint_folder(self) -> str | None:
        """The checkpoint written at the stop, if any."""
        if self.stopped_at_step is None:
            return None
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        output_dir = self.trainer._get_output_dir(trial=None)
        return os.path.join(output_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.stopped_at_step}")

    def finish(self) -> None:
        """After ``train()``: when a signal stopped the run, log where to resume and deliver the signal
        to the handler that was there before (this usually ends the process)."""
        if self.received is None:
            return
        folder = self.checkpoint_folder()
        if folder is not None:
            logger.warning(
                "Preempted at step %d: checkpoint with the FLOP ledger saved to %s. Resume with "
                "trainer.train(resume_from_checkpoint=%r) (or resume_from_checkpoint=True).",
                self.stopped_at_step,
                folder,
                folder,
            )
        signal.raise_signal(self.received)
