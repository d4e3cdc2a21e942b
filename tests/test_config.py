from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fmnist_ignite import Config, ConfigError, load_config
from fmnist_ignite.config import SchedulerConfig, validate_config

from .conftest import BASE, CLI
from .helpers import time_limit

REPO = Path(__file__).resolve().parents[1]


def test_defaults_and_base_config_are_valid() -> None:
    base = load_config(REPO / "configs" / "base.yaml")
    assert base.data.batch_size == 128
    assert base.data.val_size == 10000
    assert base.model.name == "logistic"
    assert base.run_dir == Path("runs/base")
    assert load_config().trainer.max_epochs == 10


def test_overrides_are_typed_as_yaml_and_applied_in_order() -> None:
    cfg = load_config(
        {}, ["optimizer.lr=0.5", "trainer.max_epochs=7", "early_stopping.enabled=false", "optimizer.lr=1e-3"]
    )
    assert cfg.optimizer.lr == 0.001
    assert cfg.trainer.max_epochs == 7
    assert cfg.early_stopping.enabled is False


def test_override_into_a_handler_list_entry() -> None:
    cfg = load_config({"handlers": [{"target": "tests.plugins:RecordMetrics"}]}, ["handlers.0.every=2"])
    assert cfg.handlers[0].every == 2


def test_saved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs" / "base.yaml", ["optimizer.name=adamw", "seed=7"])
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


