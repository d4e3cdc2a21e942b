"""Shared pieces of the tests: tiny uint8 data, a hand-wired :class:`~fmnist_ignite.Context`, small data files,
crafted images, and the helpers of the tests that start a real process.

:func:`make_rig` wires the engines, history and monitor the way an experiment does (data order,
validation, record, best epoch at each epoch's end) but from tensors held in memory, with no data
files, no run directory created and no handler attached, so that a handler can be tested alone.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from fmnist_ignite import Config, Context, load_config
from fmnist_ignite.build import attach_run_steps
from fmnist_ignite.data.loaders import TensorLoader
from fmnist_ignite.engine import create_evaluator, create_trainer, make_prepare_batch
from fmnist_ignite.history import History
from fmnist_ignite.models import LogisticRegression
from fmnist_ignite.monitor import Monitor
from fmnist_ignite.rundir import RunDir

from .conftest import REPO, idx_images, idx_labels, synthetic_images

MEAN, STD = 0.2860, 0.3530


def tiny_images(n: int, seed: int = 1, shape: tuple[int, ...] = (28, 28)) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` learnable uint8 images ``(n, 1, H, W)`` (or ``(n, C, H, W)`` for a 3-d ``shape``) and int64 labels."""
    images, labels = synthetic_images(n, shape, seed)
    x = torch.from_numpy(images)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return x, torch.from_numpy(labels).long()


@dataclass
class Rig:
    """A context and the loaders its engines run on."""

    context: Context
    train: TensorLoader
    val: TensorLoader

    def run(self, epochs: int) -> None:
        self.context.trainer.run(self.train, max_epochs=epochs)


def small_config(tmp_path: Path, *overrides: str) -> Config:
    """A config whose run directory is ``tmp_path/run`` (never created here)."""
    base = {"output_dir": str(tmp_path), "name": "run", "device": "cpu", "optimizer": {"lr": 0.05}}
    return load_config(base, list(overrides))


def make_rig(
    tmp_path: Path,
    config: Config | None = None,
    n_train: int = 48,
    n_val: int = 16,
    batch_size: int = 16,
    metric: str = "val_accuracy",
    mode: Any = "max",
    write: bool = True,
) -> Rig:
    """Engines, history and monitor over ``n_train`` + ``n_val`` tiny images on the CPU (3 batches per epoch)."""
    config = config or small_config(tmp_path)
    device = torch.device("cpu")
    images, labels = tiny_images(n_train + n_val)
    train_idx, val_idx = torch.arange(n_train), torch.arange(n_train, n_train + n_val)
    torch.manual_seed(0)
    model = LogisticRegression(784, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.optimizer.lr)
    prepare_batch = make_prepare_batch(MEAN, STD, True)
    trainer = create_trainer(model, optimizer, device, prepare_batch)
    evaluator = create_evaluator(model, device, prepare_batch)
    train = TensorLoader(images, labels, batch_size, shuffle=True, seed=0, indices=train_idx)
    val = TensorLoader(images, labels, batch_size, shuffle=False, indices=val_idx)
    rundir = RunDir(config.run_dir)
    history = History(rundir, trainer, evaluator, optimizer, write=write)
    monitor = Monitor(model, metric, mode)
    attach_run_steps(trainer, evaluator, train, val, history, monitor)
    context = Context(
        config=config,
        rundir=rundir,
        device=device,
        model=model,
        optimizer=optimizer,
        trainer=trainer,
        evaluator=evaluator,
        classes=tuple(str(k) for k in range(10)),
        prepare_batch=prepare_batch,
        history=history,
        monitor=monitor,
    )
    return Rig(context, train, val)


def read_history(run: Path) -> list[dict]:
    """A run's ``history.json``."""
    return json.loads((run / "history.json").read_text())


def handler_entry(name: str, event: str, kwargs: str) -> str:
    """A ``handlers=[...]`` override naming one test plugin."""
    return f"handlers=[{{target: 'tests.plugins:{name}', event: {event}, kwargs: {{{kwargs}}}}}]"


