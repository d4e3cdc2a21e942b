"""Checkpoints: the newest full training states and the best epoch's weights, saved so that none is ever lost.

Ignite's :class:`~ignite.handlers.Checkpoint` removes the oldest file *before* it writes the new
one, so with ``n_saved: 1`` a kill or a full disk inside the write would leave no checkpoint at
all. :class:`SaveThenRotate` wraps its saver: the new file is written to a temporary name,
renamed into place and flushed to disk, and only then is the old one removed.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine
from ignite.handlers import Checkpoint, DiskSaver, global_step_from_engine

from .config import differences, flatten
from .errors import CheckpointError, ConfigError, RunDirError, all_lines, first_line
from .fileio import atomic_torch_save, atomic_write, safe_torch_load
from .monitor import Monitor
from .rundir import CHECKPOINT_RE, RunDir

logger = logging.getLogger(__name__)

PLAIN = (str, int, float, bool, type(None))
RECORD = "record"  # the key of each checkpoint's :class:`RunRecord`
TORCH_LEAVES = (torch.Tensor, torch.Size, torch.dtype, torch.device)


class SaveThenRotate(DiskSaver):
    """Ignite's atomic ``DiskSaver`` that removes old files only after the new one is in place.

    It also creates its folder at the first save, not on construction: building an experiment
    must not touch the disk.
    """

    def __init__(self, dirname: Path) -> None:
        super().__init__(dirname, atomic=True, require_empty=False)
        self._to_remove: list[str] = []

    @staticmethod
    def _check_and_setup(dirname: Path, create_dir: bool, require_empty: bool) -> None:
        return None

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        self.dirname.mkdir(parents=True, exist_ok=True)
        try:
            super().__call__(checkpoint, filename, metadata)
        except OSError as err:
            if err.filename is None:
                err.filename = str(self.dirname / filename)  # say which file could not be written
            raise
        fd = os.open(self.dirname / filename, os.O_RDONLY)
        try:
            os.fsync(fd)  # on disk, not only renamed into place, before an older file goes
        finally:
            os.close(fd)
        while self._to_remove:
            # A kill before this line leaves one file too many, never one too few.
            (self.dirname / self._to_remove.pop()).unlink(missing_ok=True)

    def _save_func(self, checkpoint: Mapping, path: Path | str, func: Any) -> None:
        # Through the package's own temporary name (.checkpoint_N.pt.XXXXXXXX.tmp), the only kind a
        # resume removes; Ignite's would be tmpXXXXXXXX, which a user's file may be called too.
        atomic_write(Path(path), lambda f: func(checkpoint, f, **self.kwargs))

    def remove(self, filename: str) -> None:
        self._to_remove.append(filename)


WHERE_A_RUN_LIVES = ("name", "output_dir")  # a run directory may be moved or renamed


class RunRecord:
    """What a checkpoint says of itself: the config it was trained with and its epoch (key ``record``).

    A resume compares them with the run's files (:meth:`Checkpointer.check_record`), so that a
    hand-edited or truncated ``config.yaml``, or a checkpoint renamed to another epoch, is refused
    instead of trained with. Checkpoints written before it existed lack it and are checked by
    their trainer state's epoch alone.
    """

    def __init__(self, trainer: Engine, config: Callable[[], Mapping[str, Any]]) -> None:
        self.trainer = trainer
        self.config = config

    def state_dict(self) -> dict[str, Any]:
        config = {k: v for k, v in self.config().items() if k not in WHERE_A_RUN_LIVES}
        return {"config": json.dumps(config, sort_keys=True), "epoch": int(self.trainer.state.epoch)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore: the record is read by :meth:`Checkpointer.check_record`."""


