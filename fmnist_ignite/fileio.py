"""Writing files so that a crash never leaves a half-written one, and loading them safely."""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from .errors import CheckpointError, first_line


def temporary_names(names: str) -> re.Pattern[str]:
    """The temporary files :func:`atomic_write` makes for the file names ``names`` matches (a regex):
    ``.NAME.XXXXXXXX.tmp``. Only such files, for names the package writes, are ever removed as leftovers."""
    return re.compile(rf"\.(?:{names})\.[a-z0-9_]+\.tmp")


def atomic_write(path: Path, write: Callable[[IO[bytes]], object], durable: bool = True, replace: bool = True) -> None:
    """Write ``path`` through a temporary file in the same folder, then rename it into place.

    A reader sees either the old file or the whole new one, even if the process is killed midway.
    ``durable`` also flushes the data to disk before the rename (``fsync``), so that it survives a
    power cut too; files rewritten every epoch skip that, as checkpoints do. With ``replace``
    false, the file is put in place only where nothing is (a hard link, which never replaces):
    :class:`FileExistsError` if something appeared there meanwhile.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            _place_new(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename is None:
            err.filename = str(path)  # "No space left on device" alone does not say which file
        raise


def _place_new(tmp: str, path: Path) -> None:
    """Put ``tmp`` at ``path`` only if nothing is there, atomically where the file system has hard links."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (some network and FAT file systems): check, then rename
        if path.exists() or path.is_symlink():
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
        os.replace(tmp, path)
    else:
        os.unlink(tmp)


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask (files made through ``tempfile`` would otherwise be private).

    Reading it means setting it and putting it back; the lock keeps two threads (a run's pictures
    are written side by side) from putting back the 0 the other set in between.
    """
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str, durable: bool = True) -> None:
    """:func:`atomic_write` for text (UTF-8)."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")), durable)


def atomic_write_json(path: Path, data: Any, durable: bool = True) -> None:
    """:func:`atomic_write` for JSON, indented for people to read."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n", durable)


def atomic_torch_save(path: Path, obj: Any) -> None:
    """:func:`atomic_write` for ``torch.save``."""
    atomic_write(path, lambda f: torch.save(obj, f))


def safe_torch_load(path: Path, map_location: Any = "cpu") -> Any:
    """Load a checkpoint or weights file without running code from it (``weights_only=True``).

    Raises:
        CheckpointError: the file is missing, truncated, corrupt, or holds anything but tensors
            and plain data (a crafted pickle is refused, not executed).
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except Exception as err:  # torch.load fails in many ways on a bad file
        reason = first_line(err)
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            reason = "it holds objects other than tensors and plain data, which are refused for safety"
        raise CheckpointError(f"{path} cannot be loaded: {reason}") from None
