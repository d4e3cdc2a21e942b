"""fmnist_ignite: train and evaluate a logistic-regression classifier on Fashion-MNIST with PyTorch Ignite.

The whole workflow in three calls::

    from fmnist_ignite import build_experiment, load_config

    experiment = build_experiment(load_config("configs/base.yaml"))
    metrics = experiment.run()
"""

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
    TrainingError,
)
from .experiment import Experiment, build_experiment, resume_experiment
from .models import LogisticRegression
from .registry import DATASETS, HANDLERS, MODELS, Registry

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
    "Registry",
    "RunDirError",
    "TrainingError",
    "__version__",
    "build_experiment",
    "load_config",
    "resume_experiment",
]
