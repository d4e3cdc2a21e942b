from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from .conftest import BASE, run_cli, small_overrides


@pytest.fixture
def small(tmp_path: Path, system_dir: Path) -> list[str]:
    return small_overrides(tmp_path, system_dir)


def test_print_config_shows_the_resolved_config_and_writes_nothing(tmp_path: Path, small: list[str]) -> None:
    result = run_cli(BASE, *small, "optimizer.lr=0.3", "--print-config")
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["optimizer"]["lr"] == 0.3 and printed["data"]["val_size"] == 100
    assert not (tmp_path / "runs").exists()


def test_train_prints_one_line_per_epoch_and_writes_the_run(tmp_path: Path, small: list[str]) -> None:
    result = run_cli(BASE, *small, "trainer.max_epochs=2")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("Epoch [")]
    assert len(lines) == 2
    history = json.loads((tmp_path / "runs" / "small" / "history.json").read_text())
    assert lines[1] == (
        f"Epoch [2] train_loss {history[1]['train_loss']:.4f} val_loss {history[1]['val_loss']:.4f} "
        f"val_acc {history[1]['val_accuracy']:.4f}"
    )
    assert "Test (best weights" in result.stdout and "Epoch" not in result.stderr
    run = tmp_path / "runs" / "small"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["trainer"]["max_epochs"] == 2

    again = run_cli(str(run / "config.yaml"), f"output_dir={tmp_path / 'again'}")
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "again" / "small" / "history.json").read_text()) == [
        {**r, "seconds": json.loads((tmp_path / "again" / "small" / "history.json").read_text())[i]["seconds"]}
        for i, r in enumerate(history)
    ], "re-running from the saved config.yaml reproduces the run"

    same = run_cli(BASE, *small, "trainer.max_epochs=2")
    assert same.returncode == 0, same.stderr
    assert same.stdout.splitlines()[0] == f"Run directory {run}-1 ({run} exists already)"
    assert json.loads((run / "history.json").read_text()) == history, "the first run is untouched"


