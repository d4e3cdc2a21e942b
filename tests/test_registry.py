"""Optimizers and learning-rate schedules chosen by name, like models and handlers: built-ins, entry points,
``package.module:Name``; and the one unknown-name message every registry gives."""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib.metadata import EntryPoint

import pytest
import torch
from ignite.handlers import LRScheduler

import fmnist_ignite.registry as registry_module
from fmnist_ignite import (
    DATASETS,
    HANDLERS,
    MODELS,
    OPTIMIZERS,
    SCHEDULERS,
    Config,
    ConfigError,
    build_experiment,
    load_config,
    resume_experiment,
)
from fmnist_ignite.optim import CosineOverRun

from . import plugins
from .conftest import values


def test_the_built_ins_are_registered_like_plugins() -> None:
    assert {"adam", "adamw", "sgd"} <= set(OPTIMIZERS.names())
    assert {"cosine", "none", "step"} <= set(SCHEDULERS.names())
    assert OPTIMIZERS.get("adam") is torch.optim.Adam and OPTIMIZERS.get("adamw") is torch.optim.AdamW
    assert (OPTIMIZERS.group, SCHEDULERS.group) == ("fmnist_ignite.optimizers", "fmnist_ignite.schedulers")
    assert dict(OPTIMIZERS.describe())["sgd"] == "built-in (fmnist_ignite.optim:sgd)"
    assert dict(SCHEDULERS.describe())["cosine"] == "built-in (fmnist_ignite.optim:cosine)"


@pytest.mark.parametrize(
    ("registry", "name", "expected"),
    [
        (
            OPTIMIZERS,
            "adamm",
            "unknown optimizer 'adamm' (did you mean 'adam'?); choose one of adam, adamw, sgd or 'package.module:Name'",
        ),
        (
            SCHEDULERS,
            "cosin",
            "unknown scheduler 'cosin' (did you mean 'cosine'?); choose one of cosine, none, plateau, step or "
            "'package.module:Name'",
        ),
        (MODELS, "mlp", "unknown model 'mlp'; choose one of logistic or 'package.module:Name'"),
        (
            DATASETS,
            "fashion-mnist",
            "unknown dataset 'fashion-mnist' (did you mean 'fashion_mnist'?); choose one of cifar10, fashion_mnist, "
            "image_folder or 'package.module:Name'",
        ),
    ],
)
def test_an_unknown_name_gets_one_message_from_the_schema_and_the_registry(
    registry: registry_module.Registry, name: str, expected: str
) -> None:
    assert registry.unknown(name) == expected
    with pytest.raises(ConfigError) as info:
        registry.get(name)
    assert str(info.value) == expected
    with pytest.raises(ValueError) as raised:
        registry.check(name)
    assert str(raised.value) == expected
    key = {"optimizer": "optimizer.name", "scheduler": "scheduler.name", "model": "model.name"}.get(
        registry.kind, "data.dataset"
    )
    with pytest.raises(ConfigError) as info:
        load_config({}, [f"{key}={name}"])
    assert str(info.value) == f"config: {key!r}: {expected} (got {name!r})"


def test_a_dotted_path_passes_the_schema_and_is_imported_when_built() -> None:
    assert OPTIMIZERS.check("mypkg.opt:Lion") == "mypkg.opt:Lion"
    assert load_config({}, ["optimizer.name=mypkg.opt:Lion"]).optimizer.name == "mypkg.opt:Lion"
    assert {"early_stopping", "mlflow", "progress", "tensorboard"} <= set(HANDLERS.names())


def test_a_user_optimizer_by_dotted_path_trains_with_its_kwargs_and_resumes_exactly(
    make_config: Callable[..., Config],
) -> None:
    overrides = (
        "optimizer={name: 'tests.plugins:Lion', lr: 0.001, kwargs: {betas: [0.9, 0.99]}}",
        "scheduler.name=none",
        "trainer.max_epochs=4",
        "early_stopping.enabled=false",
    )
    full = build_experiment(make_config("name=full", *overrides))
    optimizer = full.context.optimizer
    assert isinstance(optimizer, plugins.Lion)
    assert (optimizer.defaults["lr"], optimizer.defaults["betas"], optimizer.defaults["weight_decay"]) == (
        0.001,
        (0.9, 0.99),
        0.0,
    )
    full.run()
    assert [r["lr"] for r in full.history] == [0.001] * 4
    assert full.history[-1]["train_loss"] < full.history[0]["train_loss"], "it trains"

    cut = build_experiment(make_config("name=cut", *overrides))
    cut.add_handler(plugins.StopAfter, event="EPOCH_STARTED", epoch=2)
    with pytest.raises(KeyboardInterrupt):
        cut.run()
    resumed = resume_experiment(cut.run_dir)
    assert isinstance(resumed.context.optimizer, plugins.Lion)
    resumed.run()
    assert values(resumed.history) == values(full.history)
    assert json.loads((cut.run_dir / "metrics.json").read_text()) == json.loads(
        (full.run_dir / "metrics.json").read_text()
    )


