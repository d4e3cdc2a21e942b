"""Stopping cleanly on Ctrl-C (SIGINT) or pre-emption (SIGTERM).

The first signal asks the trainer to stop at the next safe point: the end of the current epoch,
once validation, history and the checkpoint are written. A second signal stops at once; the
files on disk stay whole because every file is written atomically.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from ignite.engine import Engine

from .errors import FmnistIgniteError

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(FmnistIgniteError):
    """Training was stopped by a signal; the exit code is 128 + the signal number (130, 143)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class StopRequest:
    """Remembers the first stop signal; a second one raises :class:`Interrupted` at once.

    In a data-parallel run, :class:`~fmnist_ignite.parallel.EpochConsensus` takes over the
    trainer's ``terminate`` (kept here) and training stops on the signal the processes agreed on
    (``agreed``), not on one that reached this process alone after they agreed: that one waits
    for the next epoch's agreement.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.agreed: int | None = None
        self.terminate: Callable[[], None] | None = None  # the trainer's own, where EpochConsensus defers it

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            raise Interrupted(f"stopped at once by a second {name}", signum)
        self.signum = signum
        logger.warning("%s received: stopping after this epoch is saved (send it again to stop at once)", name)

    def stop_if_asked(self, trainer: Engine) -> None:
        """Trainer handler, last at EPOCH_COMPLETED: end training once the epoch is saved."""
        if self.terminate is None:  # one process
            if self.signum is not None:
                trainer.terminate()
        elif self.agreed is not None:  # a data-parallel run: the agreed signal only
            self.terminate()


@contextmanager
def stop_on_signals(trainer: Engine, request: StopRequest) -> Iterator[StopRequest]:
    """Install ``request`` for SIGINT and SIGTERM while training (main thread only), then put back the old handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {s: signal.signal(s, request) for s in SIGNALS}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
