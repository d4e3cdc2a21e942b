"""Checkpointing: the newest full training states, and the best model, under ``RUN_DIR/checkpoints``."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ignite.engine import Engine
from ignite.handlers import Checkpoint, DiskSaver, global_step_from_engine

from ..context import Context
from ..errors import CheckpointError
from ..fileio import safe_torch_load
from ..registry import HANDLERS

logger = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint_(\d+)\.pt$")
BEST_MODEL_RE = re.compile(r"^best_model_(\d+)_.*\.pt$")


def saved_files(dirname: Path, pattern: re.Pattern[str]) -> list[Path]:
    """Files in ``dirname`` whose name matches ``pattern`` (epoch as its first group), newest epoch first."""
    if not dirname.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in dirname.iterdir() if (m := pattern.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


class RunDirSaver(DiskSaver):
    """Ignite's atomic ``DiskSaver``, creating its folder at the first save instead of on construction.

    Building an experiment must not touch the disk; only running it does.
    """

    @staticmethod
    def _check_and_setup(dirname: Path, create_dir: bool, require_empty: bool) -> None:
        return None

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        self.dirname.mkdir(parents=True, exist_ok=True)
        super().__call__(checkpoint, filename, metadata)

    def remove(self, filename: str) -> None:
        # A process killed between rotating the best model and saving its checkpoint leaves
        # bookkeeping that names an already-deleted file; the resumed run must not trip on it.
        (self.dirname / filename).unlink(missing_ok=True)


@HANDLERS.register("best_model")
class BestModel:
    """Saves the weights of the epoch with the best validation accuracy so far.

    The file is ``best_model_<epoch>_val_accuracy=<score>.pt`` under ``RUN_DIR/checkpoints``.

    Runs when an epoch completes, right after validation and before any user handler, so the file
    holds exactly the weights that were validated. Only the best file is kept; its bookkeeping is
    part of the training state, so a resumed run replaces it only when it is beaten.

    Args:
        context: the experiment context.
    """

    def __init__(self, context: Context) -> None:
        evaluator = context.evaluator
        self.checkpoint = Checkpoint(
            {"model": context.model},
            RunDirSaver(context.run_dir / "checkpoints", require_empty=False),
            filename_prefix="best",
            score_function=lambda _: float(evaluator.state.metrics["accuracy"]),
            score_name="val_accuracy",
            n_saved=1,
            global_step_transform=global_step_from_engine(context.trainer),
        )

    def __call__(self, engine: Engine) -> None:
        self.checkpoint(engine)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.checkpoint.state_dict())

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.checkpoint.load_state_dict(state)


@HANDLERS.register("checkpoint")
class Checkpointing:
    """Saves the full training state after every epoch and the best model by validation accuracy.

    Runs when an epoch completes, after every other handler, so that what it saves includes their
    updates for that epoch. Each ``checkpoint_<epoch>.pt`` holds exactly the ``state_dict()`` of
    every object in :attr:`Context.state` (model, optimizer, scheduler, trainer, RNG, history, early
    stopping, best model, stateful user handlers, and its own bookkeeping); the newest ``n_saved``
    are kept. Files are written to a temporary name and renamed, so a killed process leaves no partial file.

    Args:
        context: the experiment context.
        n_saved: how many training states to keep.
    """

    def __init__(self, context: Context, n_saved: int = 2) -> None:
        self.context = context
        self.dirname = context.run_dir / "checkpoints"
        self.last = Checkpoint(
            context.state,
            RunDirSaver(self.dirname, require_empty=False),
            n_saved=n_saved,
            global_step_transform=global_step_from_engine(context.trainer),
            include_self=True,
        )

    def __call__(self, engine: Engine) -> None:
        self.last(engine)

    def candidates(self) -> list[Path]:
        """Saved training states, newest first."""
        return saved_files(self.dirname, CHECKPOINT_RE)

    def load_latest(self) -> Path:
        """Load the newest checkpoint that can be read into every stateful object.

        Unreadable files (truncated, corrupt, or refused as unsafe) are skipped with a warning
        naming them; nothing is deleted.

        Raises:
            CheckpointError: no checkpoint exists or none can be read.
        """
        candidates = self.candidates()
        if not candidates:
            raise CheckpointError(f"no checkpoint in {self.dirname}; the run cannot be resumed, start a new one")
        for path in candidates:
            try:
                state = safe_torch_load(path, map_location=self.context.device)
            except CheckpointError as err:
                logger.warning("Skipping checkpoint: %s", err)
                continue
            if not isinstance(state, dict):
                logger.warning("Skipping checkpoint: %s does not hold a training state", path)
                continue
            to_load = {**self.context.state, "checkpointer": self.last}
            missing = [k for k in to_load if k not in state]
            if missing:
                raise CheckpointError(
                    f"{path} lacks the state of {', '.join(missing)}: it was saved by a different "
                    "configuration (handlers); resume with the run's own config.yaml"
                )
            Checkpoint.load_objects(to_load=to_load, checkpoint=state)
            return path
        raise CheckpointError(
            f"none of the {len(candidates)} checkpoint(s) in {self.dirname} can be read (see the warnings above); "
            "nothing was deleted"
        )
