"""handlers/attach.py: one way to attach classes and functions, with event filters and messages naming the entry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ignite.engine import Engine

from fmnist_ignite import ConfigError, Context, DataError
from fmnist_ignite.config import HandlerConfig
from fmnist_ignite.handlers import attach_handler

from .helpers import Rig, make_rig

HERE = __name__


class Recorder:
    """A class without ``attach``: called with the engine at each event."""

    def __init__(self, context: Context, label: str = "r") -> None:
        self.context, self.label = context, label
        self.calls: list[tuple[str, int]] = []

    def __call__(self, engine: Engine) -> None:
        self.calls.append((self.label, engine.state.epoch))


class SelfAttaching:
    """A class with ``attach(engine, event)`` and a state: it joins the checkpoints."""

    def __init__(self, context: Context) -> None:
        self.attached: list[tuple[Engine, Any]] = []
        self.count = 0

    def attach(self, engine: Engine, event: Any) -> None:
        self.attached.append((engine, event))
        engine.add_event_handler(event, self.step)

    def step(self) -> None:
        self.count += 1

    def state_dict(self) -> dict[str, int]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.count = state["count"]


class Picky:
    def __init__(self, context: Context, size: int = 1) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")


class Explains:
    def __init__(self, context: Context) -> None:
        raise DataError("the handler's own message")


calls: list[tuple[Any, ...]] = []


def log_epoch(context: Context, tag: str = "x") -> None:
    calls.append((tag, context.trainer.state.epoch))


NOT_CALLABLE = 42


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    calls.clear()
    return make_rig(tmp_path, write=False)


def test_a_class_is_created_once_with_the_context_and_called_with_the_engine(rig: Rig) -> None:
    spec = HandlerConfig(target=f"{HERE}:Recorder", kwargs={"label": "yaml"})
    handler = attach_handler(rig.context, spec, "handlers[0]")
    assert isinstance(handler, Recorder) and handler.context is rig.context and handler.label == "yaml"
    rig.run(3)
    assert handler.calls == [("yaml", 1), ("yaml", 2), ("yaml", 3)]
    assert "handlers[0]" not in rig.context.state  # no state: not in the checkpoints


def test_a_class_with_attach_attaches_itself_and_its_state_joins_the_checkpoints(rig: Rig) -> None:
    spec = HandlerConfig(target=f"{HERE}:SelfAttaching", event="ITERATION_COMPLETED", every=2)
    handler = attach_handler(rig.context, spec, "handlers[3]")
    [(engine, event)] = handler.attached
    assert engine is rig.context.trainer and event.name == "ITERATION_COMPLETED" and event.filter is not None
    rig.run(2)  # 6 iterations
    assert handler.count == 3
    assert rig.context.state["handlers[3]"] is handler


def test_a_function_is_called_with_the_context_and_its_kwargs(rig: Rig) -> None:
    spec = HandlerConfig(target=f"{HERE}:log_epoch", kwargs={"tag": "a"})
    assert attach_handler(rig.context, spec, "handlers[0]", tag="b") is log_epoch  # extra kwargs win
    rig.run(2)
    assert calls == [("b", 1), ("b", 2)]


def test_the_target_itself_instead_of_a_name(rig: Rig) -> None:
    seen: list[int] = []

    def handler(context: Context, factor: int) -> None:
        seen.append(context.trainer.state.epoch * factor)

    attach_handler(rig.context, HandlerConfig(target="<python>"), "handlers[0]", target=handler, factor=10)
    rig.run(2)
    assert seen == [10, 20]


def test_a_registered_name(rig: Rig) -> None:
    handler = attach_handler(rig.context, HandlerConfig(target="progress", kwargs={"bar": False}), "progress")
    assert type(handler).__name__ == "Progress"


@pytest.mark.parametrize(
    ("filters", "epochs"),
    [
        ({}, [1, 2, 3, 4, 5]),
        ({"every": 2}, [2, 4]),
        ({"once": 3}, [3]),
        ({"before": 3}, [1, 2]),
        ({"after": 3}, [4, 5]),
        ({"before": 5, "after": 1}, [2, 3, 4]),
    ],
)
def test_event_filters(rig: Rig, filters: dict[str, int], epochs: list[int]) -> None:
    attach_handler(rig.context, HandlerConfig(target=f"{HERE}:log_epoch", **filters), "handlers[0]")
    rig.run(5)
    assert [epoch for _, epoch in calls] == epochs


def test_events_and_engines(rig: Rig) -> None:
    started = attach_handler(
        rig.context, HandlerConfig(target=f"{HERE}:Recorder", event="EPOCH_STARTED"), "handlers[0]"
    )
    on_evaluator = attach_handler(
        rig.context,
        HandlerConfig(target=f"{HERE}:Recorder", engine="evaluator", event="ITERATION_COMPLETED"),
        "handlers[1]",
    )
    once = attach_handler(rig.context, HandlerConfig(target=f"{HERE}:Recorder", event="COMPLETED"), "handlers[2]")
    rig.run(2)
    assert [epoch for _, epoch in started.calls] == [1, 2]
    assert len(on_evaluator.calls) == 2 * len(rig.val)  # the validation batches of each epoch
    assert once.calls == [("r", 2)]


def test_an_unknown_name_is_named_with_the_entry(rig: Rig) -> None:
    with pytest.raises(ConfigError) as info:
        attach_handler(rig.context, HandlerConfig(target="tensorbord"), "handlers[2]")
    assert str(info.value).startswith("handlers[2].target: unknown handler 'tensorbord' (did you mean 'tensorboard'?)")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (f"{HERE}:Nothing", f"handlers[1].target: module '{HERE}' has no attribute 'Nothing' (from '{HERE}:Nothing')"),
        ("no_such_module_xyz:Thing", "handlers[1].target: cannot import module 'no_such_module_xyz'"),
        (f"{HERE}:NOT_CALLABLE", f"handlers[1].target: '{HERE}:NOT_CALLABLE' is a int, not a class or function"),
    ],
)
def test_bad_targets(rig: Rig, target: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        attach_handler(rig.context, HandlerConfig(target=target), "handlers[1]")
    assert str(info.value).startswith(message)


def test_wrong_keyword_arguments_are_named_with_the_signature(rig: Rig) -> None:
    spec = HandlerConfig(target=f"{HERE}:Recorder", kwargs={"lable": "x"})
    with pytest.raises(ConfigError) as info:
        attach_handler(rig.context, spec, "handlers[0]")
    message = str(info.value)
    assert message.startswith(f"handlers[0].kwargs: {HERE}:Recorder got an unexpected keyword argument 'lable' ")
    assert message.endswith(")") and "(it takes (context" in message and "label" in message
    spec = HandlerConfig(target="early_stopping", kwargs={"patience": 2, "mode": "max"})
    with pytest.raises(ConfigError, match=r"^early_stopping\.kwargs: early_stopping got an unexpected keyword "):
        attach_handler(rig.context, spec, "early_stopping")
    assert "early_stopping" not in rig.context.state


def test_a_class_that_refuses_its_arguments(rig: Rig) -> None:
    spec = HandlerConfig(target=f"{HERE}:Picky", kwargs={"size": 0})
    with pytest.raises(ConfigError) as info:
        attach_handler(rig.context, spec, "handlers[4]")
    assert str(info.value) == f"handlers[4]: {HERE}:Picky cannot be created: ValueError: size must be at least 1, got 0"


def test_a_library_error_from_a_handler_is_passed_on_as_it_is(rig: Rig) -> None:
    with pytest.raises(DataError, match="^the handler's own message$"):
        attach_handler(rig.context, HandlerConfig(target=f"{HERE}:Explains"), "handlers[0]")


def test_nothing_is_attached_when_an_entry_is_refused(rig: Rig) -> None:
    with pytest.raises(ConfigError):
        attach_handler(rig.context, HandlerConfig(target=f"{HERE}:log_epoch", kwargs={"nope": 1}), "handlers[0]")
    with pytest.raises(ConfigError):
        attach_handler(rig.context, HandlerConfig(target=f"{HERE}:log_epoch", every=2), "handlers[1]", target=42)
    rig.run(2)
    assert calls == []
