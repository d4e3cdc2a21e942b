"""The trained model as it is served: pixels 0-255 in, class probabilities out, and its ONNX form.

Both ``export`` (``model.onnx``, ``model.ts``) and the MLflow model of a tracked run are made of
:class:`ExportableClassifier`, so they give the same probabilities as training's evaluation did.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .engine import pixel_scaling
from .errors import ExportError, first_line
from .runfiles import InputDescription

if TYPE_CHECKING:
    import onnx

ONNX_OPSET = 17


class ExportableClassifier(nn.Module):
    """A trained classifier with the run's pixel scaling in front and a softmax behind.

    The scaling is the one training applied to each batch (:func:`~fmnist_ignite.engine.pixel_scaling`),
    so the same pixels give the same probabilities as the model did in training and evaluation.

    Args:
        model: the trained model; takes scaled float images ``[N, C, H, W]`` and returns logits.
        mean: the data set's pixel mean on the [0, 1] scale (``data.json``).
        std: the data set's pixel standard deviation on the [0, 1] scale.
        normalize: whether the run standardised pixels with ``mean`` and ``std`` (else scaled to [0, 1]).

    Example:
        >>> import torch
        >>> from fmnist_ignite import LogisticRegression
        >>> from fmnist_ignite.serving import ExportableClassifier
        >>> classifier = ExportableClassifier(LogisticRegression(784, 10), 0.286, 0.353, True)
        >>> probabilities = classifier(torch.full((2, 1, 28, 28), 255, dtype=torch.uint8))
        >>> probabilities.shape, bool(torch.allclose(probabilities.sum(1), torch.ones(2)))
        (torch.Size([2, 10]), True)
    """

    def __init__(self, model: nn.Module, mean: float, std: float, normalize: bool) -> None:
        super().__init__()
        self.model = model
        self.scale, self.shift = pixel_scaling(mean, std, normalize)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``[N, classes]`` of pixels 0-255 ``[N, C, H, W]``, uint8 or float."""
        return self.model(pixels.float() * self.scale - self.shift).softmax(1)


def describe(info: InputDescription, pixels: str) -> dict[str, Any]:
    """What travels with a served model: the class names, image shape and scaling of ``data.json``, and
    its input (``pixels``: the type it takes) and output."""
    return {
        "classes": info.classes,
        "image_shape": list(info.image_shape),
        "mean": info.mean,
        "std": info.std,
        "normalize": info.normalize,
        "input": f"pixels: {pixels} [N, C, H, W], values 0-255",
        "output": "probabilities: float32 [N, len(classes)]",
    }


def onnx_model(classifier: nn.Module, example: torch.Tensor, metadata: dict[str, Any], hint: str) -> onnx.ModelProto:
    """``classifier`` as an ONNX model whose input ``pixels`` has ``example``'s type and shape (any batch size),
    with ``metadata`` (as JSON) in its ``metadata_props``.

    Raises:
        ExportError: the ``onnx`` package is missing (``hint`` says how to install it), or the model
            cannot be exported.
    """
    try:
        import onnx
    except ImportError:
        raise ExportError(f"exporting to ONNX needs the onnx package: {hint}") from None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            # The TorchScript-based exporter: it needs no onnxscript and works on every torch the
            # export extra allows; the torch.export-based one (dynamo=True) is the way off it.
            torch.onnx.export(
                classifier,
                (example,),
                Path(tmp) / "model.onnx",
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=["pixels"],
                output_names=["probabilities"],
                dynamic_axes={"pixels": {0: "batch"}, "probabilities": {0: "batch"}},
            )
            proto = onnx.load(Path(tmp) / "model.onnx")
    except Exception as err:  # exporters fail in many ways on an unsupported model
        raise ExportError(f"this run's model cannot be exported to ONNX: {first_line(err)}") from None
    onnx.helper.set_model_props(proto, {key: json.dumps(value) for key, value in metadata.items()})
    onnx.checker.check_model(proto)
    return proto
