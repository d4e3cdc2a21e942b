"""The one definition of the best epoch: ``monitor.metric`` and ``monitor.mode`` from the config.

Early stopping, ``checkpoints/best_model.pt``, ``model.pt``, the test metrics, ``metrics.json``
and ``evaluate --checkpoint best`` all read the best epoch from the run's :class:`Monitor`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from .errors import ConfigError


class Monitor:
    """Follows one column of the history and keeps the best epoch's value and weights.

    Updated when an epoch completes, right after validation and the history record, before any
    handler: the weights it keeps are exactly the ones that were validated. Ties keep the
    earliest epoch. Its state (best epoch, value and weights) is part of every checkpoint.

    Args:
        model: the model whose weights are kept.
        metric: a history column, such as ``val_accuracy``.
        mode: ``max`` or ``min``.
    """

    def __init__(self, model: torch.nn.Module, metric: str, mode: Literal["max", "min"]) -> None:
        self.model = model
        self.metric = metric
        self.mode = mode
        self.best_value: float | None = None
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] = {}
        self.improved = False

    def is_better(self, value: float, reference: float | None) -> bool:
        """Whether ``value`` beats ``reference`` (anything beats ``None``)."""
        if reference is None:
            return True
        return value > reference if self.mode == "max" else value < reference

    def value(self, record: Mapping[str, Any]) -> float:
        """The monitored value in a history record.

        Raises:
            ConfigError: the record has no such column.
        """
        if self.metric not in record:
            raise ConfigError(
                f"monitor.metric: the history has no column '{self.metric}'; "
                f"choose one of {', '.join(k for k in record if k not in ('epoch', 'seconds'))}"
            )
        return float(record[self.metric])

    def update(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Look at the newest record; keep its epoch and the model's weights if it is the best so far."""
        record = records[-1]
        value = self.value(record)
        self.improved = self.is_better(value, self.best_value)
        if self.improved:
            self.best_value = value
            self.best_epoch = int(record["epoch"])
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def describe(self) -> dict[str, Any]:
        """What ``metrics.json`` says of the best epoch."""
        return {"monitor": self.metric, "mode": self.mode, "best_epoch": self.best_epoch, "best_value": self.best_value}

    def state_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "mode": self.mode,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if (state["metric"], state["mode"]) != (self.metric, self.mode):
            raise ValueError(
                f"the checkpoint's best epoch is by {state['metric']} ({state['mode']}), "
                f"this run's by {self.metric} ({self.mode})"
            )
        self.best_value = state["best_value"]
        self.best_epoch = state["best_epoch"]
        self.best_state = dict(state["best_state"])
        self.improved = False
