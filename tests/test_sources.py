"""data/sources.py: IDX headers checked before use, the places Fashion-MNIST is looked for, CIFAR-10's extraction."""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fmnist_ignite import DataError
from fmnist_ignite.data import load_data
from fmnist_ignite.data.sources import (
    CIFAR_FILES,
    CIFAR_FOLDER,
    FASHION_FILES,
    IMAGES_MAGIC,
    LABELS_MAGIC,
    MAX_IDX_BYTES,
    idx_size,
    prepare_cifar10,
    read_fashion_mnist,
    verify_idx,
)

from .conftest import idx_images, idx_labels, synthetic_images, write_cifar_archive, write_fashion_gz
from .helpers import data_config, write_fashion


def images_head(count: int, rows: int = 28, cols: int = 28, magic: int = IMAGES_MAGIC) -> bytes:
    return struct.pack(">IIII", magic, count, rows, cols)


# -- IDX headers --------------------------------------------------------------------------------------------------


def test_idx_size_of_good_headers() -> None:
    assert idx_size(images_head(5), "x") == (5, 16 + 5 * 784)
    assert idx_size(images_head(2, 3, 4), "x", IMAGES_MAGIC) == (2, 16 + 24)
    assert idx_size(struct.pack(">II", LABELS_MAGIC, 7), "y", LABELS_MAGIC) == (7, 15)


@pytest.mark.parametrize(
    ("head", "expected_magic", "message"),
    [
        (b"\x00\x00\x08", None, "f is truncated (3 bytes); delete it so that it is prepared again"),
        (images_head(5)[:12], None, "f is truncated (12 bytes); delete it so that it is prepared again"),
        (
            struct.pack(">II", LABELS_MAGIC, 5),
            IMAGES_MAGIC,
            "f is not an IDX image file (magic number 2049, expected 2051); replace it with the original file",
        ),
        (
            images_head(5),
            LABELS_MAGIC,
            "f is not an IDX label file (magic number 2051, expected 2049); replace it with the original file",
        ),
        (images_head(0), None, "f declares no items; replace it with the original file"),
        (struct.pack(">II", LABELS_MAGIC, 0), None, "f declares no items; replace it with the original file"),
        (
            images_head(5, 0, 28),
            None,
            "f declares 0x28 images; sides must be 1 to 4096: replace it with the original file",
        ),
        (
            images_head(5, 28, 4097),
            None,
            "f declares 28x4097 images; sides must be 1 to 4096: replace it with the original file",
        ),
        (
            struct.pack(">II", 1234, 5),
            None,
            "f is not an IDX image or label file (magic number 1234, expected 2051 or 2049); "
            "replace it with the original file",
        ),
        (
            images_head(3000, 4096, 4096),
            None,
            f"f declares 3000 items ({16 + 3000 * 4096 * 4096} bytes), more than the {MAX_IDX_BYTES} bytes allowed; "
            "replace it with the original file",
        ),
    ],
)
def test_idx_size_refuses_bad_headers(head: bytes, expected_magic: int | None, message: str) -> None:
    with pytest.raises(DataError) as info:
        idx_size(head, "f", expected_magic)
    assert str(info.value) == message


def test_the_largest_allowed_size_is_accepted() -> None:
    count = MAX_IDX_BYTES - 8
    assert idx_size(struct.pack(">II", LABELS_MAGIC, count), "y") == (count, MAX_IDX_BYTES)
    with pytest.raises(DataError, match="more than the"):
        idx_size(struct.pack(">II", LABELS_MAGIC, count + 1), "y")


def test_verify_idx_compares_the_file_with_its_header(tmp_path: Path) -> None:
    images, labels = synthetic_images(6, (28, 28), 0)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_images(images))
    assert verify_idx(path, IMAGES_MAGIC) == 6
    labels_path = tmp_path / "train-labels-idx1-ubyte"
    labels_path.write_bytes(idx_labels(labels))
    assert verify_idx(labels_path) == 6
    for data, size in ((idx_images(images)[:-1], 16 + 6 * 784 - 1), (idx_images(images) + b"\0", 16 + 6 * 784 + 1)):
        path.write_bytes(data)
        with pytest.raises(DataError) as info:
            verify_idx(path)
        assert str(info.value) == (
            f"{path} has {size} bytes but its header promises {16 + 6 * 784} (6 items): the file is truncated or "
            "corrupt; delete it so that it is prepared again"
        )


# -- Fashion-MNIST ------------------------------------------------------------------------------------------------


