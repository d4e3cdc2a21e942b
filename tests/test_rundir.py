"""The run directory: staged creation, the lock, temporary files, which weights, the resolved config."""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from fmnist_ignite import CheckpointError, Config, RunDir, RunDirError, build_experiment, load_config
from fmnist_ignite.errors import program_name

from .conftest import BASE, CLI, small_overrides


def test_create_writes_the_config_and_takes_the_next_name_when_it_exists(make_config: Callable[..., Config]) -> None:
    cfg = make_config()
    rundir = RunDir(cfg.run_dir)
    assert rundir.create(cfg) == cfg
    assert rundir.exists() and rundir.config.read_text() == cfg.to_yaml()
    assert not rundir.finished
    again = RunDir(cfg.run_dir)
    written = again.create(cfg)
    assert again.path == cfg.run_dir.with_name("small-1") and written.name == "small-1"
    assert again.config.read_text() == written.to_yaml() and rundir.config.read_text() == cfg.to_yaml()
    assert RunDir.next_free(cfg.run_dir).path.name == "small-2"
    assert sorted(p.name for p in rundir.path.parent.iterdir()) == ["small", "small-1"], "no staging folder is left"


def test_create_in_an_unwritable_place_leaves_nothing(tmp_path: Path, make_config: Callable[..., Config]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cfg = make_config(f"output_dir={blocker}")
    with pytest.raises(RunDirError, match=f"cannot create run directory {blocker}/small: .*writable output_dir"):
        RunDir(cfg.run_dir).create(cfg)
    assert blocker.read_text() == "not a folder"


def test_lock_does_not_follow_a_symbolic_link(tmp_path: Path, make_config: Callable[..., Config]) -> None:
    cfg = make_config()
    rundir = RunDir(cfg.run_dir)
    rundir.create(cfg)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.symlink(victim, rundir.lock_file)
    with (
        pytest.raises(RunDirError, match=r"\.lock cannot be opened as a lock .*it must be a plain file: remove it"),
        rundir.lock(),
    ):
        pass
    assert victim.read_text() == "precious"


def test_resume_refuses_a_crafted_lock_link_and_truncates_nothing(
    tmp_path: Path, system_dir: Path, cli: Callable[..., CLI]
) -> None:
    overrides = [*small_overrides(tmp_path, system_dir), "trainer.max_epochs=1"]
    run = tmp_path / "runs" / "small"
    RunDir(run).create(load_config(BASE, overrides))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.symlink(victim, run / ".lock")
    code, _, err = cli("--resume", str(run))
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: {run}/.lock is a symbolic link to {victim}, outside the run directory; a run only reads and "
        "writes inside its own folder: replace the link with the file or folder itself"
    ]
    assert victim.read_text() == "precious"


def test_the_lock_holds_the_pid_and_is_exclusive(make_config: Callable[..., Config]) -> None:
    import fcntl

    cfg = make_config()
    rundir = RunDir(cfg.run_dir)
    rundir.create(cfg)
    with rundir.lock():
        assert rundir.lock_file.read_text() == str(os.getpid())
        with open(rundir.lock_file) as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_remove_temporary_files_keeps_what_a_run_reads(make_config: Callable[..., Config]) -> None:
    cfg = make_config()
    rundir = RunDir(cfg.run_dir)
    rundir.create(cfg)
    rundir.checkpoints.mkdir()
    keep = [rundir.checkpoint(1), rundir.best, rundir.history_json, rundir.checkpoints / "tmpa"]
    drop = [
        rundir.path / ".history.json.a.tmp",
        rundir.checkpoints / ".best_model.pt.x.tmp",
    ]
    for path in [*keep, *drop]:
        path.write_text("x")
    rundir.remove_temporary_files()
    assert all(p.exists() for p in keep) and not any(p.exists() for p in drop)


def test_weights_best_last_path_and_default(tmp_path: Path, make_config: Callable[..., Config]) -> None:
    cfg = make_config()
    rundir = RunDir(cfg.run_dir)
    rundir.create(cfg)
    with pytest.raises(CheckpointError, match="has no saved weights yet \\(best\\)"):
        rundir.weights("best")
    with pytest.raises(CheckpointError, match="has no saved weights yet \\(last\\)"):
        rundir.weights("last")
    with pytest.raises(RunDirError, match="--checkpoint nope.pt: no such file; use best, last or the path"):
        rundir.weights("nope.pt")
    rundir.checkpoints.mkdir()
    for path in (rundir.checkpoint(2), rundir.checkpoint(10), rundir.best):
        path.write_text("x")
    assert rundir.weights("last") == rundir.checkpoint(10), "by epoch, not by name"
    assert rundir.weights("best") == rundir.weights() == rundir.best
    rundir.model.write_text("x")
    assert rundir.weights() == rundir.model
    assert rundir.checkpoint_files() == [rundir.checkpoint(10), rundir.checkpoint(2)]