class Checkpointer:
    """Saves the full training state after every epoch, and the best epoch's weights when they change.

    Runs when an epoch completes, after every handler, so that what it saves includes their
    updates for that epoch. Each ``checkpoint_<epoch>.pt`` holds exactly the ``state_dict()`` of
    every object in ``state`` (model, optimizer, scheduler, trainer, RNG, history, monitor,
    stateful handlers, and its own bookkeeping); the newest ``n_saved`` are kept.
    ``best_model.pt`` holds ``{"model", "epoch", "metric", "value"}`` of the monitor's best epoch,
    replaced atomically.

    Args:
        rundir: the run directory.
        state: every stateful object, by name.
        trainer: the training engine (its epoch names the files).
        monitor: the run's definition of the best epoch.
        n_saved: how many training states to keep.
        write: write files; ``False`` on the processes other than rank 0 of a data-parallel run,
            which hold the same state and load it on resume, but leave the files to rank 0.
        config: the run's config now, as plain data; each checkpoint records it (:class:`RunRecord`).

    Attributes:
        changeable: the settings (a key ending in ``.`` for its section) a resume may change, which
            may differ between ``config.yaml`` and a checkpoint's record; set by a resume.
    """

    def __init__(
        self,
        rundir: RunDir,
        state: dict[str, Any],
        trainer: Engine,
        monitor: Monitor,
        n_saved: int,
        write: bool = True,
        config: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self.rundir = rundir
        self.state = state
        self.config = config
        self.changeable: tuple[str, ...] = ()
        if config is not None:
            state[RECORD] = RunRecord(trainer, config)
        self.monitor = monitor
        self.write = write
        self.saver = SaveThenRotate(rundir.checkpoints)
        self.last = Checkpoint(
            state,
            self.saver,
            n_saved=n_saved,
            global_step_transform=global_step_from_engine(trainer),
            include_self=True,
        )

    def __call__(self, engine: Engine) -> None:
        # The best file first: a kill between the two leaves the previous checkpoint, whose
        # monitor state rewrites the best file on resume.
        if not self.write:
            return
        if self.monitor.improved:
            self.save_best()
        self.saver.dirname = self.rundir.checkpoints  # final only once the run has created its directory
        self.last(engine)

    def save_best(self) -> None:
        """Write ``best_model.pt`` from the monitor's best epoch (atomically, replacing the old one)."""
        if self.monitor.best_epoch and self.write:
            atomic_torch_save(
                self.rundir.best,
                {
                    "model": self.monitor.best_state,
                    "epoch": self.monitor.best_epoch,
                    "metric": self.monitor.metric,
                    "value": self.monitor.best_value,
                },
            )

    def check_resumable(self) -> None:
        """Refuse, before training, any state that a checkpoint could not restore safely.

        Checkpoints are loaded with ``weights_only=True``, which accepts tensors and plain data
        only; a handler whose ``state_dict()`` holds anything else would make every checkpoint of
        the run unloadable.

        Raises:
            ConfigError: names the object and the offending type and place.
        """
        states = {name: obj.state_dict() for name, obj in self.state.items()}
        for name, state in states.items():
            problem = _unsafe_leaf(state, "state_dict()")
            if problem is not None:
                self._refuse(name, problem)
        if _refused_by_loader(states) is not None:  # all in one go; one at a time only to say which
            for name, state in states.items():
                problem = _refused_by_loader(state)
                if problem is not None:
                    self._refuse(name, problem)

    @staticmethod
    def _refuse(name: str, problem: str) -> None:
        raise ConfigError(
            f"{name}: its {problem}, which a checkpoint cannot restore safely; "
            "keep only tensors, numbers, strings, bools, None, lists, tuples and dicts in state_dict()"
        )

    def load_newest(self, device: torch.device) -> Path | None:
        """Load the newest checkpoint that can be read *and* applied to every stateful object.

        Files that fail either way (truncated, corrupt, refused as unsafe, saved by another
        configuration) are skipped with a warning naming them; nothing is deleted. Then the best
        file is rewritten from the loaded state, so it matches the resumed run.

        Returns:
            the loaded file, or ``None`` when no epoch was saved yet.

        Raises:
            CheckpointError: checkpoints exist but none can be used.
        """
        candidates = self.rundir.checkpoint_files()
        if not candidates:
            return None
        to_load = {**{k: v for k, v in self.state.items() if k != RECORD}, "checkpointer": self.last}
        for path in candidates:
            try:
                saved = safe_torch_load(path, map_location=device)
                if not isinstance(saved, dict):
                    raise CheckpointError(f"{path} does not hold a training state")
            except CheckpointError as err:
                logger.warning("Skipping checkpoint: %s", err)
                continue
            self.check_record(path, saved)
            try:
                missing = [k for k in to_load if k not in saved]
                if missing:
                    raise CheckpointError(
                        f"{path} lacks the state of {', '.join(missing)}: it was saved by another configuration"
                    )
                Checkpoint.load_objects(to_load=to_load, checkpoint=saved)
            except CheckpointError as err:
                logger.warning("Skipping checkpoint: %s", err)
                continue
            except Exception as err:  # load_state_dict fails in many ways on a state it does not fit
                logger.warning("Skipping checkpoint: %s does not fit this run: %s", path, all_lines(err))
                continue
            self.save_best()
            return path
        raise CheckpointError(
            f"none of the {len(candidates)} checkpoint(s) in {self.rundir.checkpoints} can be used "
            "(see the warnings above); nothing was deleted"
        )

    def check_record(self, path: Path, saved: Mapping[str, Any]) -> None:
        """Refuse a checkpoint whose name or record disagrees with the run's files.

        Its epoch must be the one its name says, and the config it was trained with must be
        ``config.yaml``'s, less what a resume may change (:attr:`changeable`) and where the run lives.

        Raises:
            RunDirError: names the file and the epoch, or ``config.yaml`` and each differing key.
        """
        match = CHECKPOINT_RE.match(path.name)
        record = saved.get(RECORD)
        trainer = saved.get("trainer")
        epoch: Any = None
        if isinstance(record, Mapping):
            epoch = record.get("epoch")
        elif isinstance(trainer, Mapping) and trainer.get("epoch_length"):
            epoch = int(trainer.get("iteration", 0)) // int(trainer["epoch_length"])
        if match and epoch is not None and int(match.group(1)) != epoch:
            raise RunDirError(
                f"{path} holds the training state after epoch {epoch}, not {match.group(1)} as its name says: "
                f"it was renamed; name it checkpoint_{epoch}.pt again (or move it out of the run)"
            )
        if not isinstance(record, Mapping) or self.config is None:
            return
        try:
            trained = json.loads(record["config"])
        except (KeyError, TypeError, ValueError):
            raise RunDirError(f"{path}: its record of the config is damaged; move the file out of the run") from None
        now = {k: v for k, v in self.config().items() if k not in WHERE_A_RUN_LIVES}
        changed = [k for k in differences(trained, now) if not k.startswith(self.changeable)]
        if changed:
            before, after = flatten(trained), flatten(now)
            shown = "; ".join(
                f"{k}: {before.get(k, '(missing)')!r} trained, {after.get(k, '(missing)')!r} now" for k in changed
            )
            raise RunDirError(
                f"{self.rundir.config} does not match the config {path.name} was trained with ({shown}); "
                "put config.yaml back as it was (a resume changes settings only through --resume key=value, "
                "and only those it allows)"
            )


def _refused_by_loader(state: Any) -> str | None:
    """Why ``torch.load(..., weights_only=True)`` refuses ``state`` once saved; ``None`` if it loads it."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    try:
        torch.load(buffer, weights_only=True, map_location="cpu")
    except Exception as err:  # the loader's refusal, whatever its form
        found = re.search(r"WeightsUnpickler error: (.*?)(?:\. |\.?$)", str(err), re.MULTILINE)
        reason = found.group(1) if found else first_line(err)
        return f"state_dict() holds what torch.load(weights_only=True) refuses ({reason})"
    return None


def _unsafe_leaf(value: Any, where: str) -> str | None:
    """Where ``value`` holds something other than plain data and tensors, described; else ``None``."""
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            if type(key) not in (str, int):
                return f"{where} has a key of type {_type_name(key)}"
            found = _unsafe_leaf(item, f"{where}[{key!r}]")
            if found:
                return found
        return None
    if type(value) in (list, tuple):
        for i, item in enumerate(value):
            found = _unsafe_leaf(item, f"{where}[{i}]")
            if found:
                return found
        return None
    if type(value) in PLAIN or isinstance(value, TORCH_LEAVES):
        return None
    return f"{where} holds a {_type_name(value)}"


def _type_name(value: Any) -> str:
    kind = type(value)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
