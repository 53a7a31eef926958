"""The deadline that bends the cosine schedule: a run that stops itself on time.

A recipe with ``TrainConfig.time_limit`` plans ``epochs`` epochs, but a slower machine
(a laptop, a busy server) does not fit them in. So the schedule advances by steps *or*
by the clock, whichever is further: at elapsed time t of a limit T, the learning rate
is that of step ``max(step, total_steps × t / T')``, where T' is the limit minus a
reserve for the last evaluation and the length of one step. The cosine then reaches its
end at T' whatever the machine, and training stops there: the model a student gets is
an annealed one, not one cut off at a high learning rate.

The reserve starts at 5% of the limit and is learned from each evaluation
(:meth:`Deadline.evaluated`): twice what the last one took, plus 1% of the limit, at
most a quarter of it. Such a run is not bitwise reproducible (the clock is not).
"""

from __future__ import annotations

import math
import time
from typing import Callable

__all__ = ["Deadline"]


class Deadline:
    """The clock of a run with ``time_limit`` seconds (0: none), ``seconds_before`` of them spent already.

    ``agree`` turns this process's decision into everyone's (see
    :meth:`vitlib.processes.OneProcess.agree`).
    """

    def __init__(self, time_limit: float, seconds_before: float = 0.0,
                 agree: Callable[[bool, int], tuple[bool, int]] | None = None) -> None:
        self.time_limit = time_limit
        self.seconds_before = seconds_before
        self.agree = agree or (lambda stop, position: (stop, position))
        self.reserve = 0.05 * time_limit  # until the first evaluation shows what it costs
        self.stopped = False  # the clock, not the epoch count, ended the run
        self.started = self.last_check = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds of training so far, those before a resume included."""
        return self.seconds_before + time.perf_counter() - self.started

    def epoch_starts(self) -> None:
        """Time the next step from now (an epoch's first step then includes its data's setup)."""
        self.last_check = time.perf_counter()

    def position(self, step: int, total_steps: int) -> int | None:
        """The schedule's step for optimizer step ``step``: ``step``, or further on the clock.

        None when the step could end past the deadline: the run stops before taking it.
        """
        if not self.time_limit:
            return step
        now = time.perf_counter()
        elapsed = self.seconds_before + now - self.started
        step_seconds, self.last_check = now - self.last_check, now  # one step, data included
        deadline = max(self.time_limit - self.reserve - step_seconds, 1e-9)  # T'
        stop, position = self.agree(elapsed >= deadline, max(step, math.floor(total_steps * elapsed / deadline)))
        self.stopped = self.stopped or stop
        return None if stop else position

    def evaluated(self, seconds: float) -> None:
        """An evaluation took ``seconds``: keep room for the last one, with some to spare."""
        self.reserve = min(2 * seconds + 0.01 * self.time_limit, 0.25 * self.time_limit)
