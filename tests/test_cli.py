"""app/cli.py: the command line's output, messages and exit codes, run in this process.

Real processes only where they are the point: the garbage collector at start-up and Ctrl-C while
the libraries load.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fmnist_ignite import Config
from fmnist_ignite.app.cli import build_parser, main
from fmnist_ignite.errors import program_name

from .conftest import BASE, CLI, REPO, run_cli


def test_print_config_shows_the_resolved_config_and_writes_nothing(
    tmp_path: Path, small: list[str], cli: Callable[..., CLI]
) -> None:
    code, out, err = cli(BASE, *small, "optimizer.lr=0.3", "--print-config")
    assert code == 0, err
    printed = yaml.safe_load(out)
    assert printed["optimizer"]["lr"] == 0.3 and printed["data"]["val_size"] == 100
    assert not (tmp_path / "runs").exists()


def test_print_config_without_a_config_prints_the_defaults(cli: Callable[..., CLI]) -> None:
    code, out, _ = cli("--print-config")
    assert code == 0 and yaml.safe_load(out) == Config().to_dict()


def test_the_help_s_examples_name_the_program_as_it_was_invoked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["/usr/bin/fmnist-ignite"])
    assert "  fmnist-ignite --resume runs/base trainer.max_epochs=20\n" in build_parser().format_help()


def test_train_prints_one_line_per_epoch_and_writes_the_run(
    tmp_path: Path, small: list[str], cli: Callable[..., CLI]
) -> None:
    code, out, err = cli(BASE, *small, "trainer.max_epochs=2")
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith("Epoch [")]
    assert len(lines) == 2
    history = json.loads((tmp_path / "runs" / "small" / "history.json").read_text())
    assert lines[1] == (
        f"Epoch [2] train_loss {history[1]['train_loss']:.4f} val_loss {history[1]['val_loss']:.4f} "
        f"val_acc {history[1]['val_accuracy']:.4f}"
    )
    assert "Test (best weights" in out and "Epoch" not in err
    run = tmp_path / "runs" / "small"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["trainer"]["max_epochs"] == 2

    code, _, err = cli(str(run / "config.yaml"), f"output_dir={tmp_path / 'again'}")
    assert code == 0, err
    assert json.loads((tmp_path / "again" / "small" / "history.json").read_text()) == [
        {**r, "seconds": json.loads((tmp_path / "again" / "small" / "history.json").read_text())[i]["seconds"]}
        for i, r in enumerate(history)
    ], "re-running from the saved config.yaml reproduces the run"

    code, out, err = cli(BASE, *small, "trainer.max_epochs=2")
    assert code == 0, err
    assert out.splitlines()[0] == f"Run directory {run}-1 ({run} exists already)"
    assert json.loads((run / "history.json").read_text()) == history, "the first run is untouched"


def test_resume_from_the_command_line_continues_the_same_run(
    tmp_path: Path, small: list[str], cli: Callable[..., CLI]
) -> None:
    stop = "handlers=[{target: 'tests.plugins:StopOnce', event: EPOCH_STARTED, kwargs: {epoch: 2}}]"
    code, _, _ = cli(BASE, *small, stop, "early_stopping.enabled=false")
    assert code != 0
    run = tmp_path / "runs" / "small"
    assert len(json.loads((run / "history.json").read_text())) == 2
    code, out, err = cli("--resume", str(run))
    assert code == 0, err
    assert out.splitlines()[0] == f"Resuming {run} from checkpoint_2.pt (epoch 2)"
    assert [r["epoch"] for r in json.loads((run / "history.json").read_text())] == [1, 2, 3, 4]
    code, _, err = cli("--resume", str(run))
    assert code == 2 and "has finished" in err


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
    tmp_path: Path, small: list[str], cli: Callable[..., CLI], args: list[str], expected: str
) -> None:
    code, _, err = cli(BASE, *small, *args)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert expected in err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_cuda_on_a_machine_without_it_exits_2(small: list[str], cli: Callable[..., CLI]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = cli(BASE, *small, "device=cuda")
    assert code == 2
    assert "device 'cuda': CUDA is not available on this machine; use device=cpu or device=auto" in err


def test_yaml_syntax_error_names_the_line(tmp_path: Path, cli: Callable[..., CLI]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\noptimizer:\n  lr: [0.1\n")
    code, _, err = cli(str(bad))
    assert code == 2
    assert err.startswith(f"error: {bad}:4:1: YAML error")


def test_missing_config_file_and_usage_errors(tmp_path: Path, cli: Callable[..., CLI]) -> None:
    code, _, err = cli(str(tmp_path / "nope.yaml"))
    assert code == 2 and "does not exist" in err
    code, _, err = cli()
    assert code == 2 and "give a config file" in err
    code, _, err = cli(BASE, "--resume", str(tmp_path))
    assert code == 2 and "--resume takes the run directory and key=value changes" in err
    code, _, err = cli("--resume", str(tmp_path))
    assert code == 2 and "is not a run directory (no config.yaml)" in err


def test_missing_data_is_reported_in_one_line(tmp_path: Path, small: list[str], cli: Callable[..., CLI]) -> None:
    code, _, err = cli(BASE, *small, f"data.system_dir={tmp_path / 'none'}")
    assert code == 1
    assert err.startswith("error: Fashion-MNIST not found (looked in ")
    assert not (tmp_path / "runs").exists()


def test_a_handler_calling_sys_exit_is_an_error_and_the_run_resumes(
    tmp_path: Path, small: list[str], cli: Callable[..., CLI]
) -> None:
    exits = "handlers=[{target: 'tests.plugins:exit_in_epoch', kwargs: {epoch: 2, code: 0}}]"
    code, _, err = cli(BASE, *small, exits, "early_stopping.enabled=false", "trainer.max_epochs=3")
    run = tmp_path / "runs" / "small"
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        "error: a handler called sys.exit(0) during epoch 2; the run stopped there and its last checkpoint is kept: "
        f"resume with '{program_name()} --resume {run}'"
    )
    assert "Traceback" not in err
    assert not (run / "metrics.json").exists()
    code, _, err = cli("--resume", str(run))
    assert code == 0, err
    assert [r["epoch"] for r in json.loads((run / "history.json").read_text())] == [1, 2, 3]


def test_the_garbage_collector_is_on_during_training_with_start_up_left_out(tmp_path: Path, small: list[str]) -> None:
    # The command line keeps it off while torch loads and the experiment is built, then freezes what
    # start-up made: training must run with it on, or a long run would keep every cycle it drops.
    # A real process: main_entry() turns the collector off before anything is imported.
    record = "handlers=[{target: 'tests.plugins:record_gc', event: ITERATION_COMPLETED, every: 3}]"
    result = run_cli(BASE, *small, record, "trainer.max_epochs=1")
    assert result.returncode == 0, result.stderr
    rows = (tmp_path / "runs" / "small" / "gc.txt").read_text().split("\n")[:-1]
    assert rows and all(row.split()[0] == "True" and int(row.split()[1]) > 100_000 for row in rows)


def test_an_unexpected_error_is_one_line_with_where_and_the_traceback_with_v(
    tmp_path: Path, small: list[str], cli: Callable[..., CLI]
) -> None:
    boom = "handlers=[{target: 'tests.plugins:Exploding', kwargs: {epoch: 2}}]"
    code, _, err = cli(BASE, *small, boom, "name=quiet")
    run = tmp_path / "runs" / "quiet"
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: the run stopped on RuntimeError: boom from a user handler (tests/plugins.py:")
    assert last.endswith(
        f"; its last checkpoint is kept: resume with '{program_name()} --resume {run}' (run with -v for the traceback)"
    )
    assert "Traceback" not in err
    code, _, err = cli("-v", BASE, *small, boom, "name=loud")
    assert code == 1 and "Traceback (most recent call last)" in err
    assert 'raise RuntimeError("boom from a user handler")' in err


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
    tmp_path: Path, small: list[str], cli: Callable[..., CLI], override: str, message: str
) -> None:
    code, _, err = cli(BASE, *small, override)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_ctrl_c_while_starting_up_is_one_line_and_exit_130(tmp_path: Path, small: list[str]) -> None:
    # A real process: the signal must arrive while the libraries load.
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


def test_evaluate_and_predict_need_no_training_plugin(
    tmp_path: Path, small: list[str], cli: Callable[..., CLI], monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "training_only.py").write_text(
        "class Noop:\n    def __init__(self, context):\n        pass\n    def __call__(self):\n        pass\n"
    )
    with monkeypatch.context() as installed:
        installed.syspath_prepend(str(plugin))
        code, _, err = cli(BASE, *small, "trainer.max_epochs=2", "handlers=[{target: 'training_only:Noop'}]")
        assert code == 0, err
    del sys.modules["training_only"]  # the plugin is gone: importing it again would fail
    run = tmp_path / "runs" / "small"
    code, out, err = cli("evaluate", str(run), "--json")
    assert code == 0, err
    assert json.loads(out)["accuracy"] == json.loads((run / "metrics.json").read_text())["test_accuracy"]

    Image.new("L", (28, 28), 200).save(tmp_path / "grey.png")
    code, out, err = cli("predict", str(run), str(tmp_path / "grey.png"))
    assert code == 0, err
    assert out.startswith(f"{tmp_path / 'grey.png'}: ")
    assert "training_only" not in sys.modules


def test_main_in_a_program_leaves_its_logging_as_it_was(small: list[str]) -> None:
    # main() called from a notebook or a test must not go on printing that program's log lines.
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


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(override=st.text(max_size=30))
def test_any_command_line_gives_exit_0_or_a_one_line_exit_2(
    tmp_path: Path, small: list[str], cli: Callable[..., CLI], override: str
) -> None:
    code, _, err = cli(BASE, *small, "early_stopping.enabled=false", override, "--print-config")
    assert code in (0, 2)
    if code == 2:
        assert err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()


def test_a_python_without_torch_says_in_one_line_which_interpreter_to_use(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    from fmnist_ignite import app

    real = importlib.util.find_spec
    monkeypatch.setattr(app.importlib.util, "find_spec", lambda name: None if name == "torch" else real(name))
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["/repo/fmnist_ignite/__main__.py", "configs/base.yaml"])
    with pytest.raises(SystemExit) as exit_:
        app.main()
    assert exit_.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"error: this Python ({program_name().removesuffix(' -m fmnist_ignite')}) has no torch; use the "
        "environment's: .venv/bin/fmnist-ignite (or .venv/bin/python -m fmnist_ignite)\n"
    )