def test_load_config_points_at_where_the_run_is_now(tmp_path: Path, make_config: Callable[..., Config]) -> None:
    cfg = make_config()
    rundir = RunDir(cfg.run_dir)
    rundir.create(cfg)
    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    rundir.path.rename(moved)
    loaded = RunDir(moved).load_config()
    assert (loaded.output_dir, loaded.name) == (str(moved.parent), "renamed")
    with pytest.raises(RunDirError, match="is not a run directory \\(no config.yaml\\)"):
        RunDir(tmp_path).load_config()
    with pytest.raises(RunDirError, match="does not exist"):
        RunDir(tmp_path / "nothing").load_config()


def test_config_paths_are_stored_absolute_and_mean_the_same_from_any_folder(
    tmp_path: Path, system_dir: Path, cli: Callable[..., CLI], monkeypatch: pytest.MonkeyPatch
) -> None:
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    overrides = [o for o in small_overrides(tmp_path, system_dir) if not o.startswith(("data.root", "output_dir"))]
    monkeypatch.chdir(here)
    code, _, err = cli(BASE, *overrides, "data.root=mydata", "output_dir=runs", "trainer.max_epochs=2")
    assert code == 0, err
    run = here / "runs" / "small"
    saved = load_config(run / "config.yaml")
    assert (saved.data.root, saved.output_dir) == (str(here / "mydata"), str(here / "runs"))
    monkeypatch.chdir(elsewhere)
    code, out, err = cli("evaluate", str(run), "--json")
    assert code == 0, err
    assert '"accuracy": ' in out
    test_accuracy = json.loads((run / "metrics.json").read_text())["test_accuracy"]
    assert json.loads(out)["accuracy"] == test_accuracy
    assert list(elsewhere.iterdir()) == [], "nothing is written into the current folder"


@pytest.mark.parametrize("name", ["plain", "with space", "it's", "new\nline", "tab\there", "back\\slash"])
def test_resume_hints_are_one_line_and_a_shell_gives_back_the_path(tmp_path: Path, name: str) -> None:
    import subprocess

    path = tmp_path / name / "run"
    hint = RunDir(path).resume_hint()
    prefix = f"resume with '{program_name()} --resume "
    assert "\n" not in hint and hint.startswith(prefix)
    quoted = hint.removeprefix(prefix).removesuffix("'")
    echoed = subprocess.run(["bash", "-c", f"printf %s {quoted}"], capture_output=True, text=True, check=True)
    assert echoed.stdout == str(path)