def test_resume_from_the_command_line_continues_the_same_run(tmp_path: Path, small: list[str]) -> None:
    stop = "handlers=[{target: 'tests.plugins:StopOnce', event: EPOCH_STARTED, kwargs: {epoch: 2}}]"
    first = run_cli(BASE, *small, stop, "early_stopping.enabled=false")
    assert first.returncode != 0
    run = tmp_path / "runs" / "small"
    assert len(json.loads((run / "history.json").read_text())) == 2
    resumed = run_cli("--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.splitlines()[0] == f"Resuming {run} from checkpoint_2.pt (epoch 2)"
    assert [r["epoch"] for r in json.loads((run / "history.json").read_text())] == [1, 2, 3, 4]
    finished = run_cli("--resume", str(run))
    assert finished.returncode == 2 and "has finished" in finished.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["optimizer.lrr=0.1"], "unknown key 'optimizer.lrr'; did you mean 'lr'?"),
        (["optimizer.lr=-1"], "'optimizer.lr': Input should be greater than 0"),
        (
            ["optimizer.name=rmsprop"],
            "'optimizer.name': unknown optimizer 'rmsprop'; choose one of adam, adamw, sgd or 'package.module:Name'",
        ),
        (["data.val_size=600"], "data.val_size=600 must be smaller than the 600 training images"),
        (["data.batch_size=0"], "'data.batch_size': Input should be greater than or equal to 1"),
        (["data.dataset=mnist"], "unknown dataset 'mnist'"),
        (["device=tpu"], "'device': String should match pattern"),
        (["name=../../escape"], "'name': String should match pattern"),
        (["handlers=[{target: 'x:Y', event: NOPE}]"], "unknown event 'NOPE'"),
        (["handlers=[{target: 'tests.nothere:Y'}]"], "handlers[0].target: cannot import module 'tests.nothere'"),
        (["optimizer.lr"], "override 'optimizer.lr' must look like key.sub=value"),
    ],
)
def test_config_errors_exit_2_with_one_line_and_write_nothing(
    tmp_path: Path, small: list[str], args: list[str], expected: str
) -> None:
    result = run_cli(BASE, *small, *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_cuda_on_a_machine_without_it_exits_2(tmp_path: Path, small: list[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run_cli(BASE, *small, "device=cuda")
    assert result.returncode == 2
    assert "device 'cuda': CUDA is not available on this machine; use device=cpu or device=auto" in result.stderr


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\noptimizer:\n  lr: [0.1\n")
    result = run_cli(str(bad))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {bad}:4:1: YAML error")


def test_missing_config_file_and_usage_errors(tmp_path: Path) -> None:
    missing = run_cli(str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    nothing = run_cli()
    assert nothing.returncode == 2 and "give a config file" in nothing.stderr
    both = run_cli(BASE, "--resume", str(tmp_path))
    assert both.returncode == 2 and "--resume takes the run directory and key=value changes" in both.stderr
    not_a_run = run_cli("--resume", str(tmp_path))
    assert not_a_run.returncode == 2 and "is not a run directory (no config.yaml)" in not_a_run.stderr


def test_missing_data_is_reported_in_one_line(tmp_path: Path, small: list[str]) -> None:
    result = run_cli(BASE, *small, f"data.system_dir={tmp_path / 'none'}")
    assert result.returncode == 1
    assert result.stderr.startswith("error: Fashion-MNIST not found (looked in ")
    assert not (tmp_path / "runs").exists()


def test_a_handler_calling_sys_exit_is_an_error_and_the_run_resumes(tmp_path: Path, small: list[str]) -> None:
    exits = "handlers=[{target: 'tests.plugins:exit_in_epoch', kwargs: {epoch: 2, code: 0}}]"
    first = run_cli(BASE, *small, exits, "early_stopping.enabled=false", "trainer.max_epochs=3")
    run = tmp_path / "runs" / "small"
    assert first.returncode == 1
    assert first.stderr.strip().splitlines()[-1] == (
        "error: a handler called sys.exit(0) during epoch 2; the run stopped there and its last checkpoint is kept: "
        f"resume with 'python -m fmnist_ignite --resume {run}'"
    )
    assert "Traceback" not in first.stderr
    assert not (run / "metrics.json").exists()
    resumed = run_cli("--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    assert [r["epoch"] for r in json.loads((run / "history.json").read_text())] == [1, 2, 3]


def test_the_garbage_collector_is_on_during_training_with_start_up_left_out(tmp_path: Path, small: list[str]) -> None:
    # The command line keeps it off while torch loads and the experiment is built, then freezes what
    # start-up made: training must run with it on, or a long run would keep every cycle it drops.
    record = "handlers=[{target: 'tests.plugins:record_gc', event: ITERATION_COMPLETED, every: 3}]"
    result = run_cli(BASE, *small, record, "trainer.max_epochs=1")
    assert result.returncode == 0, result.stderr
    rows = (tmp_path / "runs" / "small" / "gc.txt").read_text().split("\n")[:-1]
    assert rows and all(row.split()[0] == "True" and int(row.split()[1]) > 100_000 for row in rows)


def test_an_unexpected_error_is_one_line_with_where_and_the_traceback_with_v(tmp_path: Path, small: list[str]) -> None:
    boom = "handlers=[{target: 'tests.plugins:Exploding', kwargs: {epoch: 2}}]"
    quiet = run_cli(BASE, *small, boom, "name=quiet")
    run = tmp_path / "runs" / "quiet"
    assert quiet.returncode == 1
    last = quiet.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the run stopped on RuntimeError: boom from a user handler (tests/plugins.py:")
    assert last.endswith(
        f"; its last checkpoint is kept: resume with 'python -m fmnist_ignite --resume {run}' "
        "(run with -v for the traceback)"
    )
    assert "Traceback" not in quiet.stderr
    loud = run_cli("-v", BASE, *small, boom, "name=loud")
    assert loud.returncode == 1 and "Traceback (most recent call last)" in loud.stderr
    assert 'raise RuntimeError("boom from a user handler")' in loud.stderr


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("seed=4294967296", "'seed': Input should be less than 4294967296 (got 4294967296)"),
        ("optimizer.lr=.inf", "'optimizer.lr': Input should be a finite number"),
        (
            "optimizer.lr=1e39",
            "'optimizer.lr': must be below 3.4e38, the largest float32 the model computes with (got 1e+39)",
        ),
    ],
)
def test_values_the_code_cannot_use_are_refused_before_anything_is_written(
    tmp_path: Path, small: list[str], override: str, message: str
) -> None:
    result = run_cli(BASE, *small, override)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_ctrl_c_while_starting_up_is_one_line_and_exit_130(tmp_path: Path, small: list[str]) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from .conftest import REPO

    process = subprocess.Popen(
        [sys.executable, "-m", "fmnist_ignite", BASE, *small],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell's background job starts with Ctrl-C ignored, and a child would inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(1.0)  # inside the imports, long before training
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    assert stderr.strip() == "error: interrupted (Ctrl-C)"
    assert not (tmp_path / "runs").exists()


def test_evaluate_and_predict_need_no_training_plugin(tmp_path: Path, small: list[str]) -> None:
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "training_only.py").write_text(
        "class Noop:\n    def __init__(self, context):\n        pass\n    def __call__(self):\n        pass\n"
    )
    trained = run_cli(BASE, *small, "trainer.max_epochs=2", "handlers=[{target: 'training_only:Noop'}]", path=(plugin,))
    assert trained.returncode == 0, trained.stderr
    run = tmp_path / "runs" / "small"
    evaluated = run_cli("evaluate", str(run), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["accuracy"] == json.loads((run / "metrics.json").read_text())["test_accuracy"]
    from PIL import Image

    Image.new("L", (28, 28), 200).save(tmp_path / "grey.png")
    predicted = run_cli("predict", str(run), str(tmp_path / "grey.png"))
    assert predicted.returncode == 0, predicted.stderr
    assert predicted.stdout.startswith(f"{tmp_path / 'grey.png'}: ")


def test_main_in_a_program_leaves_its_logging_as_it_was(tmp_path: Path, small: list[str]) -> None:
    # main() called from a notebook or a test must not go on printing that program's log lines.
    import logging

    from fmnist_ignite.app.cli import main

    root, ours = logging.getLogger(), logging.getLogger("fmnist_ignite")
    before = (root.handlers[:], root.level, ours.level, logging.getLogger("ignite.engine.engine.Engine").filters[:])
    assert main([BASE, *small, "--print-config"]) == 0
    assert main([BASE, *small, "no_such_key=1"]) == 2
    after = (root.handlers[:], root.level, ours.level, logging.getLogger("ignite.engine.engine.Engine").filters[:])
    assert after == before


@pytest.mark.parametrize(
    "argv",
    [
        ["configs/base.yaml", "--init-from", "runs/base:best", "optimizer.lr=0.005", "name=ft", "-q"],
        ["-q", "configs/base.yaml", "optimizer.lr=0.005", "--init-from", "runs/base:best", "name=ft"],
        ["train", "--init-from", "runs/base:best", "configs/base.yaml", "optimizer.lr=0.005", "-q", "name=ft"],
    ],
)
def test_options_and_overrides_in_any_order_mean_the_same(argv: list[str]) -> None:
    from fmnist_ignite.app.cli import parse_arguments

    args = parse_arguments(argv)
    assert (args.command, args.config, args.overrides) == (
        "train",
        "configs/base.yaml",
        ["optimizer.lr=0.005", "name=ft"],
    )
    assert (args.init_from, args.verbosity) == ("runs/base:best", -1)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["-v", "evaluate", "runs/x", "--split", "val"], {"run": "runs/x", "split": "val", "verbosity": 1}),
        (["predict", "runs/x", "a.png", "--top-k", "5", "b.png"], {"images": ["a.png", "b.png"], "top_k": 5}),
        (["compare", "a", "--output", "x.png", "b"], {"runs": ["a", "b"], "output": "x.png"}),
        (["--resume", "runs/base", "-q", "trainer.max_epochs=20"], {"resume": "runs/base", "verbosity": -1}),
    ],
)
def test_every_command_takes_its_options_anywhere(argv: list[str], expected: dict[str, object]) -> None:
    from fmnist_ignite.app.cli import parse_arguments

    args = vars(parse_arguments(argv))
    assert {key: args[key] for key in expected} == expected
