"""fmnist_ignite: train and evaluate a logistic-regression classifier on Fashion-MNIST with PyTorch Ignite.

The whole workflow in three calls::

    from fmnist_ignite import build_experiment, load_config

    experiment = build_experiment(load_config("configs/base.yaml"))
    metrics = experiment.run()
"""

from .build import build_experiment, resume_experiment
from .config import Config, load_config
from .context import Context
from .data import ImageData
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ExportError,
    FmnistIgniteError,
    RunDirError,
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
from .registry import DATASETS, HANDLERS, MODELS, Registry
from .rundir import RunDir, SweepDir
from .sweep import run_sweep

__version__ = "0.1.0"

__all__ = [
    "DATASETS",
    "HANDLERS",
    "MODELS",
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
    "RunEvents",
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
    "load_trained_model",
    "predict_images",
    "resume_experiment",
    "run_sweep",
]
