"""Exporting a trained run as one standalone file: ONNX (``model.onnx``) or TorchScript (``model.ts``).

The exported model takes raw pixels, a batch ``[N, C, H, W]`` of values 0-255, and returns class
probabilities ``[N, classes]``: the run's normalisation and the softmax are inside it, so serving
it needs neither this package nor (for ONNX) torch. The class names, image shape and
normalisation travel with it: in the ONNX file's ``metadata_props``, in TorchScript's extra file
``metadata.json``. Next to it goes ``preprocess.py`` (:mod:`fmnist_ignite.preprocess`, numpy and
Pillow only), which makes any picture into those pixels as ``predict`` does.
"""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import preprocess
from .errors import ConfigError, ExportError, first_line
from .evaluation import load_trained_model
from .rundir import RunDir, check_output, write_output
from .serving import ONNX_OPSET, ExportableClassifier, onnx_model

__all__ = ["FORMATS", "ONNX_OPSET", "ExportableClassifier", "export_run"]

FORMATS = ("onnx", "torchscript")
INSTALL_HINT = "pip install 'fmnist_ignite[export]'"


def export_run(
    run_dir: str | Path,
    checkpoint: str | None = None,
    fmt: str = "onnx",
    output: str | Path | None = None,
    force: bool = False,
) -> Path:
    """Write the run's model as ``RUN_DIR/model.onnx`` (or ``model.ts``, or ``output``); returns the path.

    The weights are chosen as ``evaluate`` and ``predict`` choose them: ``checkpoint`` is ``None``
    (``model.pt``, else the best model), ``best``, ``last`` or a file. The ONNX model takes float32
    pixels (cast uint8 arrays with ``.astype(np.float32)``), has a dynamic batch axis and opset
    :data:`ONNX_OPSET`; the TorchScript model takes uint8 or float pixels. The file is written
    atomically by :func:`~fmnist_ignite.rundir.write_output`: the run's own ``model.onnx`` /
    ``model.ts`` is replaced whole or not at all; an ``output`` that exists is replaced only with
    ``force``, and never when it is a special file, a folder, a link or another file of a run.

    ``preprocess.py`` (the source of :mod:`fmnist_ignite.preprocess`) is written next to the model,
    under the same rules; one that holds the same text already is left as it is. Both are checked
    before either is written.

    Raises:
        ConfigError: ``fmt`` is neither ``onnx`` nor ``torchscript``, or the output is refused or
            cannot be written (one line naming it).
        RunDirError: no such run directory, or no ``data.json`` in it.
        CheckpointError: no usable weights.
        ExportError: the ``onnx`` package is missing, or the model cannot be exported.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"export format '{fmt}': use onnx or torchscript")
    run_dir = Path(run_dir)
    trained = load_trained_model(run_dir, checkpoint)
    rundir = RunDir(run_dir)
    info = rundir.read_input()
    weights = trained.weights
    classifier = ExportableClassifier(trained.model, info.mean, info.std, info.normalize).eval()
    metadata = {
        "classes": info.classes,
        "image_shape": list(info.image_shape),
        "mean": info.mean,
        "std": info.std,
        "normalize": info.normalize,
        "dataset": trained.dataset,
        "background": info.background,
        "weights": _relative_to(weights, run_dir),
        "input": f"pixels: {'float32' if fmt == 'onnx' else 'uint8 or float'} [N, C, H, W], values 0-255",
        "output": "probabilities: float32 [N, len(classes)]",
    }
    example = torch.zeros((2, *info.image_shape))
    if fmt == "onnx":
        payload = bytes(onnx_model(classifier, example, metadata, INSTALL_HINT).SerializeToString())
    else:
        payload = _torchscript_bytes(classifier, metadata)
    own = rundir.exported(fmt)
    path = Path(output) if output is not None else own
    companion = path.parent / rundir.preprocess.name
    source = Path(preprocess.__file__).read_bytes()
    check_output(path, force, own)
    ship = not _holds(companion, source)
    if ship:
        check_output(companion, force, own=rundir.preprocess)
    write_output(path, lambda f: f.write(payload), force=force, own=own)
    if ship:
        write_output(companion, lambda f: f.write(source), force=force, own=rundir.preprocess)
    return path


def _holds(path: Path, content: bytes) -> bool:
    """Whether ``path`` is a regular file (not a link) holding ``content``."""
    try:
        found = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(found.st_mode) and found.st_size == len(content) and path.read_bytes() == content


def _relative_to(path: Path, run_dir: Path) -> str:
    try:
        return str(path.resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(path.resolve())


def _torchscript_bytes(classifier: nn.Module, metadata: dict[str, Any]) -> bytes:
    try:
        scripted = torch.jit.script(classifier)
    except Exception as err:  # TorchScript refuses much of Python, in many ways
        raise ExportError(f"this run's model cannot be compiled to TorchScript: {first_line(err)}") from None
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer, _extra_files={"metadata.json": json.dumps(metadata)})
    return buffer.getvalue()