def test_losing_a_race_for_the_name_takes_the_next_one_and_leaves_nothing(
    make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_config()
    rundir = RunDir.next_free(cfg.run_dir)
    RunDir(cfg.run_dir).create(cfg)  # another process was quicker, after next_free looked
    real_rename = os.rename

    def other_process_first(source: str | Path, target: str | Path) -> None:
        if Path(target).name == "small-1":  # and quicker again, between the check and the rename
            Path(target).mkdir()
            (Path(target) / "config.yaml").write_text("theirs")
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", other_process_first)
    written = rundir.create(cfg)
    assert rundir.path == cfg.run_dir.with_name("small-2") and written.name == "small-2"
    assert (cfg.run_dir.with_name("small-1") / "config.yaml").read_text() == "theirs"
    assert sorted(p.name for p in rundir.path.parent.iterdir()) == ["small", "small-1", "small-2"], (
        "no .small.partial-* folder"
    )


def test_a_dangling_link_as_the_run_name_is_left_alone(tmp_path: Path, make_config: Callable[..., Config]) -> None:
    cfg = make_config()
    cfg.run_dir.parent.mkdir(parents=True)
    os.symlink(tmp_path / "nowhere", cfg.run_dir)
    rundir = RunDir(cfg.run_dir)
    rundir.create(cfg)
    assert rundir.path.name == "small-1"
    assert sorted(p.name for p in cfg.run_dir.parent.iterdir()) == ["small", "small-1"]
    assert cfg.run_dir.is_symlink() and not (tmp_path / "nowhere").exists()


def test_running_again_makes_name_1_and_never_touches_the_old_run(
    make_config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    cfg = make_config("trainer.max_epochs=1")
    build_experiment(cfg).run()
    old = {p.name: p.read_bytes() for p in cfg.run_dir.iterdir() if p.is_file()}
    caplog.set_level(logging.INFO, logger="fmnist_ignite")
    again = build_experiment(cfg)
    assert again.run_dir == cfg.run_dir.with_name("small-1") and again.config.name == "small-1"
    again.run()
    assert caplog.records[0].getMessage() == f"Run directory {again.run_dir} ({cfg.run_dir} exists already)"
    assert yaml.safe_load((again.run_dir / "config.yaml").read_text())["name"] == "small-1"
    assert {p.name: p.read_bytes() for p in cfg.run_dir.iterdir() if p.is_file()} == old
    assert build_experiment(cfg).run_dir.name == "small-2"


def test_unwritable_output_location_fails_before_training(
    tmp_path: Path, small: list[str], cli: Callable[..., CLI]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, out, err = cli(BASE, *small, "early_stopping.enabled=false", f"output_dir={blocker / 'runs'}")
    assert code == 2
    assert err.startswith(f"error: cannot create run directory {blocker / 'runs' / 'small'}: ")
    assert "choose a writable output_dir" in err
    assert "Epoch [" not in out + err


def test_the_resume_hint_names_the_program_as_invoked_and_the_path_relative_when_it_can(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.argv", ["/usr/bin/fmnist-ignite"])
    assert RunDir(tmp_path / "r").resume_hint() == f"resume with 'fmnist-ignite --resume {tmp_path / 'r'}'"
    monkeypatch.chdir(tmp_path)
    assert RunDir(tmp_path / "runs" / "r").resume_hint() == "resume with 'fmnist-ignite --resume runs/r'"


@pytest.mark.parametrize("link", ["checkpoints", "history.json", "tb/train"])
def test_a_run_directory_with_a_link_leaving_it_is_refused_and_nothing_outside_is_touched(
    make_config: Callable[..., Config], tmp_path: Path, cli: Callable[..., CLI], link: str
) -> None:
    """Class 2 of issue 19: one walker refuses links leaving the run, before anything is read, written or deleted."""
    cfg = make_config()
    rundir = RunDir(cfg.run_dir)
    rundir.create(cfg)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    victims = [outside / "tmp_precious", outside / ".precious.tmp", outside / ".checkpoint_1.pt.abcd1234.tmp"]
    for victim in victims:
        victim.write_text("not the run's")
    entry = rundir.path / link
    entry.parent.mkdir(parents=True, exist_ok=True)
    entry.symlink_to(outside if link != "history.json" else victims[0])
    for command in (["--resume", str(rundir.path), "trainer.max_epochs=9"], ["evaluate", str(rundir.path)]):
        code, out, err = cli(*command)
        assert (code, out) == (2, "")
        assert err == (
            f"error: {entry} is a symbolic link to {os.path.realpath(entry)}, outside the run directory; a run only "
            "reads and writes inside its own folder: replace the link with the file or folder itself\n"
        )
    assert all(v.read_text() == "not the run's" for v in victims)
    assert sorted(p.name for p in outside.iterdir()) == sorted(v.name for v in victims)
    entry.unlink()
    inside = rundir.path / "latest.yaml"
    inside.symlink_to(rundir.config)
    rundir.require()  # a link that stays inside is fine


def test_a_resume_deletes_only_the_temporary_files_the_package_made(make_config: Callable[..., Config]) -> None:
    """Class 2 of issue 19: a user's files inside a run directory survive a resume."""
    from fmnist_ignite import build_experiment, resume_experiment

    cfg = make_config("trainer.max_epochs=1", "logging.tensorboard=false")
    build_experiment(cfg).run()
    rundir = RunDir(cfg.run_dir)
    users = [
        rundir.checkpoints / "tmp_anything",
        rundir.checkpoints / "tmpabcdefgh",
        rundir.path / ".anything.tmp",
        rundir.path / ".notes.txt.abcd1234.tmp",
        rundir.path / "notes.txt",
    ]
    ours = [rundir.path / ".history.json.abcd1234.tmp", rundir.checkpoints / ".checkpoint_2.pt.k3j_x9zq.tmp"]
    for path in [*users, *ours]:
        path.write_text("x")
    resume_experiment(rundir.path, overrides=["trainer.max_epochs=2"]).run()
    assert all(p.read_text() == "x" for p in users)
    assert not any(p.exists() for p in ours)
    assert rundir.checkpoint_files()[0].name == "checkpoint_2.pt"
    assert not [p for p in rundir.checkpoints.iterdir() if p.name.endswith(".tmp")], "checkpoints take our temp names"


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_a_read_only_run_directory_is_called_read_only_not_a_lock_to_remove(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    real_open = os.open

    def read_only(path: Any, flags: int, *args: Any) -> int:  # as root, chmod would not stop the test
        if Path(path) == run.lock_file:
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(RunDirError) as caught, run.lock():
        pass
    message = str(caught.value)
    assert message.startswith(f"{run.path} is read-only ({os.strerror(code)}): ") and "remove" not in message
