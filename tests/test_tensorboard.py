"""handlers/tensorboard.py: the train and validation runs, the results run, and steps never logged twice."""

from __future__ import annotations

import errno
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from fmnist_ignite import Config, build_experiment, resume_experiment
from fmnist_ignite.config import HandlerConfig
from fmnist_ignite.events import RunEvents
from fmnist_ignite.handlers import TensorBoard, attach_handler
from fmnist_ignite.handlers.tensorboard import fast_checksums

from .conftest import BASE
from .helpers import Rig, make_rig, small_config


def events(folder: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    return accumulator.Reload()


def with_tensorboard(rig: Rig, log_every: int = 2) -> TensorBoard:
    spec = HandlerConfig(target="tensorboard", kwargs={"log_every": log_every})
    return attach_handler(rig.context, spec, "tensorboard")


def test_train_and_validation_runs_share_tags_and_steps(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, write=False)
    handler = with_tensorboard(rig, log_every=2)
    losses: dict[int, float] = {}
    rig.context.trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: losses.__setitem__(e.state.iteration, float(e.state.output))
    )
    rig.run(2)  # 3 iterations per epoch
    assert handler.writers == {}  # closed when training completed
    tb = rig.context.rundir.tensorboard
    assert sorted(p.name for p in tb.iterdir()) == ["train", "validation"]
    train, validation = events(tb / "train"), events(tb / "validation")
    records = rig.context.history.records

    batch = train.Scalars("batch_loss")
    assert [p.step for p in batch] == [2, 4, 6]
    assert [p.value for p in batch] == pytest.approx([losses[2], losses[4], losses[6]])
    assert set(train.Tags()["scalars"]) == {
        "batch_loss",
        "epoch_loss",
        "epoch_accuracy",
        "epoch_learning_rate",
        "epoch",
    }
    assert set(validation.Tags()["scalars"]) == {"epoch_loss", "epoch_accuracy"}
    for accumulator, prefix in ((train, "train_"), (validation, "val_")):
        for tag in ("epoch_loss", "epoch_accuracy"):
            points = accumulator.Scalars(tag)
            assert [p.step for p in points] == [3, 6]
            assert [p.value for p in points] == pytest.approx([r[prefix + tag.removeprefix("epoch_")] for r in records])
    assert [(p.step, p.value) for p in train.Scalars("epoch")] == [(3, 1.0), (6, 2.0)]
    assert [p.value for p in train.Scalars("epoch_learning_rate")] == pytest.approx([0.05, 0.05])


def test_an_evaluator_metric_gets_its_own_validation_tag(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, write=False)
    with_tensorboard(rig)
    rig.context.evaluator.add_event_handler(
        Events.COMPLETED, lambda e: e.state.metrics.__setitem__("precision", torch.tensor(0.25))
    )
    rig.run(1)
    validation = events(rig.context.rundir.tensorboard / "validation")
    assert [(p.step, p.value) for p in validation.Scalars("epoch_precision")] == [(3, 0.25)]


def test_a_resumed_run_logs_each_step_once(tmp_path: Path) -> None:
    first = make_rig(tmp_path, write=False)
    with_tensorboard(first, log_every=1)
    first.context.trainer.add_event_handler(
        Events.ITERATION_COMPLETED(once=5), lambda: (_ for _ in ()).throw(RuntimeError("killed"))
    )
    with pytest.raises(RuntimeError, match="killed"):
        first.run(3)  # epoch 1 saved; epoch 2 logged its first batches, then the process died

    second = make_rig(tmp_path, write=False)  # the same run directory, resumed after epoch 1
    with_tensorboard(second, log_every=1)
    second.context.history.load_state_dict({"records": first.context.history.records[:1]})
    second.context.trainer.load_state_dict({"epoch": 1, "epoch_length": 3, "max_epochs": 3})
    second.run(3)
    train = events(tmp_path / "run" / "tb" / "train")
    assert [p.step for p in train.Scalars("batch_loss")] == list(range(1, 10))
    assert [p.step for p in train.Scalars("epoch_loss")] == [3, 6, 9]


