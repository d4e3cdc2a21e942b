"""Training-time transforms (``data.transforms``) on the uint8 batches of the fast path.

A ``torchvision.transforms.v2`` transform draws its random parameters once per call, from
torch's global generator: called on a whole batch, it would flip or crop every image of it
alike. :class:`BatchTransform` calls it on each image, after seeding the global generator with
a seed of the image's own, derived from the run's seed, the epoch, the batch and the image's
place in the batch alone; all this happens inside :func:`torch.random.fork_rng`, so the streams
that drew the initial weights and the rest of the run are left as they were. A resumed run
therefore transforms every image as the uninterrupted run did, and the processes of a
data-parallel run together transform each batch as one process would.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..config import make_transform
from ..errors import ConfigError, first_line

TRANSFORM_STREAM = 0x7472616E  # keeps the transforms' seeds apart from any other use of the run's seed


class BatchTransform:
    """Apply ``data.transforms`` to each image of a training batch, with randomness that a resume repeats.

    Args:
        entries: ``data.transforms``: one ``{name: kwargs}`` mapping per transform, applied in order.
        seed: the run's seed.
    """

    def __init__(self, entries: Sequence[Mapping[str, Mapping[str, Any] | None]], seed: int) -> None:
        self.names = [name for entry in entries for name in entry]
        steps = [make_transform(name, kwargs or {}) for entry in entries for name, kwargs in entry.items()]
        self.transform: Callable[[torch.Tensor], Any] = steps[0] if len(steps) == 1 else _compose(steps)
        self.seed = seed

    def __call__(self, images: torch.Tensor, epoch: int, batch: int, offset: int = 0) -> torch.Tensor:
        """The transformed ``images`` ``(n, C, H, W)``: images ``offset .. offset + n - 1`` of batch ``batch``
        (counted from 0) of epoch ``epoch`` (a process's share of the batch in a data-parallel run)."""
        seeds = self.image_seeds(epoch, batch, offset, len(images))
        devices = [images.device.index or 0] if images.device.type == "cuda" else []
        out = torch.empty_like(images)
        with torch.random.fork_rng(devices=devices):
            for i, image_seed in enumerate(seeds):
                torch.manual_seed(image_seed)
                out[i] = self.transform(images[i])
        return out

    def image_seeds(self, epoch: int, batch: int, offset: int, count: int) -> list[int]:
        """The seeds of images ``offset .. offset + count - 1`` of a batch: a function of (seed, epoch, batch) alone."""
        base = np.random.SeedSequence([self.seed, epoch, batch, TRANSFORM_STREAM]).generate_state(1, np.uint64)[0]
        return [(int(base) + offset + i) % 2**63 for i in range(count)]

    def check(self, example: torch.Tensor) -> None:
        """Try the transforms on one image ``(C, H, W)``: they must give a uint8 image of the same shape.

        Raises:
            ConfigError: naming ``data.transforms``: a transform failed on the image, or changed its shape or type.
        """
        try:
            with torch.random.fork_rng(devices=[]):
                out = self.transform(example)
        except Exception as err:  # a transform refuses an input in many ways
            raise ConfigError(
                f"data.transforms ({', '.join(self.names)}) fail on a {_describe(example)} training image "
                f"({type(err).__name__}: {first_line(err)}); use transforms that take uint8 images"
            ) from None
        if not isinstance(out, torch.Tensor) or out.dtype != torch.uint8 or out.shape != example.shape:
            shown = _describe(out) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(
                f"data.transforms ({', '.join(self.names)}) turn a {_describe(example)} training image into a "
                f"{shown} one; the model takes the data's shape and the batches stay uint8: keep the size "
                "(e.g. RandomCrop with padding) and leave out type conversions and Normalize"
            )


def make_batch_transform(entries: Sequence[Mapping[str, Mapping[str, Any] | None]], seed: int) -> BatchTransform | None:
    """The :class:`BatchTransform` of ``data.transforms``; ``None`` for an empty list (training as without it)."""
    return BatchTransform(entries, seed) if entries else None


def _compose(steps: list[Any]) -> Any:
    from torchvision.transforms import v2

    return v2.Compose(steps)


def _describe(image: torch.Tensor) -> str:
    return f"{str(image.dtype).removeprefix('torch.')} {tuple(image.shape)}"
