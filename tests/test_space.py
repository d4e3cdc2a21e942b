"""The swept keys: the argument grammar (the overrides' own), trial names and grid points; plain data, no Optuna."""

from __future__ import annotations

import pytest

from fmnist_ignite import ConfigError
from fmnist_ignite.sweep.space import Param, SweepPlan, grid_points, parse_arguments, trial_name


def test_arguments_split_into_overrides_grids_and_distributions() -> None:
    plain, params = parse_arguments(
        ["seed=3", "optimizer.lr=0.01,1e-1", "handlers=[{target: a, kwargs: {x: 1}}]", "model.kwargs.k=[1,2],[3,4]"]
    )
    assert plain == ["seed=3", "handlers=[{target: a, kwargs: {x: 1}}]"]
    assert [(p.key, p.kind, p.values) for p in params] == [
        ("optimizer.lr", "grid", ("0.01", "1e-1")),
        ("model.kwargs.k", "grid", ("[1,2]", "[3,4]")),
    ]
    assert trial_name(params, {"optimizer.lr": "1e-1", "model.kwargs.k": "[3,4]"}) == "lr-1e-1_k-3_4"
    _, sampled = parse_arguments(
        ["optimizer.lr=log(1e-4,0.1)", "seed=interval(0,9)", "optimizer.name=choice(sgd,adam)"]
    )
    lr, seed, name = sampled
    assert (lr.kind, lr.low, lr.high, lr.integer) == ("log", 1e-4, 0.1, False)
    assert (seed.kind, seed.integer, seed.text(4)) == ("interval", True, "4")
    assert (name.kind, name.values) == ("choice", ("sgd", "adam"))
    assert trial_name(sampled, {"optimizer.lr": 0.00123, "seed": 4, "optimizer.name": "adam"}) == (
        "lr-0.00123_seed-4_name-adam"
    )


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("lr", "override 'lr' must look like key.sub=value (e.g. optimizer.lr=0.1)"),
        ("optimizer.lr=0.1,[", "override 'optimizer.lr=0.1,[': the value '[' is not valid YAML; quote it"),
        ("optimizer.lr=interval(a,b)", "'optimizer.lr=interval(a,b)': interval takes two numbers, interval(low,high)"),
        ("optimizer.lr=interval(2,1)", "'optimizer.lr=interval(2,1)': the low end must be below the high end"),
        ("optimizer.name=choice(sgd,)", "'optimizer.name=choice(sgd,)': an empty value in the list"),
        ("seed=a/b,a_b", "'seed=a/b,a_b': two of the values are the same, or would name the same trial folder"),
        ("output_dir=a,b", "'output_dir=a,b': a sweep names its trials and puts them in output_dir/NAME"),
    ],
)
def test_arguments_that_are_not_a_sweep_are_one_line(item: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_arguments([item])
    assert str(caught.value).startswith(message)


def test_a_key_swept_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^seed is swept twice; give its values in one argument: seed=v1,v2$"):
        parse_arguments(["seed=1,2", "seed=interval(1,5)"])


def test_grid_points_vary_the_first_key_slowest_and_long_names_are_shortened() -> None:
    _, params = parse_arguments(["optimizer.lr=0.1,0.2", "seed=1,2"])
    assert grid_points(params) == [
        {"optimizer.lr": "0.1", "seed": "1"},
        {"optimizer.lr": "0.1", "seed": "2"},
        {"optimizer.lr": "0.2", "seed": "1"},
        {"optimizer.lr": "0.2", "seed": "2"},
    ]
    same_last = [Param("model.kwargs.k", "grid", ("1", "2")), Param("data.k", "grid", ("1", "2"))]
    assert trial_name(same_last, {"model.kwargs.k": "1", "data.k": "2"}) == "model.kwargs.k-1_data.k-2"
    long = [Param("a", "grid", ("x" * 200, "y"))]
    name = trial_name(long, {"a": "x" * 200})
    assert len(name) == 120 and name != trial_name(long, {"a": "x" * 199 + "z"})


def test_the_plan_keeps_what_every_start_must_share() -> None:
    _, params = parse_arguments(["optimizer.lr=log(0.001,0.1)", "seed=interval(1,9)"])
    plan = SweepPlan(None, (), tuple(params), "/s", "sqlite:///s.db", "s", "val_accuracy", "maximize", trials=5)
    assert plan.definition() == {
        "kind": "sampled",
        "space": {"optimizer.lr": "log(0.001,0.1)", "seed": "interval(1,9)"},
        "monitor": "val_accuracy (maximize)",
        "prune": "none",
    }


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("optimizer.lr=interval(-.inf,0.1)", "interval takes two finite numbers (not inf or nan)"),
        ("optimizer.lr=log(1e-4,.inf)", "log takes two finite numbers (not inf or nan)"),
        ("seed=interval(.nan,3)", "interval takes two finite numbers (not inf or nan)"),
        ("optimizer.lr=0.1,0.10", "two of the values are the same"),
        ("optimizer.lr=1,1.0,2", "two of the values are the same"),
        ("optimizer.name=choice(sgd,'sgd')", "two of the values are the same"),
        ("model.kwargs.k=[1,2],[1,2.0]", "two of the values are the same"),
    ],
)
def test_non_finite_bounds_and_values_equal_as_yaml_are_refused(item: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_arguments([item])
    assert str(caught.value).startswith(f"{item!r}: {message}")


def test_values_that_differ_as_yaml_are_not_duplicates() -> None:
    _, (flag,) = parse_arguments(["data.flag=true,1,'2'"])
    assert flag.values == ("true", "1", "'2'")
