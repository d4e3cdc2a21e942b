"""Fixtures: small data sets written by the tests in the real file formats, small configs, the command line.

``cli(*args)`` runs the command line in the test's own process (``main()`` and capsys: exit code,
stdout, stderr), which costs no interpreter and torch start-up; :func:`run_cli` starts a real
``python -m fmnist_ignite`` for the tests where a real process is the point (signals, kills,
start-up, data-parallel processes, one smoke test of the program itself).
"""

from __future__ import annotations

import gc
import gzip
import importlib
import importlib.util
import io
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fmnist_ignite import Config, build_experiment, load_config
from fmnist_ignite.app import console
from fmnist_ignite.app.cli import main

REPO = Path(__file__).resolve().parents[1]
BASE = str(REPO / "configs" / "base.yaml")
N_TRAIN, N_TEST = 600, 200
CLASS_SPREAD = 10.0


VALUES = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr")


def values(history: list[dict]) -> list[tuple]:
    """A history without its timings: what must be identical between equivalent runs."""
    return [tuple(r[k] for k in VALUES) for r in history]


def synthetic_images(n: int, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable images: a fixed random prototype per class plus noise."""
    base = np.random.default_rng(0)
    prototypes = base.integers(60, 200, size=shape) + base.normal(0, CLASS_SPREAD, size=(10, *shape))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n)
    noise = rng.normal(0, 60, size=(n, *shape))
    images = np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8)
    return images, labels.astype(np.uint8)


def idx_images(images: np.ndarray) -> bytes:
    n, rows, cols = images.shape
    return struct.pack(">IIII", 2051, n, rows, cols) + images.tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 2049, len(labels)) + labels.tobytes()


def write_fashion_gz(folder: Path, n_train: int = N_TRAIN, n_test: int = N_TEST) -> Path:
    """The four Fashion-MNIST ``*-ubyte.gz`` files, as Debian's package installs them."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images, labels = synthetic_images(n, (28, 28), seed)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_images(images)))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_labels(labels)))
    return folder


def write_cifar_archive(root: Path, per_batch: int = 20, n_test: int = 30) -> Path:
    """``cifar-10-python.tar.gz`` in CIFAR-10's own python format, with few images."""
    root.mkdir(parents=True, exist_ok=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    members: dict[str, bytes] = {"batches.meta": pickle.dumps({"label_names": names, "num_cases_per_batch": per_batch})}
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        n = n_test if name == "test_batch" else per_batch
        images, labels = synthetic_images(n, (3, 32, 32), 10 + i)
        batch = {"batch_label": name, "labels": labels.tolist(), "data": images.reshape(n, -1), "filenames": []}
        members[name] = pickle.dumps(batch)
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return archive


@pytest.fixture
def torch_one_thread() -> Iterator[None]:
    """torch on one thread for the test (modules whose tests train several runs in one process use it)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def system_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only stand-in for /usr/share/datasets/fashion-mnist with small data."""
    return write_fashion_gz(tmp_path_factory.mktemp("system") / "fashion-mnist")


def small_overrides(tmp_path: Path, system_dir: Path) -> list[str]:
    return [
        f"data.root={tmp_path / 'data'}",
        f"data.system_dir={system_dir}",
        f"output_dir={tmp_path / 'runs'}",
        "data.val_size=100",
        "data.batch_size=32",
        "data.eval_batch_size=64",
        "trainer.max_epochs=4",
        "optimizer.lr=0.01",
        "logging.progress_bar=false",
        "name=small",
    ]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """A PostgreSQL server of the tests' own on 127.0.0.1 (see :mod:`tests.postgres`), stopped at the end."""
    from .postgres import Server, binaries, missing

    bin_dir = binaries()
    if bin_dir is None:
        missing("PostgreSQL", "apt-get install postgresql (Debian)")
    if importlib.util.find_spec("psycopg") is None:
        missing("psycopg, PostgreSQL's driver", "pip install 'fmnist_ignite[postgres]'")
    server = Server(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres(postgres_server: Any) -> str:
    """The SQLAlchemy URL of a new, empty database on the tests' PostgreSQL server."""
    return str(postgres_server.new_database())


@pytest.fixture
def make_config(tmp_path: Path, system_dir: Path) -> Callable[..., Config]:
    """``make_config("key=value", ...)``: a small, fast config writing under ``tmp_path``."""

    def make(*overrides: str) -> Config:
        return load_config(REPO / "configs" / "base.yaml", [*small_overrides(tmp_path, system_dir), *overrides])

    return make


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 300, path: tuple[Path, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """``python -m fmnist_ignite ARGS`` in a subprocess, with the repository (and ``path``) importable."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in (*path, REPO))}
    return subprocess.run(
        [sys.executable, "-m", "fmnist_ignite", *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env=env,
        timeout=timeout,
    )


@pytest.fixture
def small(tmp_path: Path, system_dir: Path) -> list[str]:
    """The overrides of :func:`small_overrides` for this test's ``tmp_path``."""
    return small_overrides(tmp_path, system_dir)


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory, system_dir: Path) -> list[tuple]:
    """The history values of an uninterrupted run of the small config (early stopping off, 4 epochs)."""
    tmp = tmp_path_factory.mktemp("reference")
    config = load_config(BASE, [*small_overrides(tmp, system_dir), "early_stopping.enabled=false"])
    experiment = build_experiment(config)
    experiment.run()
    return values(experiment.history)


@pytest.fixture(scope="session")
def finished(tmp_path_factory: pytest.TempPathFactory, system_dir: Path) -> dict:
    """A finished small run (4 epochs, TensorBoard on, as by default), and what the tests need to check it.

    Shared by the tests of a worker: they read it, or copy it before they change it.
    """
    import torch

    tmp = tmp_path_factory.mktemp("finished")
    config = load_config(BASE, small_overrides(tmp, system_dir))
    experiment = build_experiment(config)
    metrics = experiment.run()
    data = experiment.data
    x, _ = experiment.context.prepare_batch((data.test_images, data.test_labels), "cpu", False)
    with torch.no_grad():
        predicted = experiment.model(x).argmax(1)
    return {"run": config.run_dir, "metrics": metrics, "data": data, "predicted": predicted}


CLI = tuple[int, str, str]


def process_state() -> tuple:
    """What the command line may change in its process and must put back: logging, signal handlers, the collector."""
    root = logging.getLogger()
    return (
        root.handlers[:],
        root.level,
        [logging.getLogger(name).level for name in console.LOGGERS],
        logging.getLogger("ignite.engine.engine.Engine").filters[:],
        logging.root.manager.disable,
        signal.getsignal(signal.SIGINT),
        signal.getsignal(signal.SIGTERM),
        gc.isenabled(),
        os.environ.get("MLFLOW_LOGGING_LEVEL"),
    )


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CLI]:
    """``cli(*args)``: the command line in this process, returning (exit code, stdout, stderr).

    Each call checks that the command left its process as it found it (the tests after it, in the
    same worker, must not inherit its logging or signal handlers).
    """

    def call(*args: str | Path) -> CLI:
        capsys.readouterr()  # what the test printed before is not the command's
        before = process_state()
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_:  # argparse's usage errors, --help, --version
            code = int(exit_.code or 0)
        captured = capsys.readouterr()
        assert process_state() == before, "the command line left its process changed"
        return code, captured.out, captured.err

    return call


@pytest.fixture
def importable(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path], None]]:
    """``importable(folder)``: its modules and installed entry points visible to this process, for this test only.

    What was imported from the folder is forgotten afterwards (``sys.path`` is put back by monkeypatch).
    """
    folders: list[Path] = []

    def add(folder: Path) -> None:
        monkeypatch.syspath_prepend(str(folder))
        importlib.invalidate_caches()
        folders.append(Path(folder))

    yield add
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and any(Path(file).is_relative_to(folder) for folder in folders):
            del sys.modules[name]
    importlib.invalidate_caches()
