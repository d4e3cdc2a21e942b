"""For people: output that fits where it goes, re-running, extending and forking runs, TensorBoard, predict, compare."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from fmnist_ignite import (
    Config,
    ConfigError,
    RunDir,
    RunDirError,
    build_experiment,
    compare_runs,
    load_config,
    predict_images,
    resume_experiment,
)
from fmnist_ignite.app.cli import main
from fmnist_ignite.data import load_data

from .conftest import BASE, REPO, idx_images, idx_labels, run_cli, small_overrides, synthetic_images

CLI = tuple[int, str, str]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[..., CLI]]:
    """``cli(*args)``: the command line in this process, returning (exit code, stdout, stderr)."""

    def call(*args: str) -> CLI:
        try:
            code = main(list(args))
        except SystemExit as exit:  # argparse's usage errors
            code = int(exit.code or 0)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    yield call


def test_piped_output_is_one_line_per_epoch_run_directory_first_results_last(tmp_path: Path, system_dir: Path) -> None:
    small = small_overrides(tmp_path, system_dir)
    load_data(load_config(BASE, small).data)  # the data set is prepared: its note is not part of this run
    warning = "handlers=[{target: 'tests.plugins:warn', event: EPOCH_COMPLETED, once: 1}]"
    result = run_cli(BASE, *small, "trainer.max_epochs=2", "logging.progress_bar=auto", warning)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "runs" / "small"
    assert "\r" not in result.stdout + result.stderr, "no progress bar when the output is not a terminal"
    lines = result.stdout.splitlines()
    assert lines[0] == f"Run directory {run}"
    history = json.loads((run / "history.json").read_text())
    assert [line for line in lines if line.startswith("Epoch")] == [
        f"Epoch [{r['epoch']}] train_loss {r['train_loss']:.4f} val_loss {r['val_loss']:.4f} "
        f"val_acc {r['val_accuracy']:.4f}"
        for r in history
    ]
    metrics = json.loads((run / "metrics.json").read_text())
    assert lines[-2] == (
        f"Test (best weights, epoch {metrics['best_epoch']}): "
        f"accuracy {metrics['test_accuracy']:.4f} loss {metrics['test_loss']:.4f}"
    )
    assert lines[-1] == (
        f"Results in {run}: metrics.json, report.json, model.pt, history.png, confusion_matrix.png, "
        f"predictions.png; tensorboard --logdir {run / 'tb'}"
    )
    assert result.stderr == "warning: a warning from a handler\n", "warnings on stderr, nothing else there"

    quiet = run_cli("-q", BASE, *small, "trainer.max_epochs=1")
    assert quiet.returncode == 0, quiet.stderr
    assert [line.split(":")[0] for line in quiet.stdout.splitlines()] == [
        "Test (best weights, epoch 1)",
        f"Results in {run}-1",
    ], "again: a new run directory; -q prints the outcome only"
    assert quiet.stderr == ""


def on_screen(line: str) -> str:
    """What a terminal shows of one line: each carriage return starts writing over it again."""
    screen: list[str] = []
    position = 0
    for char in line:
        if char == "\r":
            position = 0
            continue
        screen[position : position + 1] = [char]
        position += 1
    return "".join(screen).rstrip()


def test_on_a_terminal_the_bar_runs_and_no_line_is_glued_to_it(tmp_path: Path, system_dir: Path) -> None:
    import fcntl
    import pty
    import struct
    import subprocess
    import sys
    import termios

    small = small_overrides(tmp_path, system_dir)
    load_data(load_config(BASE, small).data)
    during_the_bar = "handlers=[{target: 'tests.plugins:warn', event: ITERATION_COMPLETED, once: 5}]"
    args = [BASE, *small, "trainer.max_epochs=2", "logging.progress_bar=auto", "early_stopping.patience=1"]
    master, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "fmnist_ignite", *args, during_the_bar],
        stdout=terminal,
        stderr=terminal,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal is gone: the process has ended
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    assert process.wait(timeout=60) == 0
    text = output.decode()
    assert "Epoch [1/2]: [8/16]" in text, "Ignite's progress bar, drawn on the terminal"
    shown = [on_screen(line) for line in text.rstrip().split("\n")]
    run = tmp_path / "runs" / "small"
    assert shown[:4] == [
        f"Run directory {run}",
        "warning: a warning from a handler",
        *(line for line in shown if line.startswith("Epoch [1] ")),
        *(line for line in shown if line.startswith("Epoch [2] ")),
    ], "each line whole, on its own line: the bar is cleared first and drawn again after"
    assert shown[-2].startswith("Test (") and shown[-1].startswith(f"Results in {run}: ")


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


def cosine_lr(iteration: int, total: int, start: float = 0.01, end: float = 0.0) -> float:
    """Ignite's cosine annealing after ``iteration`` steps of ``total`` (the rate of the last step)."""
    return end + (start - end) / 2 * (1 + math.cos(math.pi * (iteration - 1) / total))


