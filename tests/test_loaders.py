"""data/loaders.py: TensorLoader's batches (seeded per epoch, each image once) and Shard's shares."""

from __future__ import annotations

import pytest
import torch

from fmnist_ignite.data.loaders import Shard, TensorLoader, epoch_permutation, split_indices


def dataset(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image ``i`` is filled with ``i % 256`` and has label ``i``: a batch says which images it holds."""
    images = (torch.arange(n) % 256).to(torch.uint8).reshape(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return images, torch.arange(n)


def labels_of(loader: TensorLoader) -> list[list[int]]:
    return [labels.tolist() for _, labels in loader]


def test_in_order_batches_with_a_smaller_last_one() -> None:
    images, labels = dataset(10)
    loader = TensorLoader(images, labels, batch_size=4, shuffle=False)
    assert len(loader) == 3
    assert labels_of(loader) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    for x, y in loader:
        assert x.dtype == torch.uint8 and x.shape == (len(y), 1, 2, 2)
        assert torch.equal(x[:, 0, 0, 0].long(), y)  # each image with its own label


def test_shuffled_epochs_cover_every_image_once_in_their_own_seeded_order() -> None:
    images, labels = dataset(23)
    loader = TensorLoader(images, labels, batch_size=5, shuffle=True, seed=7)
    assert len(loader) == 5
    orders = []
    for epoch in (1, 2, 1):
        loader.set_epoch(epoch)
        batches = labels_of(loader)
        assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
        order = [i for b in batches for i in b]
        assert sorted(order) == list(range(23))
        assert order == epoch_permutation(23, 7, epoch).tolist()
        orders.append(order)
    assert orders[0] != orders[1] and orders[0] == orders[2]
    other_seed = TensorLoader(images, labels, batch_size=5, shuffle=True, seed=8)
    assert [i for b in labels_of(other_seed) for i in b] != orders[0]


def test_the_permutation_is_a_function_of_seed_and_epoch_alone() -> None:
    torch.manual_seed(123)
    first = epoch_permutation(50, 3, 4)
    torch.manual_seed(456)
    assert torch.equal(first, epoch_permutation(50, 3, 4))
    assert not torch.equal(first, epoch_permutation(50, 3, 5))
    assert not torch.equal(first, epoch_permutation(50, 4, 4))


def test_a_split_reads_its_own_images_through_indices() -> None:
    images, labels = dataset(30)
    train_idx, val_idx = split_indices(30, 8, seed=2)
    assert len(val_idx) == 8 and len(train_idx) == 22
    assert sorted([*train_idx.tolist(), *val_idx.tolist()]) == list(range(30))
    val = TensorLoader(images, labels, batch_size=3, shuffle=False, indices=val_idx)
    assert len(val) == 3
    assert [i for b in labels_of(val) for i in b] == val_idx.tolist()
    train = TensorLoader(images, labels, batch_size=4, shuffle=True, seed=1, indices=train_idx)
    assert len(train) == 6
    read = [i for b in labels_of(train) for i in b]
    assert sorted(read) == sorted(train_idx.tolist())
    assert read == train_idx[epoch_permutation(22, 1, 1)].tolist()


def test_split_is_seeded() -> None:
    a, b = split_indices(40, 10, seed=5), split_indices(40, 10, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[1], split_indices(40, 10, seed=6)[1])


def test_shard_bounds_cut_the_data_in_contiguous_near_equal_parts() -> None:
    assert Shard() == Shard(0, 1) and Shard().bounds(10) == (0, 10)
    assert [Shard(r, 3).bounds(10) for r in range(3)] == [(0, 3), (3, 6), (6, 10)]
    assert [Shard(r, 4).bounds(2) for r in range(4)] == [(0, 0), (0, 1), (1, 1), (1, 2)]
    with pytest.raises(AttributeError):
        Shard().rank = 1  # type: ignore[misc]


@pytest.mark.parametrize(("n", "batch_size", "count"), [(20, 6, 2), (21, 6, 3), (19, 8, 4), (17, 4, 4), (9, 9, 3)])
def test_training_shards_together_read_the_single_process_batches(n: int, batch_size: int, count: int) -> None:
    images, labels = dataset(n)
    whole = TensorLoader(images, labels, batch_size, shuffle=True, seed=3)
    whole.set_epoch(2)
    shards = [
        TensorLoader(images, labels, batch_size, shuffle=True, seed=3, shard=Shard(r, count)) for r in range(count)
    ]
    for loader in shards:
        loader.set_epoch(2)
    parts = [labels_of(loader) for loader in shards]
    assert len({len(p) for p in parts}) == 1, "every process takes as many steps"
    assert all(len(loader) == len(parts[0]) for loader in shards)
    expected = [b for b in labels_of(whole) if len(b) >= count]  # a last batch smaller than count is left out
    assert len(parts[0]) == len(expected)
    for step, batch in enumerate(expected):
        pieces = [p[step] for p in parts]
        assert [i for piece in pieces for i in piece] == batch
        assert max(map(len, pieces)) - min(map(len, pieces)) <= 1


def test_evaluation_shards_read_contiguous_shares() -> None:
    images, labels = dataset(10)
    shards = [TensorLoader(images, labels, 2, shuffle=False, shard=Shard(r, 3)) for r in range(3)]
    assert [labels_of(loader) for loader in shards] == [[[0, 1], [2]], [[3, 4], [5]], [[6, 7], [8, 9]]]
    assert [len(loader) for loader in shards] == [2, 2, 2]
