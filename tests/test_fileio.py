"""fileio.py: atomic writes (whole file or none, no temporary file left) and loads that refuse code."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import torch

from fmnist_ignite import CheckpointError, fileio
from fmnist_ignite.fileio import (
    atomic_torch_save,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    current_umask,
    safe_torch_load,
)


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_text_is_written_into_new_folders_and_replaces_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "notes.txt"
    atomic_write_text(path, "first\n")
    assert path.read_text() == "first\n"
    atomic_write_text(path, "é second\n")
    assert path.read_bytes() == "é second\n".encode()
    assert sorted(p.name for p in path.parent.iterdir()) == ["notes.txt"]


def test_json_is_indented_and_ends_with_a_newline(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    data = {"epoch": 3, "values": [0.5, None], "name": "run"}
    atomic_write_json(path, data)
    text = path.read_text()
    assert text == json.dumps(data, indent=2) + "\n"
    assert json.loads(text) == data


@pytest.mark.parametrize("error", [RuntimeError("disk full halfway"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path: Path, error: BaseException) -> None:
    path = tmp_path / "history.json"
    path.write_text("old contents")

    def write_half(f: IO[bytes]) -> None:
        f.write(b"new contents, half of th")
        f.flush()
        raise error

    with pytest.raises(type(error)) as info:
        atomic_write(path, write_half)
    assert info.value is error
    assert path.read_text() == "old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"]


def test_a_failed_first_write_leaves_nothing(tmp_path: Path) -> None:
    def fail(f: IO[bytes]) -> None:
        raise ValueError("no")

    with pytest.raises(ValueError):
        atomic_write(tmp_path / "new.bin", fail)
    assert list(tmp_path.iterdir()) == []


def test_an_os_error_without_a_file_name_gets_the_target_path(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"

    def no_space(f: IO[bytes]) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError) as info:
        atomic_write(path, no_space)
    assert info.value.filename == str(path)
    assert str(path) in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_an_os_error_naming_a_file_keeps_its_name(tmp_path: Path) -> None:
    def other(f: IO[bytes]) -> None:
        raise FileNotFoundError(2, "No such file", "/somewhere/else")

    with pytest.raises(FileNotFoundError) as info:
        atomic_write(tmp_path / "x", other)
    assert info.value.filename == "/somewhere/else"


def test_files_get_the_umask_permissions_not_private_ones(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {})
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    os.umask(0o077)
    atomic_write_text(path, "again")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_current_umask_reads_without_changing_it(umask_022: None) -> None:
    assert current_umask() == 0o022
    assert current_umask() == 0o022


def test_threads_reading_the_umask_at_once_leave_it_as_it_was(umask_022: None) -> None:
    import sys
    import threading

    seen: list[int] = []
    threads = [threading.Thread(target=lambda: seen.extend(current_umask() for _ in range(3000))) for _ in range(4)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns between any two calls: without the lock, 0 is read back
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert set(seen) == {0o022} and current_umask() == 0o022
    assert os.umask(0o022) == 0o022


@pytest.mark.parametrize(("durable", "syncs"), [(True, 1), (False, 0)])
def test_durable_writes_are_synced_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool, syncs: int
) -> None:
    path = tmp_path / "f.txt"
    calls: list[bool] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        calls.append(path.exists())  # the target does not exist yet: synced before the rename
        real_fsync(fd)

    monkeypatch.setattr(fileio.os, "fsync", fsync)
    atomic_write_text(path, "x", durable=durable)
    assert calls == [False] * syncs
    assert path.read_text() == "x"


def test_torch_save_and_safe_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints" / "checkpoint_1.pt"
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 1, "records": [{"val_loss": 0.5}]}
    atomic_torch_save(path, state)
    loaded = safe_torch_load(path)
    assert loaded["epoch"] == 1 and loaded["records"] == [{"val_loss": 0.5}]
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["model"]["w"].device.type == "cpu"
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint_1.pt"]


def test_safe_load_of_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.pt"
    with pytest.raises(CheckpointError, match="^" + str(path) + " does not exist$"):
        safe_torch_load(path)


@pytest.mark.parametrize("contents", [b"", b"not a checkpoint at all", None])
def test_safe_load_of_a_damaged_file(tmp_path: Path, contents: bytes | None) -> None:
    path = tmp_path / "bad.pt"
    if contents is None:  # a real checkpoint cut in half
        atomic_torch_save(path, {"w": torch.zeros(1000)})
        contents = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(contents)
    with pytest.raises(CheckpointError) as info:
        safe_torch_load(path)
    message = str(info.value)
    assert message.startswith(f"{path} cannot be loaded: ") and "\n" not in message


class Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.marker),))


def test_safe_load_refuses_a_pickle_that_would_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "crafted.pt"
    torch.save({"model": Payload(marker)}, path)
    with pytest.raises(CheckpointError) as info:
        safe_torch_load(path)
    assert str(info.value) == (
        f"{path} cannot be loaded: it holds objects other than tensors and plain data, which are refused for safety"
    )
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is real: an unsafe load does run it
    assert marker.exists()