def test_extending_a_finished_run_grows_its_history_and_rewrites_its_results(
    make_config: Callable[..., Config],
) -> None:
    cfg = make_config("trainer.max_epochs=2", "early_stopping.enabled=false")
    first = build_experiment(cfg)
    first.run()
    steps = len(first.loaders["train"])
    run = first.run_dir
    before = json.loads((run / "history.json").read_text())
    assert [r["lr"] for r in before] == pytest.approx([cosine_lr(e * steps, 2 * steps) for e in (1, 2)])
    picture = (run / "history.png").read_bytes()

    with pytest.raises(RunDirError, match="has finished .* resume it with trainer.max_epochs=N above 2"):
        resume_experiment(run)
    extended = resume_experiment(run, overrides=["trainer.max_epochs=4"])
    metrics = extended.run()

    history = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert history[:2] == before, "the epochs already trained are kept as they were"
    # The cosine is rebuilt over the new total: from iteration 2 * steps on, it follows a cosine over 4 epochs.
    assert [r["lr"] for r in history[2:]] == pytest.approx([cosine_lr(e * steps, 4 * steps) for e in (3, 4)])
    assert json.loads((run / "metrics.json").read_text()) == metrics and metrics["epochs_trained"] == 4
    assert (run / "history.png").read_bytes() != picture
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["max_epochs"] == 4
    assert [p.name for p in (run / "checkpoints").glob("checkpoint_*.pt")] != []


def test_a_run_ended_by_early_stopping_goes_on_only_with_more_patience(make_config: Callable[..., Config]) -> None:
    # From the end of epoch 2 on, the weights are scrambled: epoch 3 is the first without improvement.
    sabotage = "handlers=[{target: 'tests.plugins:Sabotage', kwargs: {start: 2}}]"
    cfg = make_config("trainer.max_epochs=6", "early_stopping.patience=1", sabotage)
    build_experiment(cfg).run()

    def epochs() -> int:
        return len(json.loads((cfg.run_dir / "history.json").read_text()))

    assert epochs() == 3
    resume_experiment(cfg.run_dir, overrides=["trainer.max_epochs=8"]).run()
    assert epochs() == 3, "its counter has reached the patience: early stopping stops it again at once"
    resume_experiment(cfg.run_dir, overrides=["early_stopping.patience=3"]).run()
    assert epochs() == 5, "two more epochs without improvement, as with patience 3 from the start"


