"""The run directory's JSON files, each defined once: what it holds, how it is checked when read.

``data.json`` (:class:`InputDescription`), ``metrics.json`` (:class:`Metrics`), the records of
``history.json`` (:class:`EpochRecord`) and ``mlflow.json`` (:class:`MlflowRun`). The run writes
them through :class:`~fmnist_ignite.rundir.RunDir`, and everything that reads a run (evaluate,
predict, export, compare, sweeps, MLflow) reads them through it too, so a damaged file is one
line naming the file and the field, wherever it is read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from .errors import RunDirError, first_line

MAX_FILE_BYTES = 64 * 2**20  # far more than any run writes
Side = Annotated[StrictInt, Field(gt=0, le=4096)]
Number = Annotated[float, Field(strict=True)]  # an int or a float; not text, not true/false


class _RunFile(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    # How each field must look, said in the one-line error when it does not.
    must: ClassVar[dict[str, str]] = {}


class InputDescription(_RunFile):
    """``data.json``: what the model takes and what its outputs mean (written when a run starts)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    must: ClassVar[dict[str, str]] = {
        "image_shape": "[channels, height, width] of positive integers",
        "classes": "a non-empty list of names",
        "mean": "a finite number",
        "std": "a finite number",
        "normalize": "true or false",
        "background": "dark, light or null",
        "dataset": "the data set's name (text) or null",
    }

    image_shape: tuple[Side, Side, Side]
    classes: list[str] = Field(min_length=1)
    mean: Number = Field(allow_inf_nan=False)
    std: Number = Field(gt=0, allow_inf_nan=False)
    normalize: StrictBool
    background: Literal["dark", "light"] | None = None
    dataset: str | None = None  # data.dataset; absent from runs made before it was recorded


class Metrics(_RunFile):
    """``metrics.json``: the test metrics and the best epoch; written last, so it marks a finished run."""

    must: ClassVar[dict[str, str]] = {"test_accuracy": "a number", "best_value": "a number", "test_loss": "a number"}

    test_accuracy: Number | None = None
    test_loss: Number | None = None
    monitor: str | None = None
    mode: str | None = None
    best_epoch: int | None = None
    best_value: Number | None = None
    epochs_trained: int | None = None
    weights: str | None = None
    weights_epoch: int | None = None
    per_class_accuracy: dict[str, Number] | list[Number] | None = None
    pruned_epoch: int | None = None


class EpochRecord(_RunFile):
    """One epoch of ``history.json``: ``epoch``, the train and validation metrics, ``lr``, ``seconds``."""

    epoch: StrictInt
    val_accuracy: Number
    val_loss: Number


class MlflowRun(_RunFile):
    """``mlflow.json``: the MLflow run a run directory logs to (so a resume continues the same one)."""

    must: ClassVar[dict[str, str]] = {"run_id": "the MLflow run's id (text)"}

    run_id: str = Field(min_length=1)
    experiment_id: str | None = None
    tracking_uri: str | None = None


File = TypeVar("File", bound=_RunFile)


def read_json(path: Path) -> Any:
    """A run's JSON file, or one line saying why it cannot be read.

    Raises:
        RunDirError: missing, unreadable, too large, empty or not JSON (naming the file).
    """
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise RunDirError(f"{path}: larger than 64 MiB, which no run writes")
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing; the run writes it (see the run directory's layout)") from None
    except OSError as err:
        raise RunDirError(f"{path}: cannot be read ({err.strerror or err})") from None
    except (ValueError, RecursionError) as err:
        reason = "empty" if not path.stat().st_size else f"not valid JSON ({first_line(err)})"
        raise RunDirError(f"{path}: {reason}; the run wrote it whole, so it was changed since") from None


def parse(kind: type[File], data: Any, where: str) -> File:
    """``data`` checked as ``kind``; one line naming ``where`` and the first field that is wrong.

    Raises:
        RunDirError: the data is not an object, or a field is missing or malformed.
    """
    if not isinstance(data, dict):
        raise RunDirError(f"{where}: expected a JSON object, got {type(data).__name__}")
    try:
        return kind.model_validate(data)
    except ValidationError as err:
        problem = err.errors()[0]
        field = str(problem["loc"][0]) if problem["loc"] else "?"
        if problem["type"] == "greater_than":
            must = f"greater than {problem['ctx']['gt']}"
        elif problem["type"] == "extra_forbidden":
            raise RunDirError(f"{where}: '{field}' is not a field of this file") from None
        else:
            must = kind.must.get(field, "a number")
        raise RunDirError(f"{where}: '{field}' must be {must}") from None


def parse_history(data: Any, where: str) -> list[dict[str, Any]]:
    """``history.json``'s records, each checked as an :class:`EpochRecord`.

    Raises:
        RunDirError: not a list, or a record that is not an epoch record (naming its index and epoch).
    """
    if not isinstance(data, list):
        raise RunDirError(f"{where}: expected a JSON list of epoch records, got {type(data).__name__}")
    for i, record in enumerate(data):
        if not isinstance(record, dict) or type(record.get("epoch")) is not int:
            raise RunDirError(f"{where}: record {i} is not an epoch record (an object with an integer 'epoch')")
        try:
            EpochRecord.model_validate(record)
        except ValidationError as err:
            field = err.errors()[0]["loc"][0]
            raise RunDirError(f"{where}: record {i} (epoch {record['epoch']}) lacks the number '{field}'") from None
    return data