@pytest.mark.parametrize("name", ["base", "cifar10", "image_folder"])
def test_saved_config_text_is_pyyamls_safe_dump(name: str) -> None:
    cfg = load_config(
        REPO / "configs" / f"{name}.yaml", ["name=long-" + "x" * 90, "data.root='/a päth/with: colon'", "seed=0"]
    )
    assert cfg.to_yaml() == yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def test_config_is_immutable() -> None:
    cfg = load_config()
    with pytest.raises(Exception, match="frozen"):
        cfg.seed = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["optimizer.lrr=0.1"], "unknown key 'optimizer.lrr'; did you mean 'lr'?"),
        (["trainer.max_epoch=3"], "did you mean 'max_epochs'?"),
        (["optimizer.lr=fast"], "'optimizer.lr': Input should be a valid number"),
        (["optimizer.lr=0"], "'optimizer.lr': Input should be greater than 0 (got 0)"),
        (["optimizer.lr=-1"], "'optimizer.lr': Input should be greater than 0"),
        (["data.batch_size=0"], "'data.batch_size': Input should be greater than or equal to 1"),
        (["early_stopping.patience=-1"], "'early_stopping.patience'"),
        (
            ["optimizer.name=rmsprop"],
            "'optimizer.name': unknown optimizer 'rmsprop'; choose one of adam, adamw, sgd or 'package.module:Name'",
        ),
        (["data.dataset=mnist"], "unknown dataset 'mnist'"),
        (["data.dataset=fashion-mnist"], "did you mean 'fashion_mnist'?"),
        (["model.name=mlp"], "unknown model 'mlp'"),
        (["device=gpu"], "'device': String should match pattern"),
        (["name=../../x"], "'name': String should match pattern"),
        (["name=a/b"], "'name': String should match pattern"),
        (
            ["handlers=[{target: x:Y, event: EPOCH_COMPLETE}]"],
            "unknown event 'EPOCH_COMPLETE' (did you mean 'EPOCH_COMPLETED'?)",
        ),
        (["handlers=[{target: x:Y, every: 2, once: 3}]"], "event filters do not combine"),
        (["handlers=[{event: STARTED}]"], "'handlers[0].target' is required"),
        (["seed=1.5"], "'seed': Input should be a valid integer"),
        (["distributed.nproc_per_node=3"], "nproc_per_node=3 needs a backend: set distributed.backend=gloo"),
        (["distributed.nnodes=2"], "nnodes=2 needs a backend: set distributed.backend=gloo"),
        (["distributed.backend=mpi"], "'distributed.backend': Input should be 'gloo' or 'nccl'"),
        (["data.channels=2"], "'data.channels': Input should be 1 or 3 (got 2)"),
        (["data.image_size=0"], "'data.image_size': Input should be greater than or equal to 1 (got 0)"),
        (
            ["data.transforms=[{RandomHorizontalFlip: {}}, {RandomFlip: {}}]"],
            "config: 'data.transforms': item 1: unknown transform 'RandomFlip' (did you mean 'RandomVerticalFlip'?); "
            "give the name of a torchvision.transforms.v2 class, e.g. RandomCrop or RandomHorizontalFlip",
        ),
        (
            ["data.transforms=[{RandomCrop: {sise: 28}}]"],
            "config: 'data.transforms': item 0 (RandomCrop): RandomCrop.__init__() got an unexpected keyword argument "
            "'sise'; see torchvision's documentation of RandomCrop",
        ),
        (
            ["data.transforms=[{RandomCrop: {size: 28}, RandomHorizontalFlip: {}}]"],
            "config: 'data.transforms': item 0 must name one transform with its keyword arguments, e.g. "
            "{RandomHorizontalFlip: {}}; got 'RandomCrop', 'RandomHorizontalFlip'",
        ),
        (["data.transforms=[RandomHorizontalFlip]"], "'data.transforms[0]': Input should be a valid dictionary"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({}, overrides)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert message.startswith("config: ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "the config file is empty"),
        ("- a\n- b\n", "must be a YAML mapping of keys to values, not a list"),
        ("name: x\noptimizer: {lr: 0.1\n", ":3:1: YAML error"),
        ("name: !!python/object/apply:os.system ['echo hi']\n", "YAML error: could not determine a constructor"),
        ("optimizer:\n  lr: 0.1\n  mommentum: 0.5\n", "unknown key 'optimizer.mommentum'; did you mean 'momentum'?"),
    ],
)
def test_bad_files_name_the_file(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file .*nope.yaml' does not exist"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("item", ["lr", "=3", "a..b=1", "optimizer.lr=["])
def test_malformed_overrides(item: str) -> None:
    with pytest.raises(ConfigError, match="override"):
        load_config({}, [item])


def test_override_below_a_value_is_refused() -> None:
    with pytest.raises(ConfigError, match="override 'optimizer.lr.x=1': 'optimizer.lr' is not a section"):
        load_config({}, ["optimizer.lr=0.1", "optimizer.lr.x=1"])


@settings(max_examples=200, deadline=None)
@given(
    key=st.sampled_from(
        [
            "seed",
            "name",
            "device",
            "optimizer.lr",
            "optimizer.name",
            "data.val_size",
            "data.batch_size",
            "trainer.max_epochs",
            "early_stopping.mode",
            "handlers",
            "data",
            "x.y",
            "scheduler.name",
            "data.transforms",
        ]
    ),
    value=st.one_of(
        st.integers(-5, 10**6),
        st.floats(allow_nan=True),
        st.text(max_size=12),
        st.booleans(),
        st.none(),
        st.lists(st.integers(), max_size=2),
    ),
)
def test_any_override_gives_a_config_or_a_one_line_config_error(key: str, value: object) -> None:
    try:
        cfg = load_config({}, [f"{key}={value}"])
    except ConfigError as err:
        assert "\n" not in str(err)
    else:
        assert isinstance(cfg, Config)


@settings(max_examples=100, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
    )
)
def test_any_yaml_value_gives_a_config_or_a_config_error(data: object) -> None:
    if not isinstance(data, dict):
        data = {"data": data}
    try:
        validate_config(data)
    except ConfigError as err:
        assert "\n" not in str(err)


