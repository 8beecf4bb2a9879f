"""Running selection across processes: who this process is, which rows it owns, and the collectives.

Selectors never talk to ``torch.distributed`` directly. :func:`current_processes` describes the
process group the script was launched in (``accelerate launch``, ``torchrun`` or a single
``python`` process), and :class:`Processes` offers the few operations the scoring flow needs:
a contiguous share of the work per rank, compute-on-the-main-process-and-broadcast, and a gather
that turns one rank's exception into an error on every rank (instead of a hang in a collective).

With one process every operation is a plain local call, so nothing here needs a process group.

Example:
    >>> from hf_cads.distributed import current_processes
    >>> processes = current_processes()
    >>> processes.world_size, processes.rank
    (1, 0)
    >>> list(processes.share(10))
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


class ProcessFailedError(RuntimeError):
    """Raised on every process when another process failed during a collective step."""


@dataclass(frozen=True)
class Processes:
    """This process's rank in a group of ``world_size`` processes, and the collectives selection uses."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def share(self, count: int) -> range:
        """This rank's contiguous block of ``count`` work items (earlier ranks get the extra ones)."""
        base, extra = divmod(count, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (1 if self.rank < extra else 0))

    def gather(self, compute: Callable[[], T]) -> list[T]:
        """Run ``compute`` on every process and return every process's result, in rank order.

        If any process raised, every process raises: the failing one its own exception, the others
        a :class:`ProcessFailedError` naming the failing rank and its error.
        """
        if not self.is_distributed:
            return [compute()]
        local_error: BaseException | None = None
        try:
            payload: tuple[Any, str | None] = (compute(), None)
        except Exception as err:  # re-raised below, after the other ranks learned about it
            local_error = err
            payload = (None, f"{type(err).__name__}: {err}")
        gathered = self._all_gather(payload)
        failures = [(rank, error) for rank, (_, error) in enumerate(gathered) if error is not None]
        if local_error is not None:
            raise local_error
        if failures:
            rank, error = failures[0]
            raise ProcessFailedError(f"Process {rank} of {self.world_size} failed while scoring: {error}")
        return [value for value, _ in gathered]

    def on_main(self, compute: Callable[[], T]) -> T:
        """Run ``compute`` on the main process only and hand its result to every process.

        Use it for work whose result every rank needs but whose cost must be paid (and charged)
        once, e.g. embedding the target set. The result must be picklable.
        """
        if not self.is_distributed:
            return compute()
        import torch.distributed as dist

        payload: list[Any] = [None]
        local_error: BaseException | None = None
        if self.is_main:
            try:
                payload = [(compute(), None)]
            except Exception as err:
                local_error = err
                payload = [(None, f"{type(err).__name__}: {err}")]
        dist.broadcast_object_list(payload, src=0)
        value, error = payload[0]
        if local_error is not None:
            raise local_error
        if error is not None:
            raise ProcessFailedError(f"Process 0 of {self.world_size} failed: {error}")
        return value

    def all_sum(self, value: float) -> float:
        """The sum of ``value`` over all processes (e.g. FLOPs each rank spent)."""
        return float(sum(self.gather(lambda: float(value))))

    def barrier(self) -> None:
        if self.is_distributed:
            import torch.distributed as dist

            dist.barrier()

    def _all_gather(self, payload: Any) -> list[Any]:
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, payload)
        return gathered


def launched_world_size() -> int:
    """The process count the launcher (``accelerate launch``, ``torchrun``) announced, 1 without one."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def current_processes() -> Processes:
    """The process group this code runs in, initialising it through accelerate when a launcher
    started several processes but nothing has set the group up yet (as ``Trainer`` would later).

    Example:
        >>> current_processes().is_distributed
        False
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Processes(rank=dist.get_rank(), world_size=dist.get_world_size())
    if launched_world_size() > 1:
        from accelerate import PartialState

        state = PartialState(cpu=_wants_cpu())
        return Processes(rank=state.process_index, world_size=state.num_processes)
    return Processes()


def _wants_cpu() -> bool:
    """CPU processes (gloo) when asked for (``accelerate launch --cpu``) or when there is no accelerator:
    accelerate only forms a multi-process CPU group when told it runs on the CPU."""
    import torch

    if os.environ.get("ACCELERATE_USE_CPU", "").strip().lower() in {"1", "true", "yes"}:
        return True
    accelerator = getattr(torch, "accelerator", None)
    return not (accelerator.is_available() if accelerator is not None else torch.cuda.is_available())
