"""interrupt.py: the first SIGINT/SIGTERM asks for a stop after the epoch, a second one stops at once.

The last tests send real signals to a real training process.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from ignite.engine import Engine, Events

from fmnist_ignite import FmnistIgniteError
from fmnist_ignite.errors import program_name
from fmnist_ignite.fileio import safe_torch_load
from fmnist_ignite.interrupt import SIGNALS, Interrupted, StopRequest, stop_on_signals

from .conftest import BASE, CLI, run_cli, values
from .helpers import handler_entry, read_history, start_cli, wait_for


def counting_engine() -> Engine:
    return Engine(lambda engine, batch: None)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_exit_code_is_128_plus_the_signal(signum: int, code: int) -> None:
    error = Interrupted("stopped", signum)
    assert (error.signum, error.exit_code, str(error)) == (signum, code, "stopped")
    assert isinstance(error, FmnistIgniteError)


def test_first_signal_is_remembered_and_logged_second_raises(caplog: pytest.LogCaptureFixture) -> None:
    request = StopRequest()
    with caplog.at_level(logging.WARNING, logger="fmnist_ignite.interrupt"):
        request(signal.SIGTERM, None)
    assert request.signum == signal.SIGTERM
    assert caplog.messages == ["SIGTERM received: stopping after this epoch is saved (send it again to stop at once)"]
    with pytest.raises(Interrupted) as info:
        request(signal.SIGINT, None)
    assert str(info.value) == "stopped at once by a second SIGINT"
    assert info.value.exit_code == 130
    assert request.signum == signal.SIGTERM  # the first one is kept


def test_one_process_stops_at_the_end_of_the_epoch_it_was_asked_in() -> None:
    request = StopRequest()
    engine = counting_engine()
    engine.add_event_handler(Events.ITERATION_COMPLETED(once=5), lambda: request(signal.SIGINT, None))
    engine.add_event_handler(Events.EPOCH_COMPLETED, request.stop_if_asked)
    engine.run(range(3), max_epochs=10)
    assert (engine.state.epoch, engine.state.iteration) == (2, 6)


def test_no_signal_no_stop() -> None:
    request = StopRequest()
    engine = counting_engine()
    engine.add_event_handler(Events.EPOCH_COMPLETED, request.stop_if_asked)
    engine.run(range(2), max_epochs=3)
    assert engine.state.epoch == 3


def test_data_parallel_run_stops_on_the_agreed_signal_only() -> None:
    request = StopRequest()
    calls: list[int] = []
    request.terminate = lambda: calls.append(1)
    engine = counting_engine()
    request(signal.SIGTERM, None)  # reached this process alone
    request.stop_if_asked(engine)
    assert calls == [] and not engine.should_terminate
    request.agreed = signal.SIGTERM
    request.stop_if_asked(engine)
    assert calls == [1] and not engine.should_terminate  # through the deferred terminate, not the engine's own


def test_handlers_are_installed_for_both_signals_and_put_back() -> None:
    assert set(SIGNALS) == {signal.SIGINT, signal.SIGTERM}
    before = {s: signal.getsignal(s) for s in SIGNALS}
    request = StopRequest()
    with stop_on_signals(counting_engine(), request) as given:
        assert given is request
        assert all(signal.getsignal(s) is request for s in SIGNALS)
    assert {s: signal.getsignal(s) for s in SIGNALS} == before


def test_handlers_are_put_back_after_an_error() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RuntimeError), stop_on_signals(counting_engine(), StopRequest()):
        raise RuntimeError("training failed")
    assert signal.getsignal(signal.SIGTERM) is before


def test_real_signals_during_training(caplog: pytest.LogCaptureFixture) -> None:
    request = StopRequest()
    engine = counting_engine()
    engine.add_event_handler(Events.ITERATION_COMPLETED(once=2), lambda: os.kill(os.getpid(), signal.SIGTERM))
    engine.add_event_handler(Events.EPOCH_COMPLETED, request.stop_if_asked)
    with caplog.at_level(logging.WARNING, logger="fmnist_ignite.interrupt"), stop_on_signals(engine, request):
        engine.run(range(4), max_epochs=5)
    assert request.signum == signal.SIGTERM
    assert (engine.state.epoch, engine.state.iteration) == (1, 4)
    assert len(caplog.records) == 1


def test_a_second_real_signal_raises_at_once() -> None:
    request = StopRequest()
    engine = counting_engine()
    engine.add_event_handler(Events.ITERATION_COMPLETED(once=1), lambda: os.kill(os.getpid(), signal.SIGINT))
    engine.add_event_handler(Events.ITERATION_COMPLETED(once=3), lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(Interrupted, match="^stopped at once by a second SIGINT$"), stop_on_signals(engine, request):
        engine.run(range(10), max_epochs=1)
    assert engine.state.iteration == 3  # not the end of the epoch


def test_outside_the_main_thread_nothing_is_installed() -> None:
    before = signal.getsignal(signal.SIGINT)
    seen: list[object] = []

    def work() -> None:
        request = StopRequest()
        with stop_on_signals(counting_engine(), request) as given:
            seen.extend([given is request, signal.getsignal(signal.SIGINT)])

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen == [True, before]


@pytest.mark.parametrize(("name", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_first_signal_saves_the_epoch_and_prints_how_to_resume(
    tmp_path: Path, small: list[str], reference: list[tuple], cli: Callable[..., CLI], name: str, code: int
) -> None:
    # A real process signals itself; the resume runs here.
    signaller = handler_entry("SignalSelf", "ITERATION_COMPLETED", f"signal: {name}, epoch: 2")
    result = run_cli(BASE, *small, "early_stopping.enabled=false", signaller)
    run = tmp_path / "runs" / "small"
    assert result.returncode == code, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"error: {name} received: stopped after epoch 2, which is saved; resume with '{program_name()} --resume {run}'"
    )
    assert [r["epoch"] for r in read_history(run)] == [1, 2]
    assert (run / "checkpoints" / "checkpoint_2.pt").is_file()
    assert not (run / "metrics.json").exists()
    resumed, _, err = cli("--resume", str(run))
    assert resumed == 0, err
    assert values(read_history(run)) == reference


def test_second_sigint_stops_at_once_without_damage(
    tmp_path: Path, small: list[str], reference: list[tuple], cli: Callable[..., CLI]
) -> None:
    signaller = handler_entry("SignalSelf", "ITERATION_COMPLETED", "signal: SIGINT, epoch: 2, times: 2")
    result = run_cli(BASE, *small, "early_stopping.enabled=false", signaller)
    run = tmp_path / "runs" / "small"
    assert result.returncode == 130
    assert "error: stopped at once by a second SIGINT during epoch 2; resume with" in result.stderr
    assert [r["epoch"] for r in read_history(run)] == [1]
    safe_torch_load(run / "checkpoints" / "checkpoint_1.pt")
    resumed, _, err = cli("--resume", str(run))
    assert resumed == 0, err
    assert values(read_history(run)) == reference


def test_sigterm_from_outside_finishes_the_epoch(tmp_path: Path, small: list[str]) -> None:
    marker = tmp_path / "slow"
    slow = handler_entry("Slow", "ITERATION_COMPLETED", f"epoch: 2, marker: '{marker}'")
    process = start_cli(BASE, *small, "early_stopping.enabled=false", slow)
    wait_for(marker, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143
    assert "SIGTERM received: stopped after epoch 2, which is saved" in stderr
    assert [r["epoch"] for r in read_history(tmp_path / "runs" / "small")] == [1, 2]
