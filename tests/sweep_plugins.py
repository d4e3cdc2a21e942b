"""Handlers that the sweep tests name from YAML by dotted path (``tests.sweep_plugins:Name``)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from ignite.engine import Engine, Events

from fmnist_ignite import Context
from fmnist_ignite.events import RunEvents


class RefuseLr:
    """Fails a trial: raises at the first epoch when the run's learning rate is ``lr``."""

    def __init__(self, context: Context, lr: float) -> None:
        self.refused = context.config.optimizer.lr == lr
        self.lr = lr

    def __call__(self) -> None:
        if self.refused:
            raise RuntimeError(f"lr {self.lr} is refused")


class Trace:
    """Appends ``<run name> <pid>`` to ``path`` each time training starts (a new run or a resumed one),
    then sleeps ``seconds`` at every epoch, so that a test can catch a trial in the middle."""

    def __init__(self, context: Context, path: str, seconds: float = 0.0) -> None:
        self.name = context.run_dir.name
        self.path = Path(path)
        self.seconds = seconds

    def attach(self, engine: Engine, event: Events) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(event, lambda: time.sleep(self.seconds))

    def started(self) -> None:
        with self.path.open("a") as f:
            f.write(f"{self.name} {os.getpid()}\n")


class Meet:
    """Holds the end of each process's first trial until ``parties`` processes are there (a file each in
    ``folder``), so that they ask for their next trials at the same moment; later trials pass."""

    def __init__(self, context: Context, folder: str, parties: int) -> None:
        self.folder, self.parties = Path(folder), parties

    def attach(self, engine: Engine, event: Events) -> None:
        engine.add_event_handler(RunEvents.RUN_FINISHED, self)

    def __call__(self) -> None:
        self.folder.mkdir(exist_ok=True)
        (self.folder / str(os.getpid())).touch()
        deadline = time.monotonic() + 240
        while len(list(self.folder.iterdir())) < self.parties:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.parties} processes did not meet in {self.folder}")
            time.sleep(0.01)


class FusedTrace(Trace):
    """:class:`Trace`, declared fusion-aware: it only follows its trainer's events, so a fused sweep may train it."""

    fusion_aware = True


class KillOnce:
    """Kills its process (SIGKILL, as ``kill -9``) the first time a run is built with it, then never again
    (``marker`` says it happened): a sweep killed while it asks the study for its trials."""

    fusion_aware = True

    def __init__(self, context: Context, marker: str) -> None:
        if not Path(marker).exists():
            Path(marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)

    def __call__(self) -> None:
        pass
