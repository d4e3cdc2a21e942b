"""Batches for the engines: an in-memory tensor loader (default) and a DataLoader path.

Both shuffle with the same seeded permutation per epoch (:func:`epoch_permutation`), so they give
the same batches, and a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

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
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        indices: torch.Tensor | None = None,
    ):
        self.images = images
        self.labels = labels
        self.indices = indices
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        """Choose the permutation for the next pass (the trainer calls this as each epoch starts)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self._size() // self.batch_size)

    def _size(self) -> int:
        return len(self.labels) if self.indices is None else len(self.indices)

    def __iter__(self) -> Iterator[Batch]:
        n, size = self._size(), self.batch_size
        order = epoch_permutation(n, self.seed, self.epoch).to(self.images.device) if self.shuffle else None
        if self.indices is not None:
            order = self.indices if order is None else self.indices[order]
        for start in range(0, n, size):
            if order is None:
                yield self.images[start : start + size], self.labels[start : start + size]
            else:
                # index_select copies whole rows; images[index] goes through the general indexing kernel,
                # ten times slower here: a fifth of a CPU epoch.
                index = order[start : start + size]
                yield self.images.index_select(0, index), self.labels.index_select(0, index)


class ImageDataset(Dataset[Batch]):
    """Per-image access for the DataLoader path: each image goes through PIL and ``transform``."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        transform: Callable | None = None,
        indices: torch.Tensor | None = None,
    ):
        from torchvision.transforms import PILToTensor
        from torchvision.transforms.functional import to_pil_image

        self.images = images
        self.labels = labels
        self.indices = indices.tolist() if indices is not None else None
        self.transform = transform or PILToTensor()
        self._to_pil = to_pil_image

    def __len__(self) -> int:
        return len(self.labels) if self.indices is None else len(self.indices)

    def __getitem__(self, i: int) -> Batch:
        j = i if self.indices is None else self.indices[i]
        return self.transform(self._to_pil(self.images[j])), self.labels[j]


class EpochSampler(Sampler[int]):
    """Yields :func:`epoch_permutation` for the current epoch."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 1

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return iter(epoch_permutation(self.n, self.seed, self.epoch).tolist())


class EpochDataLoader:
    """A ``DataLoader`` over :class:`ImageDataset` with the same epoch-seeded order as :class:`TensorLoader`."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        num_workers: int = 0,
        transform: Callable | None = None,
        indices: torch.Tensor | None = None,
    ):
        dataset = ImageDataset(images, labels, transform, indices)
        self.sampler = EpochSampler(len(dataset), seed) if shuffle else None
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
        )

    def set_epoch(self, epoch: int) -> None:
        """Choose the permutation for the next pass."""
        if self.sampler is not None:
            self.sampler.epoch = epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.loader)


Loader = TensorLoader | EpochDataLoader
"""What the engines iterate over: either loader gives ``(uint8 images, labels)`` batches."""