def start_cli(*args: str) -> subprocess.Popen[str]:
    """``python -m fmnist_ignite ARGS`` started in the background, for a test to signal or kill."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "fmnist_ignite", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, process: subprocess.Popen[str], timeout: float = 120) -> None:
    """Wait until ``process`` has made ``path`` (its fault point); fail if it ends or takes too long."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"process ended before reaching the fault point: {process.communicate()[1]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the fault point was not reached in time")
        time.sleep(0.05)


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Fail (instead of hanging) when the block runs longer than ``seconds``; main thread only."""

    def too_long(signum: int, frame: Any) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def data_config(root: Path, system_dir: Path | None = None, dataset: str = "fashion_mnist") -> Any:
    """The ``data`` section of a config reading ``dataset`` from ``root`` (and ``system_dir``)."""
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


def write_image_folder(
    root: Path,
    classes: tuple[str, ...] = ("shirt", "bag", "coat"),
    per_class: tuple[int, int] = (4, 2),
    size: tuple[int, int] = (12, 10),
    color: bool = False,
    test: bool = True,
) -> Path:
    """``root/train/<class>/`` (and ``root/test/<class>/``): class ``k``'s images are filled with ``40 + 60 k``
    plus noise, PNG and JPEG alternating; colour images have a red tint."""
    rng = np.random.default_rng(0)
    splits = [("train", per_class[0])] + ([("test", per_class[1])] if test else [])
    for split, count in splits:
        for k, cls in enumerate(sorted(classes)):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                gray = np.clip(40 + 60 * k + rng.normal(0, 8, size[::-1]), 0, 255).astype(np.uint8)
                if color:
                    pixels = np.stack([np.clip(gray.astype(int) + 50, 0, 255).astype(np.uint8), gray, gray], -1)
                    image = Image.fromarray(pixels, "RGB")
                else:
                    image = Image.fromarray(gray, "L")
                image.save(folder / (f"{i}.png" if i % 2 == 0 else f"{i}.jpg"))
    return root


def png(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` grey pixels (its pixel data is short)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(1000))) + chunk(b"IEND", b"")
    )


# A sweep's processes, one thread each: two of them share the two cores.
ONE_THREAD = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}


def product_photo(pixels: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A product photo of a 28x28 Fashion-MNIST image: its garment dark on a light, slightly tinted
    background, RGB, upscaled 8 to 12 times (224-336 pixels) and placed off-centre with uneven
    margins of 10-160 pixels, as a shop's picture of a garment looks."""
    scale = int(rng.integers(8, 13))
    side = 28 * scale
    garment = Image.fromarray(255 - pixels).resize((side, side), Image.Resampling.BICUBIC)
    left, right, top, bottom = (int(m) for m in rng.integers(10, 161, 4))
    canvas = Image.new("L", (left + side + right, top + side + bottom), 255)
    canvas.paste(garment, (left, top))
    tint = rng.integers(225, 256, 3)
    rgb = np.asarray(canvas, dtype=np.float64)[:, :, None] / 255 * tint
    return Image.fromarray(rgb.round().astype(np.uint8), "RGB")


def run_without_torch(code: str, cwd: Path) -> str:
    """``code`` run by a fresh Python that must not import torch or this package; its output."""
    check = "\nimport sys\nassert not {'torch', 'fmnist_ignite'} & set(sys.modules), 'torch or the package imported'\n"
    result = subprocess.run([sys.executable, "-c", code + check], capture_output=True, text=True, cwd=cwd, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def onnx_route_classes(model: Path, files: list[Path]) -> list[str]:
    """The class of each file as a user without this package gets it: the ``preprocess.py`` that export
    wrote beside ``model``, imported from there, and ONNX Runtime."""
    code = f"""
import json, sys
import numpy as np
import onnxruntime as ort
sys.path.insert(0, {str(model.parent)!r})
from preprocess import convert, read_image
session = ort.InferenceSession({str(model)!r})
meta = {{k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}}
for name in {[str(f) for f in files]!r}:
    pixels = convert(read_image(name), meta["dataset"], meta["image_shape"], meta["background"])
    print(meta["classes"][int(session.run(None, {{"pixels": pixels[None].astype(np.float32)}})[0][0].argmax())])
"""
    return run_without_torch(code, model.parent).splitlines()


def sweep_command(*args: str) -> list[str]:
    """``python -m fmnist_ignite sweep ARGS`` as a command line."""
    return [sys.executable, "-m", "fmnist_ignite", "sweep", *args]
