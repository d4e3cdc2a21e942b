"""evaluate, predict and compare (fmnist_ignite/inspect_runs.py): what they read and what they write."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fmnist_ignite import build_experiment, load_config

from .conftest import BASE, small_overrides


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory, system_dir: Path) -> list[Path]:
    tmp = tmp_path_factory.mktemp("inspect")
    runs = []
    for name in ("one", "two"):
        overrides = [
            *small_overrides(tmp, system_dir),
            "trainer.max_epochs=1",
            "logging.tensorboard=false",
            f"name={name}",
        ]
        experiment = build_experiment(load_config(BASE, overrides))
        experiment.run()
        runs.append(experiment.run_dir)
    return runs


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from fmnist_ignite.app.cli import main

    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_compare_output_never_replaces_a_special_file_a_run_file_or_an_unasked_file(
    two_runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Class 1 of issue 19: compare --output writes a new .png, or replaces a regular one with --force."""
    runs = [str(r) for r in two_runs]
    picture = two_runs[0] / "history.png"
    before = picture.read_bytes()
    code, _, err = _cli(capsys, "compare", *runs, "--output", str(picture), "--force")
    assert code == 2 and f"error: {picture} is a file of the run in {two_runs[0]}" in err
    assert picture.read_bytes() == before
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    code, _, err = _cli(capsys, "compare", *runs, "--output", str(fifo), "--force")
    assert code == 2 and "is not a regular file" in err and fifo.is_fifo()
    code, _, err = _cli(capsys, "compare", *runs, "--output", str(tmp_path / "x.pdf"))
    assert code == 2 and err.endswith("the figure is a PNG; name a .png file or a folder\n")
    assert not (tmp_path / "x.pdf").exists()

    mine = tmp_path / "mine.png"
    mine.write_text("a file of mine")
    code, _, err = _cli(capsys, "compare", *runs, "--output", str(mine))
    assert code == 2 and err.endswith(f"error: {mine} exists; pass --force to replace it\n")
    assert mine.read_text() == "a file of mine"
    code, out, _ = _cli(capsys, "compare", *runs, "--output", str(mine), "--force")
    assert code == 0 and out.splitlines()[-1] == f"validation curves: {mine}"
    assert mine.read_bytes().startswith(b"\x89PNG")
    code, out, _ = _cli(capsys, "compare", *runs, "--output", f"{tmp_path}/")
    assert code == 0 and (tmp_path / "compare.png").read_bytes().startswith(b"\x89PNG")