def test_read_arrays_of_each_file(tmp_path: Path) -> None:
    system = write_fashion_gz(tmp_path / "system", n_train=12, n_test=5)
    arrays = read_fashion_mnist(tmp_path / "root", system, download=False)
    assert list(arrays) == list(FASHION_FILES)
    images, labels = synthetic_images(12, (28, 28), 1)
    assert np.array_equal(arrays["train-images-idx3-ubyte"], images)
    assert np.array_equal(arrays["train-labels-idx1-ubyte"], labels)
    assert arrays["t10k-images-idx3-ubyte"].shape == (5, 28, 28) and arrays["t10k-labels-idx1-ubyte"].shape == (5,)
    assert all(a.dtype == np.uint8 for a in arrays.values())
    assert not (tmp_path / "root").exists()


def test_each_file_comes_from_the_first_place_that_has_it(tmp_path: Path) -> None:
    system = write_fashion_gz(tmp_path / "system", n_train=12, n_test=5)
    raw = tmp_path / "root" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    uncompressed, _ = synthetic_images(3, (28, 28), 7)
    (raw / "train-images-idx3-ubyte").write_bytes(idx_images(uncompressed))
    (raw / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_images(uncompressed[:2])))
    gz_labels = np.arange(3, dtype=np.uint8)
    (raw / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_labels(gz_labels)))
    arrays = read_fashion_mnist(tmp_path / "root", system, download=False)
    assert np.array_equal(arrays["train-images-idx3-ubyte"], uncompressed)  # uncompressed in raw/ first
    assert np.array_equal(arrays["train-labels-idx1-ubyte"], gz_labels)  # then raw/*.gz, before the system's
    assert arrays["t10k-images-idx3-ubyte"].shape[0] == 5  # then the system folder


def test_missing_files_are_downloaded_only_if_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []

    def download(root: Path) -> None:
        calls.append(root)
        write_fashion_gz(root / "FashionMNIST" / "raw", n_train=4, n_test=2)

    monkeypatch.setattr("fmnist_ignite.data.sources._download_fashion_mnist", download)
    with pytest.raises(DataError, match=r"^Fashion-MNIST not found \(looked in "):
        read_fashion_mnist(tmp_path / "root", None, download=False)
    assert calls == []
    arrays = read_fashion_mnist(tmp_path / "root", None, download=True)
    assert calls == [tmp_path / "root"] and arrays["t10k-labels-idx1-ubyte"].shape == (2,)


def test_a_padded_gz_file_is_refused(tmp_path: Path) -> None:
    system = write_fashion_gz(tmp_path / "system", n_train=4, n_test=2)
    target = system / "t10k-labels-idx1-ubyte.gz"
    target.write_bytes(gzip.compress(gzip.decompress(target.read_bytes()) + b"\0" * 10))
    with pytest.raises(DataError) as info:
        read_fashion_mnist(tmp_path / "root", system, download=False)
    assert str(info.value) == (
        f"{target} decompresses to a bad file: t10k-labels-idx1-ubyte holds more than the 10 bytes its header "
        "promises (padded, or a decompression bomb); replace it with the original file"
    )


def test_a_short_gz_file_is_refused(tmp_path: Path) -> None:
    system = write_fashion_gz(tmp_path / "system", n_train=4, n_test=2)
    target = system / "train-images-idx3-ubyte.gz"
    target.write_bytes(gzip.compress(gzip.decompress(target.read_bytes())[:-100]))
    with pytest.raises(DataError) as info:
        read_fashion_mnist(tmp_path / "root", system, download=False)
    assert str(info.value) == (
        f"{target} decompresses to a bad file: train-images-idx3-ubyte has {16 + 4 * 784 - 100} bytes but its header "
        f"promises {16 + 4 * 784} (4 items): the file is truncated or corrupt; replace it with the original file"
    )


# -- CIFAR-10 -----------------------------------------------------------------------------------------------------


def test_cifar_is_extracted_once_and_then_read_from_its_folder(tmp_path: Path) -> None:
    archive = write_cifar_archive(tmp_path, per_batch=2, n_test=3)
    folder = prepare_cifar10(tmp_path, download=False)
    assert folder == tmp_path / CIFAR_FOLDER
    assert sorted(p.name for p in folder.iterdir()) == sorted(CIFAR_FILES)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CIFAR_FOLDER, archive.name]  # no staging folder left
    archive.unlink()
    assert prepare_cifar10(tmp_path, download=False) == folder  # the archive is no longer needed


