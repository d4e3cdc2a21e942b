"""errors.py: one-line messages and the exit code of each error class."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

import fmnist_ignite
from fmnist_ignite import errors
from fmnist_ignite.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ExportError,
    FmnistIgniteError,
    RunDirError,
    SweepError,
    TrainingError,
    did_you_mean,
    first_line,
    program_name,
)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ValueError("one\ntwo\nthree"), "one"),
        (ValueError("  indented first line\nnext"), "indented first line"),
        (ValueError("\n\nafter blank lines\nmore"), "after blank lines"),
        (KeyError("key"), "'key'"),
        (RuntimeError(""), "RuntimeError"),
        (RuntimeError("   \n  "), "RuntimeError"),
        (ConfigError(), "ConfigError"),
    ],
)
def test_first_line(error: BaseException, expected: str) -> None:
    assert first_line(error) == expected


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["/usr/local/bin/fmnist-ignite", "train"], "fmnist-ignite"),
        (["fmnist-ignite"], "fmnist-ignite"),
        (["/repo/fmnist_ignite/__main__.py", "train"], "python -m fmnist_ignite"),
        (["/usr/bin/fmnist-ignite-old"], "python -m fmnist_ignite"),
        ([], "python -m fmnist_ignite"),
    ],
)
def test_program_name_follows_how_it_was_invoked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, argv: list[str], expected: str
) -> None:
    python = executable(tmp_path / "bin" / "python")
    monkeypatch.setenv("PATH", str(python.parent))
    monkeypatch.setattr(errors.sys, "executable", str(python))  # the python a shell finds
    monkeypatch.setattr(errors.sys, "argv", argv)
    assert program_name() == expected


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (FmnistIgniteError, 1),
        (ConfigError, 2),
        (RunDirError, 2),
        (DataError, 1),
        (CheckpointError, 1),
        (TrainingError, 1),
        (ExportError, 1),
        (SweepError, 1),
    ],
)
def test_exit_codes_and_base_class(cls: type[FmnistIgniteError], code: int) -> None:
    assert cls.exit_code == code
    error = cls("what went wrong")
    assert error.exit_code == code
    assert isinstance(error, FmnistIgniteError) and isinstance(error, Exception)
    assert str(error) == "what went wrong"


def test_usage_errors_are_the_only_ones_with_exit_code_2() -> None:
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, FmnistIgniteError)]
    assert {c.__name__ for c in classes if c.exit_code == 2} == {"ConfigError", "RunDirError"}
    assert len(classes) == 10  # RunError and LostContact too


def test_errors_are_the_same_objects_from_the_package() -> None:
    for name in ("CheckpointError", "ConfigError", "DataError", "ExportError", "FmnistIgniteError", "RunDirError"):
        assert getattr(fmnist_ignite, name) is getattr(errors, name)
    assert fmnist_ignite.TrainingError is TrainingError and fmnist_ignite.SweepError is SweepError


def test_one_except_clause_catches_every_library_error() -> None:
    caught = []
    for cls in (ConfigError, RunDirError, DataError, CheckpointError, TrainingError, ExportError, SweepError):
        try:
            raise cls(f"{cls.__name__} message")
        except FmnistIgniteError as err:
            caught.append((err.exit_code, first_line(err)))
    assert caught == [
        (2, "ConfigError message"),
        (2, "RunDirError message"),
        (1, "DataError message"),
        (1, "CheckpointError message"),
        (1, "TrainingError message"),
        (1, "ExportError message"),
        (1, "SweepError message"),
    ]


def test_error_messages_use_the_first_line_or_the_type_name() -> None:
    from fmnist_ignite.errors import first_line

    assert first_line(RuntimeError("size mismatch\n\tdetails")) == "size mismatch"
    assert first_line(RuntimeError()) == "RuntimeError"
    assert first_line(KeyError("")) == "''"


def executable(path: Path, target: Path | None = None) -> Path:
    """An executable file at ``path`` (a link to ``target`` when given), its folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if target is not None:
        path.symlink_to(target)
    else:
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    return path


@pytest.fixture
def invoked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """``python -m fmnist_ignite`` in ``tmp_path/work``, with a ``python`` of the system's on PATH."""
    system = executable(tmp_path / "usr" / "bin" / "python")
    monkeypatch.setenv("PATH", f"{tmp_path / 'nothing'}{os.pathsep}{system.parent}")
    monkeypatch.setattr(errors.sys, "argv", ["/repo/fmnist_ignite/__main__.py"])
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path


def test_program_name_names_a_venvs_python_inside_the_folder_relatively(
    monkeypatch: pytest.MonkeyPatch, invoked: Path
) -> None:
    # The venv's python links to the system's: the same file, but not what `python` runs in this shell.
    venv = executable(invoked / "work" / ".venv" / "bin" / "python", target=invoked / "usr" / "bin" / "python")
    monkeypatch.setattr(errors.sys, "executable", str(venv))
    assert program_name() == ".venv/bin/python -m fmnist_ignite"


def test_program_name_names_an_interpreter_elsewhere_by_its_quoted_path(
    monkeypatch: pytest.MonkeyPatch, invoked: Path
) -> None:
    elsewhere = executable(invoked / "my envs" / "bin" / "python3")
    monkeypatch.setattr(errors.sys, "executable", str(elsewhere))
    assert program_name() == f"{shlex.quote(str(elsewhere))} -m fmnist_ignite"
    assert shlex.split(program_name()) == [str(elsewhere), "-m", "fmnist_ignite"], "a shell reads the path back"


def test_program_name_is_python_when_the_shell_finds_the_running_interpreter(
    monkeypatch: pytest.MonkeyPatch, invoked: Path
) -> None:
    monkeypatch.setattr(errors.sys, "executable", str(invoked / "usr" / "bin" / "python"))
    assert program_name() == "python -m fmnist_ignite"
    monkeypatch.setattr(errors.sys, "executable", "")
    assert program_name() == "python -m fmnist_ignite"
    monkeypatch.setattr(errors.sys, "argv", [str(invoked / "work" / ".venv" / "bin" / "fmnist-ignite")])
    assert program_name() == "fmnist-ignite"


def test_did_you_mean_names_the_closest_choice_or_nothing() -> None:
    assert did_you_mean("val_acc", ["val_loss", "val_accuracy", "train_loss"]) == " (did you mean 'val_accuracy'?)"
    assert did_you_mean("zzz", ["val_loss", "val_accuracy"]) == ""