def test_a_bad_value_is_blamed_on_where_it_came_from(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(REPO / "configs" / "base.yaml", ["trainer.max_epochs=3", "distributed.backend=mpi"])
    assert str(info.value) == (
        "the overrides (key=value): 'distributed.backend': Input should be 'gloo' or 'nccl' (got 'mpi')"
    )
    path = tmp_path / "bad.yaml"
    path.write_text("optimizer:\n  lr: -1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["trainer.max_epochs=3"])
    assert str(info.value).startswith(f"{path}: 'optimizer.lr'")


DATA_KEYS = (
    "dataset, root, system_dir, download, val_size, batch_size, eval_batch_size, normalize, image_size, channels, "
    "transforms"
)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.loader=dataloader", f"config: unknown key 'data.loader' (allowed here: {DATA_KEYS})"),
        ("data.num_workers=2", f"config: unknown key 'data.num_workers' (allowed here: {DATA_KEYS})"),
        (
            "early_stopping.metric=val_loss",
            "config: unknown key 'early_stopping.metric' (allowed here: enabled, patience, min_delta)",
        ),
    ],
)
def test_removed_keys_get_the_usual_unknown_key_error(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({}, [override])
    assert str(info.value) == expected


def test_a_file_still_naming_data_loader_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.yaml"
    path.write_text("data:\n  loader: tensor\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: unknown key 'data.loader' (allowed here: {DATA_KEYS})"


def test_optimizer_and_scheduler_take_a_name_and_keyword_arguments(tmp_path: Path) -> None:
    cfg = load_config(
        {
            "optimizer": {"name": "mypkg.opt:Lion", "lr": 0.001, "kwargs": {"betas": [0.9, 0.99]}},
            "scheduler": {"name": "mypkg.sched:warmup", "kwargs": {"epochs": 2}},
        },
        ["optimizer.weight_decay=0.01"],
    )
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.weight_decay) == ("mypkg.opt:Lion", 0.001, 0.01)
    assert cfg.optimizer.kwargs == {"betas": [0.9, 0.99]}
    assert (cfg.scheduler.name, cfg.scheduler.kwargs) == ("mypkg.sched:warmup", {"epochs": 2})
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg
    base = load_config(REPO / "configs" / "base.yaml")
    assert (base.optimizer.name, base.optimizer.momentum, base.optimizer.nesterov, base.optimizer.kwargs) == (
        "sgd",
        0.9,
        True,
        {},
    )
    assert (base.scheduler.name, base.scheduler.min_lr, base.scheduler.step_size, base.scheduler.gamma) == (
        "cosine",
        0.0,
        5,
        0.1,
    )


def test_handler_defaults_are_the_schemas() -> None:
    import inspect

    from fmnist_ignite.config import EarlyStoppingConfig, LoggingConfig
    from fmnist_ignite.handlers import EarlyStopping, MLflow, TensorBoard

    def defaults(cls: type) -> dict[str, object]:
        return {k: p.default for k, p in inspect.signature(cls).parameters.items() if k != "context"}

    assert defaults(EarlyStopping) == {"patience": 3, "min_delta": 0.0}
    assert defaults(EarlyStopping) == {k: EarlyStoppingConfig.default(k) for k in ("patience", "min_delta")}
    assert defaults(TensorBoard) == {"log_every": 50} == {"log_every": LoggingConfig.default("log_every")}
    assert defaults(MLflow) == {"uri": None, "experiment": "fmnist_ignite", "register": None, "parent_run_id": None}
    assert defaults(MLflow) == {
        "uri": LoggingConfig.default("mlflow_uri"),
        "experiment": LoggingConfig.default("mlflow_experiment"),
        "register": LoggingConfig.default("mlflow_register"),
        "parent_run_id": None,
    }


LAUGHS = "model:\n  kwargs:\n    a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"    {b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)


BAD_YAML = {
    "laughs": (
        LAUGHS,
        ":8:8: YAML error: more than 100,000 values once YAML aliases (*name) are expanded; write the values out or "
        "use fewer aliases",
    ),
    "deep": (
        "name: x\nmodel:\n  kwargs: {a: " + "[" * 20_000 + "]" * 20_000 + "}\n",
        ":3:112: YAML error: values nested more than 100 levels deep",
    ),
    "duplicate": (
        "name: x\noptimizer:\n  lr: 0.1\nseed: 1\ntrainer:\n  max_epochs: 2\n\n\noptimizer:\n  lr: 0.2\n",
        ":9:1: YAML error: duplicate key 'optimizer' at lines 2 and 9; keep one",
    ),
    "recursive": ("model:\n  kwargs: &k\n    a: *k\n", ":3:8: YAML error: the alias *k is inside its own value"),
    "huge": ("name: x\n" + "# padding\n" * 110_000, "' is larger than 1 MiB; a config is a short YAML mapping"),
}


@pytest.mark.parametrize("case", BAD_YAML)
def test_hostile_config_files_are_refused_in_one_line(tmp_path: Path, case: str) -> None:
    text, message = BAD_YAML[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    expected = f"config file '{path}{message}" if case == "huge" else f"{path}{message}"
    assert str(info.value) == expected


def test_dev_zero_as_a_config_is_not_read_without_end() -> None:
    with pytest.raises(ConfigError, match=r"^config file '/dev/zero' is larger than 1 MiB; a config is a short YAML"):
        load_config("/dev/zero")


@pytest.mark.parametrize("case", ["deep", "duplicate", "recursive", "huge"])
def test_hostile_config_files_on_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: Callable[..., CLI], case: str
) -> None:
    path = tmp_path / f"{case}.yaml"
    path.write_text(BAD_YAML[case][0])
    monkeypatch.chdir(tmp_path)  # the default output_dir, runs/, would appear here
    code, _, err = cli(str(path))
    assert code == 2
    assert err.count("\n") == 1 and BAD_YAML[case][1] in err
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_alias_bomb_does_not_hang_print_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: Callable[..., CLI]
) -> None:
    path = tmp_path / "laughs.yaml"
    path.write_text(LAUGHS)
    monkeypatch.chdir(tmp_path)
    with time_limit(60):
        code, out, err = cli(str(path), "--print-config")
    assert code == 2 and out == ""
    assert err == f"error: {path}{BAD_YAML['laughs'][1]}\n"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.kwargs={a: 1, a: 2}", "override of 'model.kwargs': duplicate key 'a' at lines 1 and 1; keep one"),
        ("model.kwargs=" + "[" * 5000, "override of 'model.kwargs': values nested more than 100 levels deep"),
        (
            "model.kwargs." + "a." * 200 + "b=1",
            "override of 'model.kwargs.a.a.a.a.a.a.a.a.a.a.a.a.a.a'...: keys nested",
        ),
    ],
)
def test_hostile_overrides_are_refused(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        load_config(None, [override])


def yaml_text(value, duplicate: bool) -> str:
    """YAML flow text for nested dicts/lists/scalars; mappings may say their first key twice."""
    if isinstance(value, dict):
        pairs = [f"{yaml_text(k, duplicate)}: {yaml_text(v, duplicate)}" for k, v in value.items()]
        if duplicate and pairs:
            pairs.append(pairs[0])
        return "{" + ", ".join(pairs) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(yaml_text(v, duplicate) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)  # one line, escapes and all: JSON strings are YAML
    return yaml.safe_dump(value).removesuffix("\n...\n").strip()


SECTIONS = ["name", "seed", "device", "data", "model", "optimizer", "scheduler", "trainer", "handlers", "kwargs", "lr"]


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8), st.sampled_from(SECTIONS)
)