@pytest.mark.parametrize(
    ("scheduler", "kind"),
    [
        ("{name: 'tests.plugins:warmup', kwargs: {epochs: 2}}", "ignite"),
        ("{name: 'tests.plugins:halve_every', kwargs: {epochs: 1}}", "torch"),
    ],
)
def test_a_user_schedule_by_dotted_path_is_checkpointed_and_resumes_exactly(
    make_config: Callable[..., Config], scheduler: str, kind: str
) -> None:
    overrides = (f"scheduler={scheduler}", "optimizer.lr=0.01", "trainer.max_epochs=4", "early_stopping.enabled=false")
    full = build_experiment(make_config("name=full", *overrides))
    attached = full.context.state["scheduler"]
    assert isinstance(attached, LRScheduler) == (kind == "torch"), "a torch schedule is stepped through Ignite's"
    full.run()
    rates = [r["lr"] for r in full.history]
    if kind == "ignite":
        assert rates[0] < rates[1] < 0.01 and rates[2:] == [0.01, 0.01], "warm-up over 2 epochs, then the peak"
    else:
        assert rates == pytest.approx([0.01, 0.005, 0.0025, 0.00125])

    cut = build_experiment(make_config("name=cut", *overrides))
    cut.add_handler(plugins.StopAfter, event="EPOCH_STARTED", epoch=2)
    with pytest.raises(KeyboardInterrupt):
        cut.run()
    resumed = resume_experiment(cut.run_dir)
    resumed.run()
    assert values(resumed.history) == values(full.history)


def test_an_installed_packages_optimizer_is_found_by_its_entry_point_name(
    make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    lion = EntryPoint(name="lion", value="tests.plugins:Lion", group="fmnist_ignite.optimizers")
    monkeypatch.setattr(
        registry_module, "entry_points", lambda group: [lion] if group == "fmnist_ignite.optimizers" else []
    )
    assert OPTIMIZERS.names() == ["adam", "adamw", "lion", "sgd"]
    assert dict(OPTIMIZERS.describe())["lion"] == "an installed package (tests.plugins:Lion)"
    experiment = build_experiment(make_config("optimizer.name=lion", "optimizer.lr=0.001"))
    assert isinstance(experiment.context.optimizer, plugins.Lion)


def test_the_built_in_names_make_what_they_made_before(make_config: Callable[..., Config]) -> None:
    sgd = build_experiment(make_config("optimizer.momentum=0.5", "optimizer.weight_decay=0.01")).context
    assert type(sgd.optimizer) is torch.optim.SGD
    group = sgd.optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.01, 0.5, True, 0.01)
    assert isinstance(sgd.state["scheduler"], CosineOverRun)
    plain = build_experiment(make_config("optimizer.momentum=0", "scheduler.name=none")).context
    assert plain.optimizer.param_groups[0]["nesterov"] is False, "no Nesterov without momentum"
    assert "scheduler" not in plain.state
    adam = build_experiment(make_config("optimizer.name=adamw", "optimizer.kwargs={betas: [0.8, 0.9]}")).context
    assert type(adam.optimizer) is torch.optim.AdamW
    assert tuple(adam.optimizer.defaults["betas"]) == (0.8, 0.9)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["optimizer.name=tests.plugins:NOT_CALLABLE"],
            "optimizer.name: 'tests.plugins:NOT_CALLABLE' is a int, not a torch.optim.Optimizer subclass or a "
            "function make(params, section)",
        ),
        (
            ["optimizer.name=tests.plugins:RecordMetrics"],
            "optimizer.name: 'tests.plugins:RecordMetrics' is the class RecordMetrics, not a torch.optim.Optimizer "
            "subclass or a function make(params, section)",
        ),
        (
            ["optimizer.name=tests.nope:Lion"],
            "optimizer.name: cannot import module 'tests.nope' for 'tests.nope:Lion': ModuleNotFoundError: ",
        ),
        (
            ["optimizer.name=tests.plugins:Lion", "optimizer.kwargs={colour: red}"],
            "optimizer: tests.plugins:Lion cannot be created: TypeError: ",
        ),
        (["scheduler.kwargs={epochs: 2}"], "scheduler: cosine cannot be created: TypeError: "),
        (
            ["scheduler.name=tests.plugins:stateless_schedule"],
            "scheduler.name: 'tests.plugins:stateless_schedule' returned a function, which is not called with the "
            "trainer or has no state_dict/load_state_dict; return an Ignite parameter scheduler or a torch "
            "LRScheduler",
        ),
    ],
)
def test_an_optimizer_or_schedule_that_cannot_be_made_fails_at_build_time(
    make_config: Callable[..., Config], overrides: list[str], expected: str
) -> None:
    cfg = make_config(*overrides)
    with pytest.raises(ConfigError) as info:
        build_experiment(cfg)
    message = str(info.value)
    assert message.startswith(expected) and "\n" not in message
    assert not cfg.run_dir.exists()


def test_a_misspelt_handler_gets_a_suggestion() -> None:
    with pytest.raises(ConfigError, match="unknown handler 'tensorbord' \\(did you mean 'tensorboard'\\?\\)"):
        HANDLERS.get("tensorbord")
