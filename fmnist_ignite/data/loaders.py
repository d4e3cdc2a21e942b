"""Batches for the engines: the split held in memory as uint8 tensors, batched by index.

The batches come from :func:`batch_positions` (the seeded permutation of each epoch, see
:func:`epoch_permutation`), so a resumed run sees exactly the batches an uninterrupted one would,
and the processes of a data-parallel run together see exactly the batches one process would
(each its :class:`Shard` of them).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .transforms import BatchTransform

Batch = tuple[torch.Tensor, torch.Tensor]


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The training order of epoch ``epoch``: a function of the seed and the epoch alone."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


def split_indices(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The seeded random split of ``range(n)``: ``(train, validation)`` indices, validation ``val_size`` long.

    The loaders read the images through these indices, so the images are held once.
    """
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[val_size:], order[:val_size]


@dataclass(frozen=True)
class Shard:
    """Which share of the data this process reads in a data-parallel run: share ``rank`` of ``count``.

    Training: every batch of the one seeded epoch order is cut into ``count`` equal pieces
    (``data.batch_size`` is the effective batch), so the processes together take exactly the
    batches a single process would; a last batch smaller than ``count`` is left out. Evaluation:
    each process takes one contiguous ``count``-th of the split (Ignite's metrics add the shares up).
    """

    rank: int = 0
    count: int = 1

    def bounds(self, n: int) -> tuple[int, int]:
        """This share's ``[start, stop)`` of ``n`` items read in order."""
        return n * self.rank // self.count, n * (self.rank + 1) // self.count

    def offset(self, length: int) -> int:
        """Where this share starts in a training batch of ``length`` images (``Tensor.tensor_split``'s pieces)."""
        return self.rank * (length // self.count) + min(self.rank, length % self.count)


def batch_positions(
    n: int,
    batch_size: int,
    shuffle: bool,
    seed: int,
    epoch: int,
    shard: Shard = Shard(),
    indices: torch.Tensor | None = None,
) -> Iterator[torch.Tensor | slice]:
    """Each batch this process reads, as positions ``0..n-1`` (or as ``indices[positions]`` when given).

    Index tensors in the epoch's shuffled order (on the device of ``indices``); slices of
    ``0..n-1`` when reading in order without ``indices``.
    """
    if shuffle:
        order = epoch_permutation(n, seed, epoch)
        if indices is not None:
            order = indices[order.to(indices.device)]
        for start in range(0, n, batch_size):
            batch = order[start : start + batch_size]
            if shard.count > 1:
                if len(batch) < shard.count:
                    return
                batch = batch.tensor_split(shard.count)[shard.rank]
            yield batch
        return
    first, stop = shard.bounds(n)
    for start in range(first, stop, batch_size):
        part = slice(start, min(start + batch_size, stop))
        yield part if indices is None else indices[part]


def count_batches(n: int, batch_size: int, shuffle: bool, shard: Shard = Shard()) -> int:
    """How many batches :func:`batch_positions` gives."""
    if shuffle:
        return n // batch_size + (1 if n % batch_size >= shard.count else 0)
    first, stop = shard.bounds(n)
    return -(-(stop - first) // batch_size)


class TensorLoader:
    """Batches gathered from uint8 tensors held in memory (on the training device when it fits).

    The split is a tensor of indices into the whole set, so the images are held once, however
    many splits read them.

    Args:
        images: uint8 ``(N, C, H, W)``.
        labels: int64 ``(N,)``.
        batch_size: images per batch; the last batch may be smaller.
        shuffle: draw a new :func:`epoch_permutation` each epoch (see :meth:`set_epoch`).
        seed: seed of the permutations.
        indices: the images of this split (default: all), on the same device as ``images``.
        shard: this process's share in a data-parallel run (default: everything).
        limit: give at most this many batches per pass (``trainer.fast_dev_run``: one).
        transform: applied to each batch's images (``data.transforms``, training only), given the epoch,
            the batch's number in the epoch and this process's place in the batch.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        indices: torch.Tensor | None = None,
        shard: Shard = Shard(),
        limit: int | None = None,
        transform: BatchTransform | None = None,
    ):
        self.images = images
        self.labels = labels
        self.indices = indices
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.shard = shard
        self.limit = limit
        self.transform = transform
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        """Choose the permutation for the next pass (the trainer calls this as each epoch starts)."""
        self.epoch = epoch

    def __len__(self) -> int:
        count = count_batches(self._size(), self.batch_size, self.shuffle, self.shard)
        return count if self.limit is None else min(count, self.limit)

    def _size(self) -> int:
        return len(self.labels) if self.indices is None else len(self.indices)

    def __iter__(self) -> Iterator[Batch]:
        device = self.images.device
        n = self._size()
        positions = batch_positions(n, self.batch_size, self.shuffle, self.seed, self.epoch, self.shard, self.indices)
        for number, index in enumerate(itertools.islice(positions, self.limit)):
            if isinstance(index, slice):
                images, labels = self.images[index], self.labels[index]
            else:
                index = index.to(device)  # a no-op when the split's indices are on the images' device
                # index_select copies whole rows; images[index] goes through the general indexing kernel,
                # ten times slower here: a fifth of a CPU epoch.
                images, labels = self.images.index_select(0, index), self.labels.index_select(0, index)
            if self.transform is not None:
                whole = min(self.batch_size, n - number * self.batch_size)
                images = self.transform(images, self.epoch, number, self.shard.offset(whole))
            yield images, labels


Loader = TensorLoader
"""What the engines iterate over: ``(uint8 images, labels)`` batches, with ``set_epoch`` and ``len``."""
