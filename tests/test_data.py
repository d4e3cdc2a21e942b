from __future__ import annotations

import gzip
import itertools
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fmnist_ignite import DataError, load_config
from fmnist_ignite.data import Shard, TensorLoader, epoch_permutation, load_data
from fmnist_ignite.data.sources import FASHION_FILES, verify_idx

from .conftest import N_TEST, N_TRAIN, idx_images, synthetic_images, write_cifar_archive, write_fashion_gz


def fashion_config(root: Path, system_dir: Path | None, download: bool = False):
    return load_config(
        {
            "data": {
                "root": str(root),
                "system_dir": str(system_dir) if system_dir else None,
                "download": download,
                "val_size": 10,
            }
        }
    ).data


def test_system_copy_is_read_verified_and_loaded_without_writing_a_copy(
    tmp_path: Path, system_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config({"data": {"system_dir": str(system_dir), "val_size": 10}}).data  # root: data/, relative
    data = load_data(config)
    assert list(tmp_path.iterdir()) == [], "nothing is written into data.root or the current folder"
    assert sorted(p.name for p in system_dir.iterdir()) == sorted(f"{name}.gz" for name in FASHION_FILES)
    assert data.train_images.shape == (N_TRAIN, 1, 28, 28) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (N_TEST, 1, 28, 28)
    assert data.classes[6] == "Shirt" and len(data.classes) == 10
    expected, labels = synthetic_images(N_TRAIN, (28, 28), 1)
    assert torch.equal(data.train_images[:, 0], torch.from_numpy(expected))
    assert data.train_labels.dtype == torch.int64 and data.train_labels.tolist() == labels.tolist()


def test_gz_files_in_root_are_used_without_a_system_copy(tmp_path: Path) -> None:
    raw = write_fashion_gz(tmp_path / "data" / "FashionMNIST" / "raw")
    data = load_data(fashion_config(tmp_path / "data", None))
    assert len(data.train_labels) == N_TRAIN
    assert sorted(p.name for p in raw.iterdir()) == sorted(f"{name}.gz" for name in FASHION_FILES)


def test_uncompressed_files_in_root_come_first(tmp_path: Path, system_dir: Path) -> None:
    raw = write_fashion_gz(tmp_path / "data" / "FashionMNIST" / "raw", n_train=30)
    name = "train-images-idx3-ubyte"
    (raw / name).write_bytes(gzip.decompress((raw / f"{name}.gz").read_bytes()))
    (raw / f"{name}.gz").unlink()
    data = load_data(fashion_config(tmp_path / "data", system_dir))
    expected, _ = synthetic_images(30, (28, 28), 1)
    assert torch.equal(data.train_images[:, 0], torch.from_numpy(expected))
    assert len(data.test_labels) == N_TEST


def test_missing_data_says_where_it_looked_and_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_data(fashion_config(tmp_path / "data", tmp_path / "nowhere"))
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message and str(tmp_path / "data" / "FashionMNIST" / "raw") in message
    assert "apt-get install dataset-fashion-mnist" in message and "data.download=true" in message


def test_download_path_goes_through_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_download(self) -> None:  # what torchvision's download leaves: the files, uncompressed
        calls.append(self.train)
        write_fashion_gz(Path(self.raw_folder))
        for name in FASHION_FILES:
            gz = Path(self.raw_folder) / f"{name}.gz"
            (Path(self.raw_folder) / name).write_bytes(gzip.decompress(gz.read_bytes()))

    from torchvision.datasets import FashionMNIST

    monkeypatch.setattr(FashionMNIST, "download", fake_download)
    data = load_data(fashion_config(tmp_path / "data", None, download=True))
    assert calls == [True, False]
    assert len(data.test_labels) == N_TEST


@pytest.mark.parametrize("damage", ["truncate", "magic", "gzip"])
def test_damaged_system_file_is_reported_and_leaves_nothing_behind(tmp_path: Path, damage: str) -> None:
    system = write_fashion_gz(tmp_path / "system")
    target = system / "train-images-idx3-ubyte.gz"
    raw_bytes = gzip.decompress(target.read_bytes())
    if damage == "truncate":
        target.write_bytes(gzip.compress(raw_bytes[: len(raw_bytes) // 2]))
    elif damage == "magic":
        target.write_bytes(gzip.compress(b"\x00\x00\x09\x99" + raw_bytes[4:]))
    else:
        target.write_bytes(target.read_bytes()[:100])
    with pytest.raises(DataError) as info:
        load_data(fashion_config(tmp_path / "data", system))
    assert str(target) in str(info.value)
    expected = {"truncate": "header promises", "magic": "magic number 2457", "gzip": "not a valid gzip file"}[damage]
    assert expected in str(info.value)
    assert not (tmp_path / "data").exists(), "nothing is written"


def test_truncated_uncompressed_file_is_reported_not_trained_on(tmp_path: Path, system_dir: Path) -> None:
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    labels = raw / "t10k-labels-idx1-ubyte"  # as torchvision's download leaves it, then damaged
    labels.write_bytes(gzip.decompress((system_dir / f"{labels.name}.gz").read_bytes())[:-5])
    with pytest.raises(DataError, match=f"{labels} has .* bytes but its header promises"):
        load_data(fashion_config(tmp_path / "data", system_dir))


def test_verify_idx_counts_items(tmp_path: Path) -> None:
    images, _ = synthetic_images(7, (28, 28), 0)
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(idx_images(images))
    assert verify_idx(path) == 7


def test_cifar10_loads_from_its_own_archive_format(tmp_path: Path) -> None:
    write_cifar_archive(tmp_path / "data", per_batch=20, n_test=30)
    cfg = load_config({"data": {"dataset": "cifar10", "root": str(tmp_path / "data"), "val_size": 10}}).data
    data = load_data(cfg)
    assert data.train_images.shape == (100, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (30, 3, 32, 32)
    assert data.classes[0] == "airplane" and data.classes[9] == "truck"
    expected, labels = synthetic_images(20, (3, 32, 32), 10)
    assert torch.equal(data.train_images[:20], torch.from_numpy(expected))
    assert data.train_labels[:20].tolist() == labels.tolist()


def test_cifar10_missing_and_broken_archives(tmp_path: Path) -> None:
    cfg = load_config({"data": {"dataset": "cifar10", "root": str(tmp_path), "val_size": 10}}).data
    with pytest.raises(DataError, match="CIFAR-10 not found .*cifar-10-python.tar.gz"):
        load_data(cfg)
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(DataError, match="cannot be extracted"):
        load_data(cfg)
    assert not (tmp_path / "cifar-10-batches-py").exists()


def test_tensor_loader_covers_each_sample_once_per_epoch_in_a_seeded_order() -> None:
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    loader = TensorLoader(images, torch.arange(10), batch_size=4, shuffle=True, seed=3)
    assert len(loader) == 3
    loader.set_epoch(1)
    first = torch.cat([y for _, y in loader])
    assert sorted(first.tolist()) == list(range(10))
    assert torch.equal(first, epoch_permutation(10, 3, 1))
    loader.set_epoch(2)
    assert not torch.equal(torch.cat([y for _, y in loader]), first)
    loader.set_epoch(1)
    assert torch.equal(torch.cat([y for _, y in loader]), first)


@given(
    n=st.integers(1, 60),
    per_process=st.integers(1, 9),
    count=st.integers(1, 4),
    shuffle=st.booleans(),
    with_indices=st.booleans(),
)
@settings(max_examples=60, deadline=None)
def test_the_shards_of_a_data_parallel_run_make_up_the_single_process_batches(
    n: int, per_process: int, count: int, shuffle: bool, with_indices: bool
) -> None:
    # What one process reads, the processes read together: batch by batch in training (each
    # process a piece of every batch), the whole split once in evaluation.
    images = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1)
    labels = torch.arange(100)
    indices = torch.randperm(100, generator=torch.Generator().manual_seed(n))[:n] if with_indices else None
    size = per_process * count
    if indices is None:
        images, labels = images[:n], labels[:n]

    def batches(shard: Shard) -> list[list[int]]:
        made = TensorLoader(images, labels, size, shuffle, seed=7, indices=indices, shard=shard)
        made.set_epoch(3)
        got = [y.tolist() for _, y in made]
        assert len(got) == len(made)
        return got

    single = batches(Shard())
    shards = [batches(Shard(rank, count)) for rank in range(count)]
    if shuffle:
        full = [b for b in single if len(b) >= count]  # a last batch smaller than count is left out
        assert all(len(s) == len(full) for s in shards), "every process takes as many steps"
        for i, batch in enumerate(full):
            pieces = [s[i] for s in shards]
            assert list(itertools.chain(*pieces)) == batch
            assert max(map(len, pieces)) - min(map(len, pieces)) <= 1
    else:
        assert list(itertools.chain(*(itertools.chain(*s) for s in shards))) == list(itertools.chain(*single))
