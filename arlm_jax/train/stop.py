"""Stopping a run cleanly on SIGTERM (schedulers, preemption) and SIGINT (Ctrl-C).

While ``stop_requests()`` is active a signal only records itself; the loop asks ``should_stop``
at every step boundary and then saves the current step, waits for every queued save and
raises ``Interrupted``, which the CLI turns into one line and exit status 128 + the signal
(130 for SIGINT, 143 for SIGTERM). A repeated signal changes nothing, so a double Ctrl-C can no
longer break into an orbax save half way.

Multi-process runs: every process must save at the same step. JAX's preemption service
(started by ``jax.distributed.initialize``) catches SIGTERM on any process and agrees on a step
with the others; ``should_stop`` asks it (through orbax's ``reached_preemption``) at every step
and stops only when it says so. SIGTERM is left to it; a SIGINT is recorded (it names the exit)
and passed on to it as a SIGTERM to this process, so a Ctrl-C is agreed on the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator


class Interrupted(Exception):
    """The run stopped on a signal after saving; ``str(err)`` is the one line for the user."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopRequests:
    """The first SIGTERM or SIGINT seen (``signum``), and the check the loop makes each step."""

    def __init__(self, reached_preemption: Callable[[int], bool] | None = None):
        self.signum: int | None = None
        self._preemption = reached_preemption  # multi-process: JAX's agreement on a step

    def record(self, signum: int, frame=None) -> None:
        if self.signum is None:
            self.signum = signum
        if self._preemption is not None and signum == signal.SIGINT:
            os.kill(os.getpid(), signal.SIGTERM)  # into JAX's preemption service

    def should_stop(self, step: int) -> bool:
        """True once a signal came (multi-process: once all processes reached the step they
        agreed on); call it at every step, on every process."""
        if self._preemption is None:
            return self.signum is not None
        if self._preemption(step):
            self.signum = self.signum or signal.SIGTERM
            return True
        return False

    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "a signal"


@contextlib.contextmanager
def stop_requests(multi_process: bool = False,
                  reached_preemption: Callable[[int], bool] | None = None) -> Iterator[StopRequests]:
    """Record SIGTERM and SIGINT for the ``with`` block (SIGINT only when ``multi_process``: JAX's
    preemption service owns SIGTERM there) and restore the previous handlers after it. Outside
    the main thread (where Python cannot install handlers) signals keep their usual effect."""
    stop = StopRequests(reached_preemption if multi_process else None)
    signums = (signal.SIGINT,) if multi_process else (signal.SIGINT, signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {s: signal.signal(s, stop.record) for s in signums}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
