"""The run directory: every path of a run, and its life (create, lock, clean up, read back).

No other module spells the name of a run's file. A run directory holds::

    config.yaml          the resolved config (absolute paths), written when the run is created and
                         rewritten when a resume changes a setting
    data.json            what the model expects as input and what its outputs mean
    history.json/.csv    one record per epoch
    checkpoints/         checkpoint_<epoch>.pt (full training states) and best_model.pt
    model.pt             the final weights (the best epoch's with monitor.restore_best)
    model.onnx, model.ts the model for serving, written by ``export``
    report.json          per-class test report
    *.png                history, confusion matrix, predictions
    tb/                  TensorBoard logs: tb/train, tb/validation, and the results in tb/ itself
    mlflow.json          the run's MLflow run (id, tracking URI), with logging.mlflow
    metrics.json         the test metrics; written last, it marks the run as finished
    .lock                held by the training process

A sweep (:class:`SweepDir`) is a folder of such run directories, one per trial.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import re
import shlex
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from . import runfiles
from .errors import CheckpointError, ConfigError, RunDirError, program_name
from .fileio import atomic_write, atomic_write_json, atomic_write_text, current_umask, temporary_names
from .runfiles import InputDescription, Metrics, MlflowRun

if TYPE_CHECKING:
    from .config import Config

logger = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint_(\d+)\.pt$")
FIGURES = ("history", "confusion_matrix", "predictions")


def shown(path: Path) -> str:
    """A path as a person wants to read it: relative to the current folder when inside it, else as it is."""
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _names(requested: Path) -> Iterator[Path]:
    """``NAME``, then ``NAME-1``, ``NAME-2``, ...: the names a new run asked to be ``requested`` may take."""
    yield requested
    for k in itertools.count(1):
        yield requested.with_name(f"{requested.name}-{k}")


class RunDir:
    """The files of one run, under ``path``.

    Args:
        path: the run directory (``output_dir/name``); it need not exist yet.
        requested: for a new run, the directory it was asked for (``path`` may be the next free
            ``NAME-k`` after it); defaults to ``path``.
    """

    def __init__(self, path: str | Path, requested: str | Path | None = None) -> None:
        self.path = Path(path)
        self.requested = Path(requested) if requested is not None else self.path

    @classmethod
    def next_free(cls, requested: str | Path) -> RunDir:
        """The run directory a new run asked for ``requested`` gets: ``requested`` itself if it is free, else
        the first free of ``NAME-1``, ``NAME-2``, ... Nothing is created (see :meth:`create`)."""
        requested = Path(requested)
        path = next(p for p in _names(requested) if not (p.exists() or p.is_symlink()))
        return cls(path, requested)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    config = property(lambda self: self.path / "config.yaml", doc="``config.yaml``.")
    data = property(lambda self: self.path / "data.json", doc="``data.json``: input shape, scaling, class names.")
    history_json = property(lambda self: self.path / "history.json", doc="``history.json``.")
    history_csv = property(lambda self: self.path / "history.csv", doc="``history.csv``.")
    checkpoints = property(lambda self: self.path / "checkpoints", doc="The folder of the checkpoints.")
    best = property(lambda self: self.path / "checkpoints" / "best_model.pt", doc="The best epoch's weights.")
    model = property(lambda self: self.path / "model.pt", doc="``model.pt``: the final weights.")
    metrics = property(lambda self: self.path / "metrics.json", doc="``metrics.json``: written last.")
    report = property(lambda self: self.path / "report.json", doc="``report.json``.")
    tensorboard = property(lambda self: self.path / "tb", doc="TensorBoard's log folder (the results' run).")
    mlflow_run = property(lambda self: self.path / "mlflow.json", doc="``mlflow.json``: the run's MLflow run.")
    preprocess = property(
        lambda self: self.path / "preprocess.py", doc="``preprocess.py``: how ``export`` ships the input conversion."
    )
    lock_file = property(lambda self: self.path / ".lock", doc="The training process's lock.")

    def owns(self, path: str | Path) -> bool:
        """Whether ``path`` is (or would be) one of this run's own files: a name of its layout above, or
        anything under ``checkpoints/`` or ``tb/``. Output commands never write there (see :func:`write_output`)."""
        try:
            relative = Path(os.path.realpath(path)).relative_to(os.path.realpath(self.path))
        except ValueError:
            return False
        if not relative.parts:
            return True
        if relative.parts[0] in (self.checkpoints.name, self.tensorboard.name):
            return True
        return len(relative.parts) == 1 and relative.name in self.file_names()

    def file_names(self) -> set[str]:
        """The names of the files this run writes in its top folder."""
        files = (self.config, self.data, self.history_json, self.history_csv, self.model, self.metrics, self.report)
        names = {p.name for p in (*files, self.mlflow_run, self.lock_file, self.preprocess)}
        names |= {self.figure(f).name for f in FIGURES} | {self.exported(f).name for f in ("onnx", "torchscript")}
        return names

    def figure(self, name: str) -> Path:
        """``<name>.png``."""
        return self.path / f"{name}.png"

    def exported(self, fmt: str) -> Path:
        """Where ``export`` writes the model: ``model.onnx`` or ``model.ts``."""
        return self.path / ("model.onnx" if fmt == "onnx" else "model.ts")

    def tensorboard_run(self, name: str) -> Path:
        """TensorBoard's run ``tb/<name>`` (``train``, ``validation``)."""
        return self.tensorboard / name

    def checkpoint(self, epoch: int) -> Path:
        """The full training state saved after ``epoch``."""
        return self.checkpoints / f"checkpoint_{epoch}.pt"

    def checkpoint_files(self) -> list[Path]:
        """Saved training states, newest epoch first."""
        if not self.checkpoints.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.checkpoints.iterdir() if (m := CHECKPOINT_RE.match(p.name))]
        return [p for _, p in sorted(found, reverse=True)]

    @property
    def finished(self) -> bool:
        """Whether the run finished (``metrics.json`` exists)."""
        return self.metrics.is_file()

    def exists(self) -> bool:
        """Whether the directory exists."""
        return self.path.is_dir()

    def create(self, config: Config) -> Config:
        """Create the directory with its ``config.yaml``, all at once: it appears whole or not at all.

        An existing run is never touched: if :attr:`path` was taken meanwhile (by another process),
        the next free ``NAME-k`` after it is created instead and :attr:`path` becomes that.

        Returns:
            the config as written: its ``name`` is the directory's.

        Raises:
            RunDirError: the output folder cannot be written.
        """
        staging: Path | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=self.path.parent, prefix=f".{self.requested.name}.partial-"))
            os.chmod(staging, 0o777 & ~current_umask())
            candidates = itertools.dropwhile(lambda p: p != self.path, _names(self.requested))
            for path in candidates:
                if path.exists() or path.is_symlink():
                    continue
                written = config.model_copy(update={"name": path.name})
                atomic_write_text(staging / self.config.name, written.to_yaml())
                try:
                    # A directory renamed onto an existing one fails unless that one is empty, and a
                    # run directory never is: whoever renames first owns the name.
                    os.rename(staging, path)
                except OSError as err:
                    if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
                    continue
                staging = None
                self.path = path
                return written
        except OSError as err:
            raise RunDirError(
                f"cannot create run directory {self.path}: {err.strerror or err}; choose a writable output_dir"
            ) from None
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
        raise AssertionError("unreachable: the names NAME-k never run out")

    def update_config(self, config: Config) -> None:
        """Rewrite ``config.yaml`` with changed settings and remove ``metrics.json``: the run is unfinished
        until its new end (a resume that extends a run, see :func:`~fmnist_ignite.resume_experiment`)."""
        atomic_write_text(self.config, config.to_yaml())
        self.metrics.unlink(missing_ok=True)

    def require(self) -> None:
        """Check that this is a run directory.

        Raises:
            RunDirError: it does not exist, has no ``config.yaml``, or holds a link leaving it
                (:meth:`refuse_links`).
        """
        if not self.path.is_dir():
            raise RunDirError(f"run directory {self.path} does not exist")
        if not self.config.is_file():
            raise RunDirError(f"{self.path} is not a run directory (no config.yaml); pass the folder a run created")
        self.refuse_links()

    def load_config(self) -> Config:
        """The run's own config, with ``output_dir`` and ``name`` pointing at where the run is now."""
        from .config import read_yaml, validate_config

        self.require()
        data = read_yaml(self.config)
        data.update(output_dir=str(self.path.parent.absolute()), name=self.path.name)
        return validate_config(data, str(self.config))

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the run while training; the OS releases it if the process dies.

        The lock file is opened without following symbolic links and without truncating, so a
        crafted run directory cannot make the run write to another file.

        Raises:
            RunDirError: another process holds the lock, or ``.lock`` is not a plain file.
        """
        held = ExitStack()
        try:
            fd = held.enter_context(exclusive_lock(self.lock_file, wait=False))
        except BlockingIOError:
            raise RunDirError(f"{self.path} is in use by another training process; wait for it or stop it") from None
        except OSError as err:
            if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise RunDirError(
                    f"{self.path} is read-only ({err.strerror}): a run writes its lock, checkpoints and history "
                    "there; make it writable, or copy the run somewhere writable and resume the copy"
                ) from None
            raise RunDirError(
                f"{self.lock_file} cannot be opened as a lock ({err.strerror}); it must be a plain file: remove it"
            ) from None
        with held:
            if fd is not None:
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
            yield

    def remove_temporary_files(self) -> None:
        """Delete what a killed process of this package left half-written, and nothing else.

        Only the package's own temporary names are removed: ``.NAME.XXXXXXXX.tmp`` where ``NAME``
        is a file the run writes there (:func:`~fmnist_ignite.fileio.temporary_names`); a user's
        ``tmp_notes`` or ``.draft.tmp`` stays. Links are not followed (see :meth:`refuse_links`).
        """
        ours = {
            self.path: temporary_names("|".join(re.escape(n) for n in sorted(self.file_names()))),
            self.checkpoints: temporary_names(rf"{CHECKPOINT_RE.pattern[1:-1]}|{re.escape(self.best.name)}"),
        }
        for folder, pattern in ours.items():
            if folder.is_symlink() or not folder.is_dir():
                continue
            for path in folder.iterdir():
                if pattern.fullmatch(path.name) and path.is_file() and not path.is_symlink():
                    logger.info("Removing %s, left half-written by an interrupted process", path)
                    path.unlink(missing_ok=True)

    def refuse_links(self) -> None:
        """Refuse a run directory holding a symbolic link that leaves it (a file or a folder, at any depth).

        A run writes, rotates and cleans up inside its directory; through a link to elsewhere it
        would write or delete files that are not the run's. Links that stay inside are fine.

        Raises:
            RunDirError: names the first such link and where it leads.
        """
        root = os.path.realpath(self.path)
        for folder, dirs, files in os.walk(self.path):
            for name in sorted([*dirs, *files]):
                entry = Path(folder) / name
                if not entry.is_symlink():
                    continue
                target = os.path.realpath(entry)
                if os.path.commonpath([root, target]) != root:
                    raise RunDirError(
                        f"{entry} is a symbolic link to {target}, outside the run directory; a run only reads and "
                        "writes inside its own folder: replace the link with the file or folder itself"
                    )

    def weights(self, which: str | Path | None = None) -> Path:
        """The weights file to use: ``best``, ``last`` (the newest checkpoint), a path, or ``None``.

        ``None`` means ``model.pt`` if the run finished, else the best model.

        Raises:
            RunDirError: a path that is not a file.
            CheckpointError: the run has no such weights yet.
        """
        path: Path | None
        if which is None:
            path = self.model if self.model.is_file() else self.best
        elif which == "best":
            path = self.best
        elif which == "last":
            path = next(iter(self.checkpoint_files()), None)
        else:
            path = Path(which)
            if not path.is_file():
                raise RunDirError(f"--checkpoint {which}: no such file; use best, last or the path of a .pt file")
        if path is None or not path.is_file():
            raise CheckpointError(f"{self.path} has no saved weights yet ({which or 'model.pt or the best model'})")
        return path

    def read_input(self) -> InputDescription:
        """``data.json``, checked (see :class:`~fmnist_ignite.runfiles.InputDescription`).

        Raises:
            RunDirError: missing (it is written when a run starts), not JSON, or a field wrong: one line.
        """
        return runfiles.parse(InputDescription, runfiles.read_json(self.data), str(self.data))

    def write_input(self, description: InputDescription) -> None:
        """Write ``data.json`` (atomically)."""
        atomic_write_json(self.data, description.model_dump(mode="json"))

    def read_metrics(self) -> dict[str, Any]:
        """``metrics.json``, checked (see :class:`~fmnist_ignite.runfiles.Metrics`); the fields as written.

        Raises:
            RunDirError: missing, not JSON, or a field wrong: one line naming the file and the field.
        """
        data = runfiles.read_json(self.metrics)
        runfiles.parse(Metrics, data, str(self.metrics))
        return dict(data)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        """Write ``metrics.json`` (atomically, last: it marks the run as finished)."""
        runfiles.parse(Metrics, metrics, str(self.metrics))
        atomic_write_json(self.metrics, metrics)

    def read_history(self) -> list[dict[str, Any]]:
        """``history.json``'s records, each checked (see :class:`~fmnist_ignite.runfiles.EpochRecord`).

        Raises:
            RunDirError: missing, not JSON, or a record that is not an epoch record: one line.
        """
        return runfiles.parse_history(runfiles.read_json(self.history_json), str(self.history_json))

    def read_mlflow_run(self) -> MlflowRun | None:
        """``mlflow.json``: the MLflow run this run logs to; ``None`` before it has one.

        Raises:
            RunDirError: the file is damaged (one line naming it).
        """
        if not self.mlflow_run.is_file():
            return None
        return runfiles.parse(MlflowRun, runfiles.read_json(self.mlflow_run), str(self.mlflow_run))

    def write_mlflow_run(self, run: MlflowRun) -> None:
        """Write ``mlflow.json`` (atomically)."""
        atomic_write_json(self.mlflow_run, run.model_dump(mode="json"))

    def resume_hint(self) -> str:
        """How to continue this run, as a command a shell takes whatever the path holds."""
        return f"resume with '{program_name()} --resume {shell_quote(shown(self.path))}'"


def enclosing_run(path: str | Path) -> RunDir | None:
    """The run directory ``path`` lies in (at any depth, links resolved), or ``None``."""
    folder = Path(os.path.realpath(Path(path).absolute().parent))
    for candidate in (folder, *folder.parents):
        if (candidate / "config.yaml").is_file():
            return RunDir(candidate)
    return None


def check_output(path: str | Path, force: bool = False, own: Path | None = None) -> bool:
    """Refuse what :func:`write_output` refuses, writing nothing; returns whether ``path`` exists.

    A command that writes two files checks both first, so that neither is written when one is refused.

    Raises:
        ConfigError: one line naming the path and why it is refused.
    """
    mine = own is not None and os.path.realpath(path) == os.path.realpath(own)
    run = enclosing_run(path)
    if run is not None and run.owns(path) and not mine:
        raise ConfigError(
            f"{path} is a file of the run in {run}; an output is never written over it: name another file"
        )
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        found = None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be written ({err.strerror or err})") from None
    if found is not None:
        if stat.S_ISDIR(found.st_mode):
            raise ConfigError(f"{path} is a folder; name the file to write")
        if stat.S_ISLNK(found.st_mode):
            raise ConfigError(f"{path} is a symbolic link, which an output never replaces; name a file")
        if not stat.S_ISREG(found.st_mode):
            raise ConfigError(
                f"{path} is not a regular file (a device, a FIFO or a socket); an output never replaces one"
            )
        if not (force or mine):
            raise ConfigError(f"{path} exists; pass --force to replace it")
    return found is not None


def write_output(
    path: str | Path, write: Callable[[IO[bytes]], object], force: bool = False, own: Path | None = None
) -> Path:
    """Write the file an output command (``export``, ``compare --output``) was asked for; the one way they write.

    The file is written whole through a temporary file, and it only ever lands where nothing is,
    or on a regular file the caller was asked to replace (``force``) or owns (``own``: the
    run's own export slot). Never on a special file (a device, a FIFO, a socket), a symbolic
    link, a folder, or a file of a run (:meth:`RunDir.owns`), whatever ``force`` says.

    Returns:
        the path written.

    Raises:
        ConfigError: one line naming the path and why it is refused or cannot be written.
    """
    path = Path(path)
    found = check_output(path, force, own)
    try:
        atomic_write(path, write, replace=found)
    except FileExistsError:
        raise ConfigError(f"{path} exists (it appeared while writing); pass --force to replace it") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be written ({err.strerror or err})") from None
    return path


def shell_quote(path: str | Path) -> str:
    """``path`` quoted for a POSIX shell, on one line: ``$'...'`` escapes where it holds a newline or the like."""
    text = str(path)
    if text.isprintable():
        return shlex.quote(text)
    escaped = "".join(_ansi_c(c) for c in text)
    return f"$'{escaped}'"


def _ansi_c(char: str) -> str:
    if char in "'\\":
        return "\\" + char
    if char.isprintable():
        return char
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


class SweepDir:
    """The files of a sweep, under ``output_dir/NAME``: one run directory per trial, named after its values.

    It holds::

        sweep.json           what was swept (the config, the plain overrides, the swept keys, the storage)
        study.db             the Optuna study (SQLite), unless the sweep was given --storage
        <trial name>/        one run directory per trial
        results.csv          one row per trial
        results.png          the monitored value against each swept key
        .claims.lock         held while a process of this machine picks its next trial

    Args:
        path: the sweep directory; it need not exist yet.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"SweepDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    definition = property(lambda self: self.path / "sweep.json", doc="``sweep.json``: what was swept.")
    study_db = property(lambda self: self.path / "study.db", doc="``study.db``: the default Optuna storage.")
    results_csv = property(lambda self: self.path / "results.csv", doc="``results.csv``: one row per trial.")
    results_figure = property(lambda self: self.path / "results.png", doc="``results.png``.")
    claims_lock = property(lambda self: self.path / ".claims.lock", doc="Held while a trial is picked.")

    def exists(self) -> bool:
        """Whether this is a sweep directory (``sweep.json`` exists)."""
        return self.definition.is_file()

    def trial(self, name: str) -> RunDir:
        """The run directory of the trial ``name``."""
        return RunDir(self.path / name)

    def trials(self) -> list[RunDir]:
        """The trials' run directories, by name."""
        return [RunDir(p) for p in sorted(self.path.iterdir()) if (p / "config.yaml").is_file()]

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the sweep's lock, waiting for it: the processes of one machine pick trials one at a time.

        The OS releases it if the process dies.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(self.claims_lock, wait=True):
            yield

    @contextmanager
    def made(self) -> Iterator[None]:
        """If the block fails, remove the sweep folder (and those above it) when the block made them.

        Only the files a sweep makes while opening are removed (``.claims.lock``, ``study.db``,
        ``sweep.json``); a folder that holds anything else stays.
        """
        new = [p for p in (self.path, *self.path.parents) if not p.exists()]  # deepest first
        try:
            yield
        except BaseException:
            if new:
                for file in (self.claims_lock, self.study_db, self.definition):
                    file.unlink(missing_ok=True)
                for folder in new:
                    try:
                        folder.rmdir()
                    except OSError:
                        break
            raise


@contextmanager
def exclusive_lock(path: Path, wait: bool) -> Iterator[int | None]:
    """Hold an exclusive ``flock`` on ``path``, created if missing; yields its descriptor (``None`` off POSIX).

    The file is opened without following symbolic links and without truncating, so a crafted
    folder cannot make the holder write to another file. The OS releases the lock if the process dies.

    Raises:
        BlockingIOError: ``wait`` is false and another process holds the lock.
        OSError: the file cannot be opened (a symbolic link, a folder, no permission).
    """
    try:
        import fcntl
    except ImportError:  # not on POSIX: no lock
        yield None
        return
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, 0o666 & ~current_umask())
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        try:
            yield fd
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
