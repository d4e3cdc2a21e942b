"""handlers/progress.py: one line per epoch in the documented format, and a bar only on a terminal."""

from __future__ import annotations

import io
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from ignite.engine import Engine

from fmnist_ignite.config import HandlerConfig
from fmnist_ignite.handlers import Progress, attach_handler
from fmnist_ignite.handlers.progress import _every_5_percent, show_bar

from .helpers import make_rig

LINE = re.compile(r"^Epoch \[(\d+)\] train_loss (\d+\.\d{4}) val_loss (\d+\.\d{4}) val_acc (\d\.\d{4})$")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_epoch_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rig = make_rig(tmp_path, write=False)
    progress = Progress(rig.context, bar=False)
    trainer, evaluator = rig.context.trainer, rig.context.evaluator
    trainer.state.epoch = 3
    trainer.state.metrics = {"train_loss": 0.52129, "train_accuracy": 0.9}
    evaluator.state.metrics = {"loss": 0.47, "accuracy": 0.842}
    with caplog.at_level(logging.INFO, logger="fmnist_ignite.run"):
        progress(trainer)
    assert [(r.name, r.levelno) for r in caplog.records] == [("fmnist_ignite.run", logging.INFO)]
    assert caplog.messages == ["Epoch [3] train_loss 0.5213 val_loss 0.4700 val_acc 0.8420"]


def test_one_line_per_epoch_and_no_bar_when_not_a_terminal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    rig = make_rig(tmp_path, write=False)
    with caplog.at_level(logging.INFO, logger="fmnist_ignite.run"):
        progress = attach_handler(rig.context, HandlerConfig(target="progress"), "progress")
        assert progress.bar is None  # stderr is captured here, not a terminal
        rig.run(3)
    records = rig.context.history.records
    assert caplog.messages == [
        f"Epoch [{r['epoch']}] train_loss {r['train_loss']:.4f} val_loss {r['val_loss']:.4f} "
        f"val_acc {r['val_accuracy']:.4f}"
        for r in records
    ]
    assert all(LINE.match(m) for m in caplog.messages)
    assert capsys.readouterr().err == ""


def test_a_bar_when_asked_for(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    rig = make_rig(tmp_path, write=False)
    with caplog.at_level(logging.INFO, logger="fmnist_ignite.run"):
        progress = attach_handler(rig.context, HandlerConfig(target="progress", kwargs={"bar": True}), "progress")
        assert progress.bar is not None
        rig.run(2)
    assert "Epoch [1/2]" in capsys.readouterr().err
    assert [m.split()[1] for m in caplog.messages] == ["[1]", "[2]"]


@pytest.fixture
def run_logger() -> Iterator[logging.Logger]:
    record = logging.getLogger("fmnist_ignite.run")
    level = record.level
    record.setLevel(logging.INFO)
    yield record
    record.setLevel(level)


def test_show_bar(monkeypatch: pytest.MonkeyPatch, run_logger: logging.Logger) -> None:
    assert show_bar(True) is True and show_bar(False) is False
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert show_bar("auto") is False  # redirected
    assert show_bar(True) is True
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert show_bar("auto") is True
    run_logger.setLevel(logging.WARNING)  # --quiet
    assert show_bar("auto") is False
    assert show_bar(True) is True


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        (100, [5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80, 85, 90, 95, 100]),
        (45, [*range(2, 45, 2), 45]),
        (7, list(range(1, 8))),
        (1, [1]),
    ],
)
def test_the_bar_is_redrawn_every_5_percent_and_at_the_end(length: int, expected: list[int]) -> None:
    engine = Engine(lambda e, b: None)
    engine.state.epoch_length = length
    assert [i for i in range(1, length + 1) if _every_5_percent(engine, i)] == expected
    # The filter sees the run's iteration: in later epochs the redraws may shift, but stay as close and end the epoch.
    later = [i for i in range(2 * length + 1, 3 * length + 1) if _every_5_percent(engine, i)]
    gaps = [b - a for a, b in zip([2 * length, *later], later, strict=False)]
    assert later[-1] == 3 * length and max(gaps) <= max(1, length // 20)


def test_the_bar_is_drawn_in_a_jupyter_notebook(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from fmnist_ignite.handlers.progress import in_notebook, show_bar

    class ZMQInteractiveShell:  # what get_ipython() returns in a Jupyter kernel
        pass

    assert not in_notebook()
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=ZMQInteractiveShell))
    monkeypatch.setattr(logging.getLogger("fmnist_ignite.run"), "isEnabledFor", lambda level: True)
    assert in_notebook() and show_bar("auto")
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: None))
    assert not in_notebook() and not show_bar("auto")
