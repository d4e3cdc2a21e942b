"""Resuming a run: what a resume may change, and building the run again from its own ``config.yaml``.

:data:`CHANGEABLE_ON_RESUME` is the one statement of what a resume may change; the error
message, the command line's help and the docs take their words from :func:`what_may_change`.

The command line reads :func:`what_may_change` to write its ``--help``, which must not wait
for torch: this module imports the configuration, the run directory and the experiment builder
(which import torch) where it uses them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, RunDirError

if TYPE_CHECKING:
    from .config import Config
    from .data import ImageData
    from .experiment import Experiment
    from .rundir import RunDir

# What a resume may change: settings that leave the continuation exact (max_epochs also rebuilds a
# schedule over the whole run, such as cosine, over the new total), and display. A key ending in "."
# stands for its section.
CHANGEABLE_ON_RESUME = ("trainer.max_epochs", "early_stopping.patience", "logging.")


def what_may_change(quote: str = "") -> str:
    """What a resume may change, in words, each key between ``quote`` marks.

    Example:
        >>> from fmnist_ignite.resume import what_may_change
        >>> what_may_change()
        'trainer.max_epochs, early_stopping.patience and logging.*'
    """
    *first, last = (f"{quote}{k + '*' if k.endswith('.') else k}{quote}" for k in CHANGEABLE_ON_RESUME)
    return f"{', '.join(first)} and {last}"


def resume_changes(saved: Config, overrides: Iterable[str]) -> tuple[Config, dict[str, Any]]:
    """Apply ``key=value`` overrides to a run's saved config, allowing only what a resume may change.

    Returns:
        the new config, and each setting that changed with its new value.

    Raises:
        ConfigError: an override is malformed or invalid, or changes a setting that would break the
            exact continuation; the message lists what may change.
    """
    from .config import differences, load_config

    config = load_config(saved.to_dict(), overrides)
    changes = differences(saved.to_dict(), config.to_dict())
    refused = [k for k in changes if not k.startswith(CHANGEABLE_ON_RESUME)]
    if refused:
        raise ConfigError(
            f"--resume cannot change {', '.join(refused)}: the run would no longer continue exactly; "
            f"a resume may change only {what_may_change()}; to start a new run from this one's weights, use "
            "--init-from RUN_DIR with a config"
        )
    return config, changes


def resume_config(run_dir: str | Path | RunDir, overrides: Iterable[str] = ()) -> tuple[Config, dict[str, Any]]:
    """A run's config with the changes a resume allows, and those changes (see :func:`resume_experiment`).

    Raises:
        RunDirError: ``run_dir`` is not a run directory.
        ConfigError: an override is invalid or changes a setting a resume may not change.
    """
    from .rundir import RunDir

    rundir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    return resume_changes(rundir.load_config(), overrides)


def refuse_if_finished(rundir: RunDir, config: Config, changes: Mapping[str, Any]) -> None:
    """A finished run resumes only to train longer.

    Raises:
        RunDirError: the run has finished and ``changes`` does not extend it.
    """
    if rundir.finished and not changes:
        raise RunDirError(
            f"the run in {rundir} has finished (metrics.json exists); to train it longer, resume it with "
            f"trainer.max_epochs=N above {config.trainer.max_epochs}, or start a new run from its weights "
            f"with --init-from {rundir}"
        )


def resume_experiment(run_dir: str | Path, data: ImageData | None = None, overrides: Iterable[str] = ()) -> Experiment:
    """Rebuild a run from ``RUN_DIR/config.yaml``; its :meth:`~Experiment.run` continues from the newest checkpoint.

    ``overrides`` (``key=value``) may change what leaves the continuation exact, the settings
    :data:`CHANGEABLE_ON_RESUME` names (:func:`what_may_change` says them in words). The run's
    ``config.yaml`` is rewritten with them when it resumes. A finished run can be extended this
    way: it trains on to the new ``max_epochs`` (unless early stopping, with its restored counter
    and the new patience, stops it), and its ``metrics.json``, report and pictures are rewritten
    at the new end. A cosine schedule is rebuilt over the new total: from the resumed iteration on,
    the rate follows the cosine from ``optimizer.lr`` to ``scheduler.min_lr`` over all
    ``max_epochs`` (so it first rises from near ``min_lr`` to where that curve stands).

    Raises:
        RunDirError: ``run_dir`` is not a run directory, or the run has finished and no override
            extends it.
        ConfigError: an override is invalid or changes a setting a resume may not change.
    """
    from .build import _build
    from .rundir import RunDir

    rundir = RunDir(run_dir)
    config, changes = resume_config(rundir, overrides)
    refuse_if_finished(rundir, config, changes)
    experiment = _build(config, RunDir(config.run_dir), data, initialize=False)
    experiment.resuming = True
    experiment.changes = changes
    experiment.checkpointer.changeable = CHANGEABLE_ON_RESUME
    return experiment
