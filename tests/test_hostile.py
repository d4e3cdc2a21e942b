"""Hostile inputs: data archives, compressed files, configs and images crafted to run code, hang or exhaust memory."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import pickle
import re
import struct
import tarfile
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fmnist_ignite import Config, ConfigError, DataError, build_experiment, load_config
from fmnist_ignite.app.cli import main
from fmnist_ignite.data import load_data
from fmnist_ignite.images import open_image
from fmnist_ignite.inspect_runs import predict_images

from .conftest import REPO, idx_images, idx_labels, run_cli, small_overrides, synthetic_images, write_cifar_archive


def data_config(root: Path, system_dir: Path | None = None, dataset: str = "fashion_mnist"):
    return load_config(
        {"data": {"dataset": dataset, "root": str(root), "system_dir": str(system_dir) if system_dir else None}}
    ).data


def write_fashion(folder: Path, train_side: tuple[int, int] = (28, 28), test_side: tuple[int, int] = (28, 28)) -> Path:
    """The four ``*-ubyte.gz`` files with 20 training and 10 test images of the given sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n, side, seed in (("train", 20, train_side, 1), ("t10k", 10, test_side, 2)):
        images, labels = synthetic_images(n, side, seed)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_images(images)))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_labels(labels)))
    return folder


# --- CIFAR-10 batches are read without running code -------------------------------------------------------------


class Payload:
    """Unpickling this runs a shell command, as a crafted batch file would."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def cifar_folder(root: Path) -> Path:
    with tarfile.open(write_cifar_archive(root), "r:gz") as tar:
        tar.extractall(root, filter="data")
    return root / "cifar-10-batches-py"


@pytest.mark.parametrize("where", ["data_batch_1", "test_batch", "batches.meta"])
def test_pickle_payload_in_a_cifar_batch_is_refused_not_run(tmp_path: Path, where: str) -> None:
    folder = cifar_folder(tmp_path / "data")
    marker = tmp_path / "MARKER"
    if where == "batches.meta":  # hidden inside the dictionary, where torchvision reads the class names
        payload = {"label_names": ["a"] * 9 + [Payload(marker)], "num_cases_per_batch": 20}
    else:
        payload = Payload(marker)
    (folder / where).write_bytes(pickle.dumps(payload))
    with pytest.raises(DataError) as info:
        load_data(data_config(tmp_path / "data", dataset="cifar10"))
    assert not marker.exists(), "the payload ran"
    assert str(info.value) == (
        f"{folder / where} holds a Python object other than arrays, lists, strings and numbers "
        f"({os.system.__module__}.system); refused for safety: replace it with the original CIFAR-10 file"
    )


def cifar_batch(n: int, protocol: int = 4, byte_keys: bool = False) -> bytes:
    images, labels = synthetic_images(n, (3, 32, 32), 7)
    batch = {"batch_label": "b", "labels": labels.tolist(), "data": images.reshape(n, -1), "filenames": []}
    if byte_keys:
        batch = {key.encode(): value for key, value in batch.items()}
    return pickle.dumps(batch, protocol=protocol)


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_batches_of_other_pickle_protocols_and_byte_keys_load(tmp_path: Path, protocol: int) -> None:
    folder = cifar_folder(tmp_path / "data")
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(cifar_batch(4, protocol, byte_keys=True))
    names = [n.encode() for n in ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=protocol))
    data = load_data(data_config(tmp_path / "data", dataset="cifar10"))
    images, labels = synthetic_images(4, (3, 32, 32), 7)
    assert data.train_images.shape == (20, 3, 32, 32) and data.test_images.shape == (4, 3, 32, 32)
    assert data.test_images.numpy().tobytes() == images.tobytes()
    assert data.test_labels.tolist() == labels.tolist()
    assert data.classes[1] == "car"


class NewArray:
    """Pickles as a call of ``numpy.ndarray(shape, uint8)``: an array the file does not hold."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape

    def __reduce__(self):
        return (np.ndarray, (self.shape, np.dtype(np.uint8)))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "data_batch_2",
            {"data": np.zeros((4, 3000), np.uint8), "labels": [0] * 4},
            "'data' must be a uint8 array of shape (N, 3072), got uint8 (4, 3000); replace the file",
        ),
        (
            "data_batch_2",
            {"data": np.zeros((4, 3072), np.float32), "labels": [0] * 4},
            "'data' must be a uint8 array of shape (N, 3072), got float32 (4, 3072); replace the file",
        ),
        (
            "test_batch",
            {"data": np.zeros((4, 3072), np.uint8), "labels": [0] * 3},
            "'labels' must be 4 integers from 0 to 9, one per image; replace the file",
        ),
        (
            "test_batch",
            {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]},
            "'labels' must be 2 integers from 0 to 9, one per image; replace the file",
        ),
        (
            "data_batch_3",
            {"data": NewArray((100_000, 3072)), "labels": []},
            "claims an array of 307200000 bytes in a file of",
        ),
        (
            "batches.meta",
            {"label_names": ["a"] * 9},
            "'label_names' must be a list of 10 class names; replace the file",
        ),
        ("batches.meta", [1, 2], "holds a list, not a CIFAR-10 dictionary; replace the file"),
    ],
    ids=["data-3000-wide", "data-float", "labels-short", "labels-10", "array-not-in-file", "names-9", "not-a-dict"],
)
def test_cifar_batches_of_the_wrong_shape_are_refused(tmp_path: Path, name: str, content, message: str) -> None:
    folder = cifar_folder(tmp_path / "data")
    (folder / name).write_bytes(pickle.dumps(content))
    with pytest.raises(DataError, match=f"^{re.escape(str(folder / name))}:? .*{re.escape(message)}"):
        load_data(data_config(tmp_path / "data", dataset="cifar10"))