def test_a_resume_refuses_changes_that_break_exactness_and_lists_what_may_change(
    make_config: Callable[..., Config], cli: Callable[..., CLI]
) -> None:
    cfg = make_config("trainer.max_epochs=1")
    build_experiment(cfg).run()
    code, out, err = cli("--resume", str(cfg.run_dir), "trainer.max_epochs=3", "optimizer.lr=0.5", "seed=3")
    assert code == 2 and out == ""
    assert err == (
        "error: --resume cannot change optimizer.lr, seed: the run would no longer continue exactly; a resume may "
        "change only trainer.max_epochs, early_stopping.patience and logging.*; to start a new run from this "
        "one's weights, use --init-from RUN_DIR with a config\n"
    )
    code, _, err = cli("--resume", str(cfg.run_dir), str(BASE))
    assert code == 2 and "--resume takes the run directory and key=value changes" in err
    with pytest.raises(ConfigError, match="cannot change data.batch_size"):
        resume_experiment(cfg.run_dir, overrides=["data.batch_size=7"])
    code, out, _ = cli("--resume", str(cfg.run_dir), "trainer.max_epochs=3", "--print-config")
    assert code == 0 and yaml.safe_load(out)["trainer"]["max_epochs"] == 3


@pytest.mark.parametrize("which", ["", ":best", ":last"])
def test_init_from_starts_a_new_run_from_another_runs_weights(
    make_config: Callable[..., Config], cli: Callable[..., CLI], which: str
) -> None:
    source = make_config("trainer.max_epochs=2", "name=source")
    build_experiment(source).run()
    files = {"": "model.pt", ":best": "checkpoints/best_model.pt", ":last": "checkpoints/checkpoint_2.pt"}
    saved = torch.load(source.run_dir / files[which], weights_only=True)
    expected = saved.get("model", saved)

    fork = build_experiment(make_config("name=fork", "optimizer.lr=0.001", f"init_from={source.run_dir}{which}"))
    for key, value in fork.model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    fork.run()
    assert yaml.safe_load((fork.run_dir / "config.yaml").read_text())["init_from"] == f"{source.run_dir}{which}"

    code, out, _ = cli(
        str(BASE), f"output_dir={source.output_dir}", "--init-from", f"{source.run_dir}{which}", "--print-config"
    )
    assert code == 0 and yaml.safe_load(out)["init_from"] == f"{source.run_dir}{which}"


def test_init_from_a_folder_that_is_no_run_is_refused(make_config: Callable[..., Config], tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match=f"init_from: run directory {tmp_path / 'nope'} does not exist"):
        build_experiment(make_config(f"init_from={tmp_path / 'nope'}:best"))


