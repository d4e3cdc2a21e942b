"""fmnist_ignite: train and evaluate a logistic-regression classifier on Fashion-MNIST with PyTorch Ignite.

Train as the command line does (``python -m fmnist_ignite configs/base.yaml optimizer.lr=0.05``)::

    import fmnist_ignite

    run = fmnist_ignite.train("configs/base.yaml", "optimizer.lr=0.05")
    run.dir, run.history[-1], run.metrics["test_accuracy"]

or build the experiment, attach handlers of your own, and run it::

    from fmnist_ignite import build_experiment, load_config

    experiment = build_experiment(load_config("configs/base.yaml"))
    metrics = experiment.run()

The names below are imported when first used, so ``python -m fmnist_ignite --help`` (and a
Ctrl-C while it starts) does not wait for torch and Ignite to load.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_WHERE = {
    "DATASETS": "registry",
    "HANDLERS": "registry",
    "MODELS": "registry",
    "OPTIMIZERS": "registry",
    "SCHEDULERS": "registry",
    "Registry": "registry",
    "CheckpointError": "errors",
    "ConfigError": "errors",
    "DataError": "errors",
    "ExportError": "errors",
    "FmnistIgniteError": "errors",
    "RunDirError": "errors",
    "RunError": "errors",
    "TrainingError": "errors",
    "Config": "config",
    "load_config": "config",
    "Context": "context",
    "ImageData": "data",
    "load_data": "data",
    "samples_figure": "reports",
    "Experiment": "experiment",
    "build_experiment": "build",
    "resume_experiment": "resume",
    "TrainedModel": "evaluation",
    "load_trained_model": "evaluation",
    "RunEvents": "events",
    "export_run": "export",
    "compare_runs": "inspect_runs",
    "evaluate_run": "inspect_runs",
    "predict_images": "inspect_runs",
    "LogisticRegression": "models",
    "Monitor": "monitor",
    "RunDir": "rundir",
    "SweepDir": "rundir",
    "SweepError": "errors",
    "run_sweep": "app.workers",
    "RunResult": "app.launch",
    "train": "app.launch",
}

__all__ = [
    "DATASETS",
    "HANDLERS",
    "MODELS",
    "OPTIMIZERS",
    "SCHEDULERS",
    "CheckpointError",
    "Config",
    "ConfigError",
    "Context",
    "DataError",
    "Experiment",
    "ExportError",
    "FmnistIgniteError",
    "ImageData",
    "LogisticRegression",
    "Monitor",
    "Registry",
    "RunDir",
    "RunDirError",
    "RunError",
    "RunEvents",
    "RunResult",
    "SweepDir",
    "SweepError",
    "TrainedModel",
    "TrainingError",
    "__version__",
    "build_experiment",
    "compare_runs",
    "evaluate_run",
    "export_run",
    "load_config",
    "load_data",
    "load_trained_model",
    "predict_images",
    "resume_experiment",
    "run_sweep",
    "samples_figure",
    "train",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'fmnist_ignite' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from .app.launch import RunResult, train
    from .app.workers import run_sweep
    from .build import build_experiment
    from .config import Config, load_config
    from .context import Context
    from .data import ImageData, load_data
    from .errors import (
        CheckpointError,
        ConfigError,
        DataError,
        ExportError,
        FmnistIgniteError,
        RunDirError,
        RunError,
        SweepError,
        TrainingError,
    )
    from .evaluation import TrainedModel, load_trained_model
    from .events import RunEvents
    from .experiment import Experiment
    from .export import export_run
    from .inspect_runs import compare_runs, evaluate_run, predict_images
    from .models import LogisticRegression
    from .monitor import Monitor
    from .registry import DATASETS, HANDLERS, MODELS, OPTIMIZERS, SCHEDULERS, Registry
    from .reports import samples_figure
    from .resume import resume_experiment
    from .rundir import RunDir, SweepDir
