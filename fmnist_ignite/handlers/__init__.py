"""Built-in handlers, each registered under a short name in :data:`fmnist_ignite.registry.HANDLERS`.

They are plugins like any other: the experiment attaches them through :func:`attach_handler`
from the same entries a user writes under ``handlers:``, and never looks one up by name.
"""

from .attach import attach_handler
from .early_stopping import EarlyStopping
from .mlflow import MLflow
from .progress import Progress
from .tensorboard import TensorBoard

__all__ = ["EarlyStopping", "MLflow", "Progress", "TensorBoard", "attach_handler"]