def test_cifar_archive_members_outside_the_batches_are_not_extracted(tmp_path: Path) -> None:
    archive = write_cifar_archive(tmp_path / "src", per_batch=2, n_test=3)
    crafted = tmp_path / "root" / archive.name
    crafted.parent.mkdir()
    with tarfile.open(archive) as source, tarfile.open(crafted, "w:gz") as tar:
        for member in source:
            tar.addfile(member, source.extractfile(member))
        for name in ("../escaped.txt", f"{CIFAR_FOLDER}/extra.py", "/tmp/absolute.txt"):
            payload = b"should not be written"
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    folder = prepare_cifar10(crafted.parent, download=False)
    assert sorted(p.name for p in folder.iterdir()) == sorted(CIFAR_FILES)
    assert not (tmp_path / "escaped.txt").exists()
    assert sorted(p.name for p in crafted.parent.iterdir()) == sorted([CIFAR_FOLDER, archive.name])


def test_an_archive_lacking_a_batch_leaves_nothing(tmp_path: Path) -> None:
    source = write_cifar_archive(tmp_path / "src", per_batch=2, n_test=3)
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(source) as full, tarfile.open(root / source.name, "w:gz") as tar:
        for member in full:
            if not member.name.endswith("test_batch"):
                tar.addfile(member, full.extractfile(member))
    with pytest.raises(DataError) as info:
        prepare_cifar10(root, download=False)
    assert str(info.value) == (
        f"{root / source.name} lacks {CIFAR_FOLDER}/test_batch; replace it with the original archive"
    )
    assert [p.name for p in root.iterdir()] == [source.name]


def test_a_batch_that_is_not_a_file_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        link = tarfile.TarInfo(f"{CIFAR_FOLDER}/data_batch_1")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(DataError, match=rf"data_batch_1 is not a file of at most {2**27} bytes \(0 bytes\)"):
        prepare_cifar10(root, download=False)
    assert [p.name for p in root.iterdir()] == ["cifar-10-python.tar.gz"]


def test_a_folder_missing_a_batch_without_an_archive(tmp_path: Path) -> None:
    write_cifar_archive(tmp_path, per_batch=2, n_test=3)
    folder = prepare_cifar10(tmp_path, download=False)
    (tmp_path / "cifar-10-python.tar.gz").unlink()
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError) as info:
        prepare_cifar10(tmp_path, download=False)
    assert str(info.value) == (
        f"CIFAR-10 not found (looked for {folder} and {tmp_path / 'cifar-10-python.tar.gz'}); "
        f"put cifar-10-python.tar.gz in {tmp_path} or set data.download=true"
    )


def test_cifar_download_only_if_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def download(archive: Path) -> None:
        write_cifar_archive(archive.parent, per_batch=2, n_test=3)

    monkeypatch.setattr("fmnist_ignite.data.sources._download_cifar", download)
    folder = prepare_cifar10(tmp_path, download=True)
    assert sorted(p.name for p in folder.iterdir()) == sorted(CIFAR_FILES)


def test_gz_bomb_is_refused_once_past_the_promised_size(tmp_path: Path) -> None:
    system = write_fashion(tmp_path / "system")
    images, _ = synthetic_images(20, (28, 28), 1)
    zeros = gzip.compress(bytes(2**20))
    # 200 MiB of zeros in 200 gzip members (~200 KB), then bytes that are not gzip: a reader that decompressed
    # everything would report those; one that stops after the promised size never reaches them.
    bomb = gzip.compress(idx_images(images)) + zeros * 200 + b"not gzip"
    (system / "train-images-idx3-ubyte.gz").write_bytes(bomb)
    with pytest.raises(DataError) as info:
        load_data(data_config(tmp_path / "data", system))
    assert str(info.value) == (
        f"{system / 'train-images-idx3-ubyte.gz'} decompresses to a bad file: train-images-idx3-ubyte holds more "
        f"than the {16 + 20 * 28 * 28} bytes its header promises (padded, or a decompression bomb); replace it with "
        "the original file"
    )
    assert not (tmp_path / "data").exists(), "nothing is written"