trees = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(SECTIONS) | scalars, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    tree=st.dictionaries(st.sampled_from(SECTIONS), trees, max_size=5), duplicate=st.booleans(), cut=st.integers(0, 400)
)
@example(tree={"name": "x", "optimizer": {"lr": 0.5}}, duplicate=False, cut=0)
@example(tree={"name": "x", "optimizer": {"lr": 0.5}}, duplicate=True, cut=0)
def test_any_yaml_file_gives_a_config_or_a_one_line_config_error(
    tmp_path: Path, tree: dict, duplicate: bool, cut: int
) -> None:
    text = yaml_text(tree, duplicate)
    path = tmp_path / "random.yaml"
    for candidate in (text, text[:cut]):
        path.write_text(candidate)
        has_duplicate = candidate is text and duplicate and bool(tree)
        try:
            config = load_config(path)
        except ConfigError as err:
            assert "\n" not in str(err) and str(err).startswith(str(path))
            assert "duplicate key" in str(err) or not has_duplicate
        else:
            assert isinstance(config, Config) and not has_duplicate


def test_a_string_alias_bomb_is_counted_by_its_expanded_bytes(tmp_path: Path) -> None:
    """Class 4 of issue 19: a 500 kB string aliased 99,000 times is under the 1 MiB and 100,000-value limits,
    and ``--print-config`` would write ~50 GB; its expanded text is counted when the YAML is read.

    (Checked where the file is read, not through ``--print-config``: a regression then fails here
    instead of printing 50 GB into the test's captured output.)
    """
    import time

    path = tmp_path / "bomb.yaml"
    path.write_text("model:\n  kwargs:\n    s: &s " + "x" * 500_000 + "\n    l: [" + ", ".join(["*s"] * 99_000) + "]\n")
    assert path.stat().st_size < 2**20
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert time.monotonic() - start < 30
    assert str(info.value).startswith(f"{path}:4:")
    assert str(info.value).endswith(
        "YAML error: more than 16 MiB of text once YAML aliases (*name) are expanded; write the values out or use "
        "fewer aliases"
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "seed=" + "9" * 5000,
            "error: override of 'seed': an integer of 5,000 digits; no setting takes more than 100\n",
        ),
        (
            "name=" + "n" * 300,
            "error: the overrides (key=value): 'name': a run's name becomes its folder's, which file systems limit: "
            "at most 200 bytes, not 300 (got ",
        ),
        (
            "optimizer.weight_decay=.inf",
            "error: the overrides (key=value): 'optimizer.weight_decay': Input should be a finite number (got inf)\n",
        ),
    ],
)
def test_values_that_gave_a_traceback_or_a_late_error_are_one_line_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, message: str
) -> None:
    """Classes 6 and 7 of issue 19: a 5,000-digit seed, a 300-byte name (ENAMETOOLONG), an infinite weight decay."""
    from fmnist_ignite.app.cli import main

    code = main([str(BASE), f"output_dir={tmp_path / 'runs'}", override, "--print-config"])
    captured = capsys.readouterr()
    assert (code, captured.out) == (2, "")
    assert captured.err.startswith(message) and captured.err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_transforms_are_names_with_keyword_arguments_and_an_empty_mapping_may_be_left_out() -> None:
    config = load_config(
        {"data": {"transforms": [{"RandomCrop": {"size": 28, "padding": 2}}, {"RandomErasing": None}]}}
    )
    assert config.data.transforms == [{"RandomCrop": {"size": 28, "padding": 2}}, {"RandomErasing": {}}]
    assert load_config(config.to_dict()) == config, "the saved config reads back the same"
    assert load_config({}).data.transforms == [] and load_config({}).data.image_size is None