def test_tensorboard_runs_share_tags_hold_hparams_and_no_step_twice_after_a_resume(
    make_config: Callable[..., Config],
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    explode = "handlers=[{target: 'tests.plugins:ExplodeOnce', kwargs: {epoch: 2}}]"
    cfg = make_config("trainer.max_epochs=3", "early_stopping.enabled=false", "logging.log_every=1", explode)
    experiment = build_experiment(cfg)
    steps = len(experiment.loaders["train"])
    with pytest.raises(RuntimeError, match="boom"):
        experiment.run()  # after epoch 2 was logged, before it was saved: the resume trains it again
    metrics = resume_experiment(cfg.run_dir).run()

    def events(run: str) -> EventAccumulator:
        accumulator = EventAccumulator(str(cfg.run_dir / "tb" / run), size_guidance={"images": 0, "scalars": 0})
        return accumulator.Reload()

    train, validation, results = events("train"), events("validation"), events("")
    assert sorted(p.name for p in (cfg.run_dir / "tb").iterdir() if p.is_dir()) == ["train", "validation"]
    ends = [e * steps for e in (1, 2, 3)]
    assert [e.step for e in train.Scalars("batch_loss")] == list(range(1, 3 * steps + 1)), "each step once"
    history = json.loads((cfg.run_dir / "history.json").read_text())
    for accumulator, prefix in ((train, "train_"), (validation, "val_")):
        for tag in ("epoch_loss", "epoch_accuracy"):
            points = accumulator.Scalars(tag)
            assert [p.step for p in points] == ends
            assert [p.value for p in points] == pytest.approx([r[prefix + tag[6:]] for r in history])
    assert [p.value for p in train.Scalars("epoch_learning_rate")] == pytest.approx([r["lr"] for r in history])
    from tensorboard.plugins.hparams import plugin_data_pb2

    hparams = results.PluginTagToContent("hparams")
    assert set(hparams) == {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"}
    start = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["optimizer.lr"].number_value == 0.01 and start.hparams["init_from"].string_value == ""
    experiment_info = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment_info.metric_infos} == {
        "test_accuracy",
        "test_loss",
        "best_value",
        "best_epoch",
        "epochs_trained",
    }, "the metrics of the HPARAMS tab, written in the same run"
    assert results.Scalars("test_accuracy")[-1].value == pytest.approx(metrics["test_accuracy"])
    assert {"history", "confusion_matrix", "predictions"} <= set(results.Tags()["images"])
    for name in ("history", "confusion_matrix", "predictions"):
        picture = results.Images(name)[-1]
        assert picture.encoded_image_string == (cfg.run_dir / f"{name}.png").read_bytes(), "the run's own PNG"
        with Image.open(cfg.run_dir / f"{name}.png") as image:
            assert (picture.width, picture.height) == image.size


@pytest.fixture(scope="module")
def dark_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A run on Fashion-MNIST-like data: light garments on a black background."""
    tmp = tmp_path_factory.mktemp("dark")
    system = tmp / "system"
    system.mkdir()
    import gzip

    for prefix, n, seed in (("train", 600, 1), ("t10k", 100, 2)):
        images, labels = synthetic_images(n, (28, 28), seed)
        images[:, :4, :] = images[:, -4:, :] = images[:, :, :4] = images[:, :, -4:] = 0
        (system / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_images(images)))
        (system / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_labels(labels)))
    config = load_config(BASE, [*small_overrides(tmp, system), "trainer.max_epochs=2", "name=dark"])
    experiment = build_experiment(config)
    experiment.run()
    return {"run": experiment.run_dir, "images": experiment.data.test_images, "tmp": tmp}


def test_predict_inverts_a_white_background_photo_and_answers_every_kind_of_input(dark_run: dict) -> None:
    run, tmp = dark_run["run"], dark_run["tmp"]
    assert json.loads((run / "data.json").read_text())["background"] == "dark"
    pixels = dark_run["images"][3, 0].numpy()
    dark, white = tmp / "dark.png", tmp / "white.png"
    Image.fromarray(pixels).save(dark)
    Image.fromarray(255 - pixels).convert("RGB").save(white)  # a colour photo of it on white
    broken = tmp / "broken.png"
    broken.write_bytes(b"\x89PNG but not really")

    original, photo, bad = predict_images(run, [dark, white, broken])
    assert original["inverted"] is False and photo["inverted"] is True
    assert photo["prediction"] == original["prediction"] and photo["top"] == original["top"]
    assert bad == {"file": str(broken), "error": f"{broken}: not an image file PIL can read"}
    assert predict_images(run, [white], invert="no")[0]["inverted"] is False

    as_pil, as_uint8, as_float = predict_images(
        run,
        [Image.fromarray(pixels), torch.from_numpy(pixels), torch.from_numpy(pixels).float() / 255],
        top_k=10,
    )
    assert as_pil["file"] is None and len(as_pil["top"]) == 10
    assert [t["class"] for t in as_pil["top"]][:3] == [t["class"] for t in original["top"]]
    assert as_uint8["top"] == as_pil["top"]
    assert as_float["prediction"] == as_pil["prediction"]
    assert predict_images(run, [torch.zeros(2, 2, 2, 2)])[0]["error"].startswith("image 0: ")
    with pytest.raises(ConfigError, match="top_k must be at least 1"):
        predict_images(run, [dark], top_k=0)


def test_predict_command_top_k_and_invert(dark_run: dict, cli: Callable[..., CLI]) -> None:
    run, tmp = dark_run["run"], dark_run["tmp"]
    white = tmp / "white-cli.png"
    Image.fromarray(255 - dark_run["images"][5, 0].numpy()).save(white)
    code, out, err = cli("predict", str(run), str(white), "--top-k", "5")
    answer = predict_images(run, [white], top_k=5)[0]
    assert code == 0 and err == ""
    top = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in answer["top"])
    assert out == f"{white}: {answer['prediction']} ({top}) [inverted]\n"
    code, out, _ = cli("predict", str(run), str(white), "--invert", "no", "--json")
    assert code == 0 and json.loads(out)[0]["inverted"] is False
    code, _, err = cli("predict", str(run), str(white), "--top-k", "0")
    assert code == 2 and "argument --top-k: '0' is not a whole number of at least 1" in err


def test_compare_shows_readable_differences_and_tells_same_named_runs_apart(
    tmp_path: Path, system_dir: Path, cli: Callable[..., CLI], monkeypatch: pytest.MonkeyPatch
) -> None:
    record = "handlers=[{target: 'tests.plugins:RecordMetrics', kwargs: {filename: rec.jsonl}}]"
    runs = []
    for folder, extra in (("a", ["logging.progress_bar=true"]), ("b", ["optimizer.lr=0.05", record])):
        config = load_config(BASE, [*small_overrides(tmp_path, system_dir), f"output_dir={tmp_path / folder}", *extra])
        experiment = build_experiment(load_config(config.to_dict(), ["trainer.max_epochs=1"]))
        experiment.run()
        runs.append(experiment.run_dir)
    result = compare_runs([str(r) for r in runs])
    assert result["differing"] == ["handlers", "optimizer.lr"], "logging.* is display only"
    assert [row["settings"] for row in result["runs"]] == [
        {"handlers": "[]", "optimizer.lr": "0.01"},
        {"handlers": "tests.plugins:RecordMetrics(filename=rec.jsonl)", "optimizer.lr": "0.05"},
    ]

    monkeypatch.chdir(tmp_path)
    code, out, err = cli("compare", *map(str, runs))
    assert code == 0 and out.splitlines()[0].split() == [
        "run",
        "test_accuracy",
        "monitor",
        "best_value",
        "best_epoch",
        "epochs",
        "handlers",
        "optimizer.lr",
    ]
    assert "tests.plugins:RecordMetrics(filename=rec.jsonl)" in out.splitlines()[2]
    assert "add --output" in err and not list(tmp_path.glob("*.png")), "no figure in the current folder unasked"

    figures = tmp_path / "figures"
    figures.mkdir()
    code, out, _ = cli("compare", *map(str, runs), "--output", str(figures))
    assert code == 0 and out.splitlines()[-1] == f"validation curves: {figures / 'compare.png'}"
    with Image.open(figures / "compare.png") as image:
        assert image.size == (1000, 400)

    from fmnist_ignite.inspect_runs import run_labels

    assert run_labels([str(r) for r in runs]) == {str(r): str(r) for r in runs}, "same names: the paths"
    assert run_labels(["runs/base", "runs/lr005"]) == {"runs/base": "base", "runs/lr005": "lr005"}


def test_small_things_for_people(tmp_path: Path, cli: Callable[..., CLI], monkeypatch: pytest.MonkeyPatch) -> None:
    from fmnist_ignite import HANDLERS
    from fmnist_ignite.app.cli import build_parser

    code, out, _ = cli("--print-config")
    assert code == 0 and yaml.safe_load(out) == Config().to_dict()
    monkeypatch.setattr("sys.argv", ["/usr/bin/fmnist-ignite"])
    assert RunDir(tmp_path / "r").resume_hint() == f"resume with 'fmnist-ignite --resume {tmp_path / 'r'}'"
    assert "  fmnist-ignite --resume runs/base trainer.max_epochs=20\n" in build_parser().format_help()
    monkeypatch.chdir(tmp_path)
    assert RunDir(tmp_path / "runs" / "r").resume_hint() == "resume with 'fmnist-ignite --resume runs/r'"
    with pytest.raises(ConfigError, match="unknown handler 'tensorbord' \\(did you mean 'tensorboard'\\?\\)"):
        HANDLERS.get("tensorbord")
