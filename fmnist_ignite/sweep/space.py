"""What a sweep varies (plain data, no Optuna): the swept keys and their values, trial names, the plan.

``key=v1,v2`` is a grid over ``key``; ``key=interval(low,high)``, ``key=log(low,high)`` and
``key=choice(a,b)`` are sampled. The grammar of ``key=value`` and the reading of values as YAML
are the overrides' own (:func:`fmnist_ignite.config.split_override`, :func:`~fmnist_ignite.config.parse_value`).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from hashlib import sha1
from typing import Any, Literal

from ..config import parse_value, split_override
from ..errors import ConfigError

MAX_NAME = 120
MAX_GRID = 10_000  # points of a grid: each is a trial, and Optuna's grid sampler holds them all in memory
SAMPLED = re.compile(r"^(interval|log|choice)\((.*)\)$", re.DOTALL)
NOT_IN_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Param:
    """One swept key: its grid or choice values (as YAML text: Optuna's categories), or the range Optuna samples."""

    key: str
    kind: Literal["grid", "choice", "interval", "log"]
    values: tuple[str, ...] = ()
    low: float = 0.0
    high: float = 0.0
    integer: bool = False

    def text(self, value: Any) -> str:
        """A value of this key as YAML text (for the override and the trial's name)."""
        if self.values:
            return str(value)
        return str(int(value)) if self.integer else repr(float(value))

    def describe(self) -> str:
        """The key's values as the command line gives them."""
        if self.values:
            return ",".join(self.values) if self.kind == "grid" else f"choice({','.join(self.values)})"
        low, high = (int(self.low), int(self.high)) if self.integer else (self.low, self.high)
        return f"{self.kind}({low},{high})"


@dataclass(frozen=True)
class SweepPlan:
    """What every process of a sweep needs (plain data: it goes to worker processes); ``trials`` None for a grid."""

    config: str | None
    overrides: tuple[str, ...]
    params: tuple[Param, ...]
    sweep_dir: str
    storage: str
    study: str
    monitor: str
    direction: Literal["maximize", "minimize"]
    trials: int | None = None
    sampler: str = "tpe"
    prune: str = "none"

    def definition(self) -> dict[str, Any]:
        """What must be the same for every process and every start of the sweep (kept in the study)."""
        return {
            "kind": "grid" if self.trials is None else "sampled",
            "space": {p.key: p.describe() for p in self.params},
            "monitor": f"{self.monitor} ({self.direction})",
            "prune": self.prune,
        }


def parse_arguments(items: Sequence[str]) -> tuple[list[str], list[Param]]:
    """Split ``key=value`` arguments into plain overrides (the same for every trial) and swept keys.

    A comma inside brackets or quotes does not split (``key=[1,2],[3,4]`` is a grid of two lists).

    Raises:
        ConfigError: an argument that is none of these, a value that is not YAML, a key swept twice.

    Example:
        >>> from fmnist_ignite.sweep.space import parse_arguments
        >>> plain, params = parse_arguments(["optimizer.lr=0.01,0.1", "seed=3", "optimizer.name=choice(sgd,adam)"])
        >>> plain, [p.describe() for p in params]
        (['seed=3'], ['0.01,0.1', 'choice(sgd,adam)'])
    """
    plain: list[str] = []
    params: dict[str, Param] = {}
    for item in items:
        key, text = split_override(item)
        match = SAMPLED.match(text.strip())
        values = _split(match.group(2) if match else text, item)
        if not match and len(values) == 1:
            plain.append(item)
            continue
        param = _sampled(key, match.group(1), values, item) if match else Param(key, "grid", tuple(values))
        if key in params:
            raise ConfigError(f"{key} is swept twice; give its values in one argument: {key}=v1,v2")
        if key in ("name", "output_dir"):
            raise ConfigError(f"{item!r}: a sweep names its trials and puts them in output_dir/NAME; sweep other keys")
        parsed = [parse_value(value, item) for value in param.values]
        same = any(_same(a, b) for i, a in enumerate(parsed) for b in parsed[:i])  # 0.1 and 0.10 are one value
        if same or len({_safe(v) for v in param.values}) < len(param.values):
            raise ConfigError(f"{item!r}: two of the values are the same, or would name the same trial folder")
        params[key] = param
    return plain, list(params.values())


def _split(text: str, item: str) -> list[str]:
    parts, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    if len(parts) > 1 and not all(parts):
        raise ConfigError(f"{item!r}: an empty value in the list; write key=v1,v2,...")
    return parts


def _sampled(key: str, function: str, args: list[str], item: str) -> Param:
    if function == "choice":
        if not all(args):
            raise ConfigError(f"{item!r}: choice needs its values, choice(a,b,...)")
        return Param(key, "choice", tuple(args))
    bounds = [parse_value(a, item) for a in args]
    if len(bounds) != 2 or not all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds):
        raise ConfigError(f"{item!r}: {function} takes two numbers, {function}(low,high)")
    low, high = bounds
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ConfigError(f"{item!r}: {function} takes two finite numbers (not inf or nan), {function}(low,high)")
    if not low < high:
        raise ConfigError(f"{item!r}: the low end must be below the high end")
    if function == "log" and low <= 0:
        raise ConfigError(f"{item!r}: log needs a positive low end")
    integer = isinstance(low, int) and isinstance(high, int)
    return Param(key, "interval" if function == "interval" else "log", (), float(low), float(high), integer)


def _same(a: Any, b: Any) -> bool:
    """Whether two values read from YAML are one value to a config (``0.1`` and ``0.10``; ``true`` is not ``1``)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and a == b


def _safe(text: str) -> str:
    return NOT_IN_NAME.sub("_", text).strip("_") or "_"


def trial_name(params: Sequence[Param], values: Mapping[str, Any]) -> str:
    """The name of the trial with these values: ``<key>-<value>`` for each swept key, joined by ``_``.

    A key is shortened to its last part (``optimizer.lr`` to ``lr``) unless two swept keys share it.

    Example:
        >>> from fmnist_ignite.sweep.space import parse_arguments, trial_name
        >>> _, params = parse_arguments(["optimizer.lr=0.01,0.1", "seed=1,2"])
        >>> trial_name(params, {"optimizer.lr": "0.1", "seed": "2"})
        'lr-0.1_seed-2'
    """
    lasts = [p.key.rsplit(".", 1)[-1] for p in params]
    parts = [
        f"{last if lasts.count(last) == 1 else p.key}-{_safe(p.text(values[p.key]))}"
        for p, last in zip(params, lasts, strict=True)
    ]
    name = "_".join(parts)
    return f"{name[: MAX_NAME - 9]}-{sha1(name.encode()).hexdigest()[:8]}" if len(name) > MAX_NAME else name


def grid_size(params: Sequence[Param]) -> int:
    """How many points a grid over these keys has (counted, not built)."""
    return math.prod(len(p.values) for p in params)


def grid_points(params: Sequence[Param]) -> list[dict[str, str]]:
    """Every combination of a grid sweep's values, the first key varying slowest."""
    keys = [p.key for p in params]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(p.values for p in params))]