def test_cifar_archive_member_larger_than_a_batch_is_refused_before_writing(tmp_path: Path) -> None:
    info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
    info.size = 2**28
    archive = tmp_path / "cifar-10-python.tar.gz"
    # A tar header declaring 256 MiB, then those 256 MiB of zeros in 256 gzip members (~256 KB on disk).
    archive.write_bytes(gzip.compress(info.tobuf()) + gzip.compress(bytes(2**20)) * 256)
    with pytest.raises(DataError) as info_:
        load_data(data_config(tmp_path, dataset="cifar10"))
    assert str(info_.value) == (
        f"{archive}: cifar-10-batches-py/data_batch_1 is not a file of at most 134217728 bytes (268435456 bytes); "
        "replace it with the original archive"
    )
    assert [p.name for p in tmp_path.iterdir()] == [archive.name], "nothing extracted, no staging folder left"


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ((2051, 0, 28, 28), "declares no items; replace it with the original file"),
        ((2051, 10, 0, 28), "declares 0x28 images; sides must be 1 to 4096: replace it with the original file"),
        ((2051, 10, 28, 5000), "declares 28x5000 images; sides must be 1 to 4096: replace it with the original file"),
        (
            (2051, 2**32 - 1, 4096, 4096),
            "declares 4294967295 items (72057594021150736 bytes), more than the 2147483648 bytes allowed; "
            "replace it with the original file",
        ),
    ],
)
def test_absurd_idx_headers_are_refused_before_decompressing(tmp_path: Path, header: tuple, message: str) -> None:
    system = write_fashion(tmp_path / "system")
    (system / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(struct.pack(">IIII", *header)))
    with pytest.raises(DataError) as info:
        load_data(data_config(tmp_path / "data", system))
    prefix = f"{system / 'train-images-idx3-ubyte.gz'} decompresses to a bad file: train-images-idx3-ubyte "
    assert str(info.value) == prefix + message


@pytest.fixture(scope="module")
def fashion_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = write_fashion(tmp_path_factory.mktemp("fashion"))
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    magic=st.sampled_from([2051, 2049, 2052, 0]),
    count=st.one_of(st.integers(0, 30), st.just(20), st.integers(0, 2**32 - 1)),
    rows=st.one_of(st.integers(0, 40), st.just(28), st.integers(0, 2**32 - 1)),
    cols=st.one_of(st.integers(0, 40), st.just(28)),
    extra=st.integers(-50, 50),
    damage=st.one_of(st.none(), st.tuples(st.sampled_from(["cut", "flip"]), st.integers(0, 2**16))),
)
@example(magic=2051, count=20, rows=28, cols=28, extra=0, damage=None)  # the file as written: it loads
def test_any_idx_gz_loads_or_gives_a_data_error(
    fashion_files: dict[str, bytes], magic: int, count: int, rows: int, cols: int, extra: int, damage
) -> None:
    header = struct.pack(">IIII", magic, count, rows, cols)
    promised = count * rows * cols if count * rows * cols < 100_000 else 1000
    blob = gzip.compress(header + bytes(max(0, promised + extra)))
    if damage is not None:
        kind, where = damage
        where %= len(blob)
        blob = blob[:where] if kind == "cut" else blob[:where] + bytes([blob[where] ^ 0x55]) + blob[where + 1 :]
    with tempfile.TemporaryDirectory() as tmp:
        system = Path(tmp) / "system"
        system.mkdir()
        for name, content in fashion_files.items():
            (system / name).write_bytes(content)
        (system / "train-images-idx3-ubyte.gz").write_bytes(blob)
        try:
            data = load_data(data_config(Path(tmp) / "data", system))
        except DataError as err:
            assert "\n" not in str(err)
            assert not (Path(tmp) / "data").exists()
        else:
            assert data.train_images.shape == (count, 1, rows, cols) == (20, 1, 28, 28)


@pytest.mark.parametrize("first", [True, False])
def test_an_archive_holding_a_batch_twice_is_refused_not_sent_round_again(tmp_path: Path, first: bool) -> None:
    source = write_cifar_archive(tmp_path / "src", per_batch=2, n_test=3)
    root = tmp_path / "root"
    root.mkdir()
    junk = tarfile.TarInfo(f"{CIFAR_FOLDER}/data_batch_2")
    junk.size = 5
    with tarfile.open(source) as full, tarfile.open(root / source.name, "w:gz") as tar:
        if first:
            tar.addfile(junk, io.BytesIO(b"junk!"))  # the damaged copy first: it was the one extracted
        for member in full:
            tar.addfile(member, full.extractfile(member))
        if not first:
            tar.addfile(junk, io.BytesIO(b"junk!"))  # after every batch: it was never looked at
    with pytest.raises(DataError) as info:
        prepare_cifar10(root, download=False)
    assert str(info.value) == (
        f"{root / source.name} holds {CIFAR_FOLDER}/data_batch_2 twice (which one is the batch?); "
        "replace it with the original archive"
    )
    assert [p.name for p in root.iterdir()] == [source.name]