def test_corrupt_cifar_batch_keeps_its_message(tmp_path: Path) -> None:
    folder = cifar_folder(tmp_path / "data")
    (folder / "data_batch_4").write_bytes(cifar_batch(4)[:-50])
    with pytest.raises(DataError) as info:
        load_data(data_config(tmp_path / "data", dataset="cifar10"))
    assert str(info.value).startswith(f"CIFAR-10 batches under {folder} are corrupt (data_batch_4: UnpicklingError: ")
    assert str(info.value).endswith("; delete that folder to prepare it again")
    assert "\n" not in str(info.value)


# --- Fashion-MNIST: decompression bombs and absurd headers -----------------------------------------------------


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


# --- Config files: alias bombs, deep nesting, endless files, duplicate keys ------------------------------------


LAUGHS = "model:\n  kwargs:\n    a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"    {b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)
BAD_YAML = {
    "laughs": (
        LAUGHS,
        ":8:8: YAML error: more than 100,000 values once YAML aliases (*name) are expanded; write the values out or "
        "use fewer aliases",
    ),
    "deep": (
        "name: x\nmodel:\n  kwargs: {a: " + "[" * 20_000 + "]" * 20_000 + "}\n",
        ":3:112: YAML error: values nested more than 100 levels deep",
    ),
    "duplicate": (
        "name: x\noptimizer:\n  lr: 0.1\nseed: 1\ntrainer:\n  max_epochs: 2\n\n\noptimizer:\n  lr: 0.2\n",
        ":9:1: YAML error: duplicate key 'optimizer' at lines 2 and 9; keep one",
    ),
    "recursive": ("model:\n  kwargs: &k\n    a: *k\n", ":3:8: YAML error: the alias *k is inside its own value"),
    "huge": ("name: x\n" + "# padding\n" * 110_000, "' is larger than 1 MiB; a config is a short YAML mapping"),
}


@pytest.mark.parametrize("case", BAD_YAML)
def test_hostile_config_files_are_refused_in_one_line(tmp_path: Path, case: str) -> None:
    text, message = BAD_YAML[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    expected = f"config file '{path}{message}" if case == "huge" else f"{path}{message}"
    assert str(info.value) == expected


def test_dev_zero_as_a_config_is_not_read_without_end() -> None:
    with pytest.raises(ConfigError, match=r"^config file '/dev/zero' is larger than 1 MiB; a config is a short YAML"):
        load_config("/dev/zero")


@pytest.mark.parametrize("case", ["deep", "duplicate", "recursive", "huge"])
def test_hostile_config_files_on_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    path = tmp_path / f"{case}.yaml"
    path.write_text(BAD_YAML[case][0])
    monkeypatch.chdir(tmp_path)  # the default output_dir, runs/, would appear here
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(path)])
    assert code == 2
    assert stderr.getvalue().count("\n") == 1 and BAD_YAML[case][1] in stderr.getvalue()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_alias_bomb_does_not_hang_print_config(tmp_path: Path) -> None:
    path = tmp_path / "laughs.yaml"
    path.write_text(LAUGHS)
    result = run_cli(str(path), "--print-config", cwd=tmp_path, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"error: {path}{BAD_YAML['laughs'][1]}\n"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.kwargs={a: 1, a: 2}", "override of 'model.kwargs': duplicate key 'a' at lines 1 and 1; keep one"),
        ("model.kwargs=" + "[" * 5000, "override of 'model.kwargs': values nested more than 100 levels deep"),
        (
            "model.kwargs." + "a." * 200 + "b=1",
            "override of 'model.kwargs.a.a.a.a.a.a.a.a.a.a.a.a.a.a'...: keys nested",
        ),
    ],
)
def test_hostile_overrides_are_refused(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        load_config(None, [override])


def yaml_text(value, duplicate: bool) -> str:
    """YAML flow text for nested dicts/lists/scalars; mappings may say their first key twice."""
    if isinstance(value, dict):
        pairs = [f"{yaml_text(k, duplicate)}: {yaml_text(v, duplicate)}" for k, v in value.items()]
        if duplicate and pairs:
            pairs.append(pairs[0])
        return "{" + ", ".join(pairs) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(yaml_text(v, duplicate) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)  # one line, escapes and all: JSON strings are YAML
    return yaml.safe_dump(value).removesuffix("\n...\n").strip()


SECTIONS = ["name", "seed", "device", "data", "model", "optimizer", "scheduler", "trainer", "handlers", "kwargs", "lr"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8), st.sampled_from(SECTIONS)
)
trees = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(SECTIONS) | scalars, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    tree=st.dictionaries(st.sampled_from(SECTIONS), trees, max_size=5), duplicate=st.booleans(), cut=st.integers(0, 400)
)
@example(tree={"name": "x", "optimizer": {"lr": 0.5}}, duplicate=False, cut=0)
@example(tree={"name": "x", "optimizer": {"lr": 0.5}}, duplicate=True, cut=0)
def test_any_yaml_file_gives_a_config_or_a_one_line_config_error(
    tmp_path: Path, tree: dict, duplicate: bool, cut: int
) -> None:
    text = yaml_text(tree, duplicate)
    path = tmp_path / "random.yaml"
    for candidate in (text, text[:cut]):
        path.write_text(candidate)
        has_duplicate = candidate is text and duplicate and bool(tree)
        try:
            config = load_config(path)
        except ConfigError as err:
            assert "\n" not in str(err) and str(err).startswith(str(path))
            assert "duplicate key" in str(err) or not has_duplicate
        else:
            assert isinstance(config, Config) and not has_duplicate


