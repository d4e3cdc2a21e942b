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

from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch

from ..config import make_transform
from ..errors import ConfigError, first_line

TRANSFORM_STREAM = 0x7472616E  # keeps the transforms' seeds apart from any other use of the run's seed


class BatchTransform:
    """Apply ``data.transforms`` to each image of a training batch, with randomness that a resume repeats.

    Each transform draws each image's parameters from the image's own seed; images whose
    parameters came out equal (the same crop offset, flipped or not) are then transformed
    together, in one call of the transform's kernel. The result is that of calling the transform
    on each image alone, at a fraction of the cost. A transform that decides in its own
    ``forward`` (``AutoAugment``, ``TrivialAugmentWide``, ...) is called on each image alone.

    Args:
        entries: ``data.transforms``: one ``{name: kwargs}`` mapping per transform, applied in order.
        seed: the run's seed.
    """

    def __init__(self, entries: Sequence[Mapping[str, Mapping[str, Any] | None]], seed: int) -> None:
        self.names = [name for entry in entries for name in entry]
        self.steps = [make_transform(name, kwargs or {}) for entry in entries for name, kwargs in entry.items()]
        self.seed = seed

    def __call__(self, images: torch.Tensor, epoch: int, batch: int, offset: int = 0) -> torch.Tensor:
        """The transformed ``images`` ``(n, C, H, W)``: images ``offset .. offset + n - 1`` of batch ``batch``
        (counted from 0) of epoch ``epoch`` (a process's share of the batch in a data-parallel run)."""
        seeds = self.image_seeds(epoch, batch, offset, len(images))
        devices = [images.device.index or 0] if images.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            for number, step in enumerate(self.steps):
                step_seeds = [(s + number) % 2**63 for s in seeds]
                kind = _forward_kind(step)
                if kind is None:
                    images = _apply_each(step, images, step_seeds)
                else:
                    images = _apply_grouped(step, images, step_seeds, coin=kind == "coin")
        return images

    def image_seeds(self, epoch: int, batch: int, offset: int, count: int) -> list[int]:
        """The seeds of images ``offset .. offset + count - 1`` of a batch: a function of (seed, epoch, batch) alone.

        Transform ``k`` (from 0) of the list draws image ``i``'s parameters from seed ``seeds[i] + k``.
        """
        base = int(np.random.SeedSequence([self.seed, epoch, batch, TRANSFORM_STREAM]).generate_state(1, np.uint64)[0])
        width = len(self.steps)
        return [(base + (offset + i) * width) % 2**63 for i in range(count)]

    def check(self, example: torch.Tensor) -> None:
        """Try the transforms on one image ``(C, H, W)``: they must give a uint8 image of the same shape.

        Raises:
            ConfigError: naming ``data.transforms``: a transform failed on the image, or changed its shape or type.
        """
        try:
            with torch.random.fork_rng(devices=[]):
                out = example
                for step in self.steps:
                    out = step(out)
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


def _seed(seed: int, device: torch.device) -> None:
    """Seed the generators a transform draws from (``torch.manual_seed`` would also walk every backend: slow)."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.default_generators[device.index or 0].manual_seed(seed)


def _forward_kind(step: Any) -> str | None:
    """How ``step`` draws its randomness: ``"plain"`` (all of it in ``make_params``: v2's own ``forward``),
    ``"coin"`` (first whether to apply it at all, with probability ``p``, then ``make_params``), or ``None``
    (its own ``forward``: called on each image alone)."""
    from torchvision.transforms.v2 import Transform

    forward = type(step).forward
    if forward is Transform.forward:
        return "plain"
    try:
        from torchvision.transforms.v2._transform import _RandomApplyTransform
    except ImportError:  # a torchvision that moved it: those transforms are called per image
        return None
    return "coin" if forward is _RandomApplyTransform.forward else None


def _apply_each(step: Any, images: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
    out = []
    for image, seed in zip(images, seeds, strict=True):
        _seed(seed, images.device)
        out.append(step(image))
    return torch.stack(out)


def _apply_grouped(step: Any, images: torch.Tensor, seeds: Sequence[int], coin: bool) -> torch.Tensor:
    """Each image's parameters drawn as ``step(image)`` would draw them; one kernel call per distinct parameters."""
    groups: dict[Any, tuple[dict[str, Any], list[int]]] = {}
    out: list[torch.Tensor | None] = [None] * len(images)
    for i, (image, seed) in enumerate(zip(images, seeds, strict=True)):
        _seed(seed, images.device)
        if coin and torch.rand(1) >= step.p:
            out[i] = image
            continue
        params = step.make_params([image])
        key = _frozen(params)
        if key is None:  # tensors among the parameters: applied alone
            out[i] = step.transform(image, params)
        else:
            groups.setdefault(key, (params, []))[1].append(i)
    for params, members in groups.values():
        index = torch.tensor(members, device=images.device)
        for i, result in zip(members, step.transform(images.index_select(0, index), params), strict=True):
            out[i] = result
    return torch.stack(cast(list[torch.Tensor], out))


def _frozen(value: Any) -> Any:
    """``value`` (parameters: dicts, lists, numbers) as something hashable; ``None`` when it holds anything else."""
    if isinstance(value, bool | int | float | str) or value is None:
        return (type(value).__name__, value)
    if isinstance(value, list | tuple):
        items = [_frozen(v) for v in value]
        return None if any(i is None for i in items) else ("seq", *items)
    if isinstance(value, dict):
        pairs = [(k, _frozen(v)) for k, v in sorted(value.items())]
        return None if any(v is None for _, v in pairs) else ("map", *pairs)
    return None


def _describe(image: torch.Tensor) -> str:
    return f"{str(image.dtype).removeprefix('torch.')} {tuple(image.shape)}"