def test_fast_dev_run_clipping_plateau_and_warmup_are_settings_with_their_limits() -> None:
    config = load_config(
        None,
        [
            "trainer.fast_dev_run=true",
            "trainer.grad_clip_norm=0.5",
            "scheduler.name=plateau",
            "scheduler.warmup_epochs=2",
            "scheduler.patience=0",
        ],
    )
    assert (config.trainer.fast_dev_run, config.trainer.grad_clip_norm) == (True, 0.5)
    assert (config.scheduler.name, config.scheduler.warmup_epochs, config.scheduler.patience) == ("plateau", 2, 0)
    for bad in ("trainer.grad_clip_norm=0", "scheduler.warmup_epochs=-1", "scheduler.patience=-1"):
        with pytest.raises(ConfigError, match=bad.partition("=")[0]):
            load_config(None, [bad])
    # The config reference is made from the descriptions: each says what it does.
    fields = {**Config.model_fields["trainer"].annotation.model_fields, **SchedulerConfig.model_fields}
    for name in ("fast_dev_run", "grad_clip_norm", "warmup_epochs", "patience"):
        assert fields[name].description
    assert "`plateau`" in (SchedulerConfig.model_fields["name"].description or "")


@pytest.mark.parametrize("override", ["handlers.0.every=3", "handlers.0=3"])
def test_an_index_into_an_empty_list_says_the_list_is_empty(override: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(BASE, [override])  # its handlers: []
    assert str(caught.value) == (
        f"override {override!r}: 'handlers' is an empty list, with no item to change; set it whole: handlers=[...]"
    )