def test_an_error_closes_the_writers_and_propagates(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, write=False)
    handler = with_tensorboard(rig)
    opened: list[int] = []

    def fail(engine: object) -> None:
        opened.append(len(handler.writers))
        raise ValueError("a handler failed")

    rig.context.trainer.add_event_handler(Events.ITERATION_COMPLETED(once=2), fail)
    with pytest.raises(ValueError, match="a handler failed"):
        rig.run(2)
    assert opened == [2] and handler.writers == {}


def test_nothing_is_logged_before_training_starts(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, write=False)
    handler = TensorBoard(rig.context)
    handler(rig.context.trainer)  # no writers: nothing happens
    assert not rig.context.rundir.path.exists()


def test_the_results_pictures_and_hyperparameters(tmp_path: Path) -> None:
    config = small_config(tmp_path, "optimizer.lr=0.125", "scheduler.name=none")
    rig = make_rig(tmp_path, config=config, write=False)
    with_tensorboard(rig)
    rig.run(1)
    picture = tmp_path / "curves.png"
    Image.new("RGB", (40, 30), (10, 200, 30)).save(picture)
    trainer = rig.context.trainer
    metrics = {"test_accuracy": 0.75, "test_loss": 0.5, "best_value": None, "best_epoch": 1, "epochs_trained": 1}
    trainer.state.results = {"metrics": metrics, "figures": {"history": picture}}
    trainer.fire_event(RunEvents.RUN_FINISHED)

    results = events(rig.context.rundir.tensorboard)
    [image] = results.Images("history")
    assert (image.step, image.width, image.height) == (3, 40, 30)
    assert image.encoded_image_string == picture.read_bytes()  # the file itself, not encoded again
    assert Image.open(io.BytesIO(image.encoded_image_string)).size == (40, 30)
    assert {tag: results.Scalars(tag)[-1].value for tag in metrics} == {
        "test_accuracy": 0.75,
        "test_loss": 0.5,
        "best_value": 0.0,
        "best_epoch": 1.0,
        "epochs_trained": 1.0,
    }
    content = results.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["optimizer.lr"].number_value == 0.125
    assert start.hparams["scheduler.name"].string_value == "none"
    assert start.hparams["init_from"].string_value == ""  # None, shown as empty
    assert start.hparams["data.batch_size"].number_value == config.data.batch_size
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == set(metrics)


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


def test_a_full_disk_while_tensorboard_writes_is_one_line_naming_the_folder(
    small: list[str], tmp_path: Path, cli: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tensorboard.summary.writer.record_writer import RecordWriter

    write, calls = RecordWriter.write, []

    def fills_up(self: RecordWriter, data: bytes) -> None:  # the writer thread's write to the event file
        calls.append(len(data))
        if len(calls) > 6:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(self, data)

    monkeypatch.setattr(RecordWriter, "write", fills_up)
    args = ["train", BASE, *small, "trainer.max_epochs=1", "handlers=[{target: tensorboard, kwargs: {log_every: 1}}]"]
    code, out, err = cli(*args)
    tb = tmp_path / "runs" / "small" / "tb"
    assert code == 1
    assert err.startswith(f"error: cannot write {tb}: No space left on device (TensorBoard logs); ")
    assert len(err.splitlines()) == 1 and "Traceback" not in out + err and "Exception in thread" not in out + err


def test_the_records_checksums_are_tensorboards_own_and_its_reader_checks_them(tmp_path: Path) -> None:
    from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
    from tensorboard.summary.writer import record_writer
    from torch.utils.tensorboard import SummaryWriter

    assert fast_checksums()
    generator = torch.Generator().manual_seed(0)
    for size in (0, 1, 7, 8, 100, 4096, 100_003):
        data = bytes(torch.randint(0, 256, (size,), dtype=torch.uint8, generator=generator).tolist())
        assert record_writer.masked_crc32c(data) == pywrap_tensorflow.masked_crc32c(data)
    assert record_writer.masked_crc32c is not pywrap_tensorflow.masked_crc32c
    with SummaryWriter(log_dir=str(tmp_path)) as writer:
        writer.add_scalar("loss", 0.5, 1)
        writer.add_image("picture", torch.rand(3, 64, 64), 1)
    [path] = tmp_path.glob("events.out.tfevents.*")
    reader = pywrap_tensorflow.PyRecordReader_New(str(path))  # checks each record's two checksums
    records = 0
    with pytest.raises(Exception, match="No more events"):
        while True:
            reader.GetNext()
            records += 1
    assert records == 3  # the file's version, the scalar, the image