# --- Data of inconsistent shape --------------------------------------------------------------------------------


def test_test_images_of_another_shape_are_refused_before_training(tmp_path: Path) -> None:
    system = write_fashion(tmp_path / "system", train_side=(28, 28), test_side=(27, 29))
    with pytest.raises(DataError) as info:
        load_data(data_config(tmp_path / "data", system))
    assert str(info.value) == (
        "train images have shape (C, H, W) (1, 28, 28) but test images (1, 27, 29); the model takes one shape: "
        "replace the files that differ"
    )


# --- Images given to predict -----------------------------------------------------------------------------------


def png(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` grey pixels (its pixel data is short)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(1000))) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (png(100_000, 100_000), "more than 178,956,970 pixels, which is more than the 50,000,000 allowed"),
        (png(8000, 8000), "8000x8000 pixels is more than the 50,000,000 allowed"),
        (png(40, 30), "cannot be read as an image (OSError: image file is truncated"),
        (b"not a picture", "not an image file PIL can read"),
    ],
    ids=["100000x100000", "8000x8000", "truncated", "text"],
)
def test_open_image_refuses_bombs_and_damaged_files_in_one_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "image.png"
    path.write_bytes(content)
    with pytest.raises(DataError, match=f"^{re.escape(f'{path}: {message}')}") as info:
        open_image(path, "L")
    assert "\n" not in str(info.value)


def test_open_image_converts_and_bounds(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "good.png"
    Image.new("RGB", (30, 20), (255, 0, 0)).save(path)
    image = open_image(path, "L")
    assert image.mode == "L" and image.size == (30, 20) and image.getpixel((0, 0)) == 76
    with pytest.raises(DataError, match=re.escape(f"{path}: 30x20 pixels is more than the 500 allowed")):
        open_image(path, "L", max_pixels=500)
    with pytest.raises(
        DataError, match=re.escape(f"{tmp_path / 'nope.png'}: cannot be read as an image (FileNotFound")
    ):
        open_image(tmp_path / "nope.png", "L")


def test_predict_answers_good_images_next_to_a_bomb(tmp_path: Path, system_dir: Path) -> None:
    from PIL import Image

    config = load_config(
        REPO / "configs" / "base.yaml", [*small_overrides(tmp_path, system_dir), "trainer.max_epochs=1"]
    )
    build_experiment(config).run()
    bomb, good = tmp_path / "bomb.png", tmp_path / "good.png"
    bomb.write_bytes(png(100_000, 100_000))
    Image.new("L", (28, 28), 128).save(good)
    answers = predict_images(config.run_dir, [bomb, good])
    error = f"{bomb}: more than 178,956,970 pixels, which is more than the 50,000,000 allowed"
    assert answers[0] == {"file": str(bomb), "error": error}
    assert answers[1]["file"] == str(good) and answers[1]["prediction"] == answers[1]["top"][0]["class"]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = main(["predict", str(config.run_dir), str(bomb), str(good)])
    assert code == 1 and stderr.getvalue() == f"error: {error}\n"
