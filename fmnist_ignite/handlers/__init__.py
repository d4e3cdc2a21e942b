"""Built-in handlers, each registered under a short name in :data:`fmnist_ignite.registry.HANDLERS`."""

from .checkpoint import BestModel, Checkpointing
from .early_stopping import EarlyStopping
from .history import History
from .progress import Progress
from .tensorboard import TensorBoard

__all__ = ["BestModel", "Checkpointing", "EarlyStopping", "History", "Progress", "TensorBoard"]
