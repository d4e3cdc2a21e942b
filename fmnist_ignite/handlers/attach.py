"""The one way to attach a handler, for built-ins and plugins alike."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, cast

from ..config import HandlerConfig
from ..context import Context
from ..errors import ConfigError, FmnistIgniteError
from ..registry import HANDLERS


def attach_handler(
    context: Context, spec: HandlerConfig, where: str, target: Callable[..., Any] | None = None, **extra: Any
) -> Any:
    """Resolve, check and attach one handler entry; errors name the entry (``handlers[2].kwargs``).

    A class is instantiated once with ``(context, **kwargs)``; the instance is attached with its own
    ``attach(engine, event)`` if it has one, else called with the engine at each event. A function
    is called at each event with ``(context, **kwargs)``. An instance with ``state_dict`` and
    ``load_state_dict`` joins the checkpoints under the name ``where``.

    Args:
        context: the experiment context.
        spec: the entry: target, event and its filters, engine, kwargs.
        where: the entry's name in messages and checkpoints (``handlers[2]``, ``early_stopping``).
        target: the class or function itself, instead of resolving ``spec.target``.
        extra: keyword arguments added to ``spec.kwargs``.

    Returns:
        the handler instance for a class, or the function.
    """
    if target is None:
        try:
            target = HANDLERS.get(spec.target)
        except ConfigError as err:
            raise ConfigError(f"{where}.target: {err}") from None
    kwargs = {**spec.kwargs, **extra}
    if not callable(target):
        raise ConfigError(f"{where}.target: '{spec.target}' is a {type(target).__name__}, not a class or function")
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        try:
            signature.bind(context, **kwargs)
        except TypeError as err:
            raise ConfigError(f"{where}.kwargs: {spec.target} {err} (it takes {signature})") from None
    engine = context.trainer if spec.engine == "trainer" else context.evaluator
    event = spec.ignite_event()
    if inspect.isclass(target):
        try:
            handler: Any = cast(Any, target)(context, **kwargs)
        except FmnistIgniteError:  # already says what is wrong and what to do
            raise
        except Exception as err:  # the handler's own check of its arguments
            raise ConfigError(f"{where}: {spec.target} cannot be created: {type(err).__name__}: {err}") from None
        if hasattr(handler, "attach"):
            handler.attach(engine, event)
        else:
            engine.add_event_handler(event, handler)
        if hasattr(handler, "state_dict") and hasattr(handler, "load_state_dict"):
            context.state[where] = handler
        return handler
    function = target
    engine.add_event_handler(event, lambda: function(context, **kwargs))
    return function
