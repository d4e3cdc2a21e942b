"""One registry per kind of plugin (handlers, models, data sets, optimizers, learning-rate schedules):
short names, installed plugins, dotted paths.

A config names a plugin in one of three ways, resolved in this order:

1. a built-in short name (``progress``, ``logistic``, ``fashion_mnist``, ``sgd``, ``cosine``, ...);
2. a name that an installed distribution registers in the entry-point group
   ``fmnist_ignite.handlers``, ``fmnist_ignite.models``, ``fmnist_ignite.datasets``,
   ``fmnist_ignite.optimizers`` or ``fmnist_ignite.schedulers``;
3. a dotted path ``package.module:Name``.

Built-ins go through exactly the same lookup as plugins, so whatever a built-in can do from a
config, a user's plugin can do too.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, TypeVar

from .errors import ConfigError, did_you_mean

T = TypeVar("T")


class Registry:
    """Maps names to factories for one kind of plugin.

    Args:
        kind: what the registry holds, used in messages (``"handler"``).
        group: the entry-point group that installed distributions register under.
        builtin_module: the module whose import registers the built-ins.
    """

    def __init__(self, kind: str, group: str, builtin_module: str) -> None:
        self.kind = kind
        self.group = group
        self._builtin_module = builtin_module
        self._items: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers a class or function under ``name``."""

        def decorate(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            return obj

        return decorate

    def builtins(self) -> dict[str, Any]:
        """The built-in names and what they stand for."""
        importlib.import_module(self._builtin_module)
        return dict(self._items)

    def plugins(self) -> dict[str, str]:
        """Entry points of installed distributions: name -> ``module:attr``."""
        return {ep.name: ep.value for ep in entry_points(group=self.group)}

    def describe(self) -> list[tuple[str, str]]:
        """``(name, origin)`` for every name: built-ins first, then installed plugins by distribution."""
        rows = [(name, f"built-in ({_qualified(obj)})") for name, obj in sorted(self.builtins().items())]
        for ep in sorted(entry_points(group=self.group), key=lambda ep: ep.name):
            dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "an installed package"
            rows.append((ep.name, f"{dist} ({ep.value})"))
        return rows

    def names(self) -> list[str]:
        """Every name a config may use (dotted paths aside)."""
        return sorted({*self.builtins(), *self.plugins()})

    def unknown(self, ref: str) -> str:
        """The one-line message for a name that is neither registered nor a dotted path (the schema's and
        :meth:`get`'s)."""
        names = self.names()
        choices = f"choose one of {', '.join(names)} or 'package.module:Name'"
        return f"unknown {self.kind} {ref!r}{did_you_mean(ref, names)}; {choices}"

    def check(self, ref: str) -> str:
        """``ref`` itself when a config may name it (a registered name or ``package.module:Name``), for the
        schema's validators; the dotted path is imported only when the experiment is built.

        Raises:
            ValueError: with :meth:`unknown`'s message.
        """
        if ":" in ref or ref in self.builtins() or ref in self.plugins():  # built-ins first: no scan of entry points
            return ref
        raise ValueError(self.unknown(ref))

    def get(self, ref: str) -> Any:
        """Resolve a name or ``package.module:Name``.

        Raises:
            ConfigError: the name is unknown or the import fails; the message says which.
        """
        builtins = self.builtins()
        if ref in builtins:
            return builtins[ref]
        for ep in entry_points(group=self.group):
            if ep.name == ref:
                try:
                    return ep.load()
                except Exception as err:  # a plugin's import can fail in any way
                    raise ConfigError(
                        f"{self.kind} '{ref}' (entry point {ep.value}) cannot be loaded: {type(err).__name__}: {err}"
                    ) from None
        if ":" not in ref:
            raise ConfigError(self.unknown(ref))
        return import_target(ref)


def _qualified(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"


def import_target(ref: str) -> Any:
    """Import ``package.module:Name`` (``Name`` may be dotted, ``Outer.Inner``)."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"'{ref}' must look like package.module:Name")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as err:  # the user's module may fail to import in any way
        raise ConfigError(f"cannot import module '{module_name}' for '{ref}': {type(err).__name__}: {err}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"module '{module_name}' has no attribute '{attr}' (from '{ref}')") from None
    return obj


HANDLERS = Registry("handler", "fmnist_ignite.handlers", "fmnist_ignite.handlers")
MODELS = Registry("model", "fmnist_ignite.models", "fmnist_ignite.models")
DATASETS = Registry("dataset", "fmnist_ignite.datasets", "fmnist_ignite.data.datasets")
OPTIMIZERS = Registry("optimizer", "fmnist_ignite.optimizers", "fmnist_ignite.optim")
SCHEDULERS = Registry("scheduler", "fmnist_ignite.schedulers", "fmnist_ignite.optim")
