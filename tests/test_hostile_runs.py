"""What the inspection commands read from a run directory is untrusted: one line per problem, no traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmnist_ignite import RunDirError, build_experiment, compare_runs, load_config

from .conftest import BASE, run_cli, small_overrides


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, system_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("hostile-runs")
    config = load_config(BASE, [*small_overrides(tmp, system_dir), "trainer.max_epochs=2", "logging.tensorboard=false"])
    experiment = build_experiment(config)
    experiment.run()
    return experiment.run_dir


def _copy(finished: Path, where: Path, name: str) -> Path:
    copy = where / name
    shutil.copytree(finished, copy)
    return copy


@pytest.mark.parametrize(
    ("file", "content", "problem"),
    [
        ("history.json", "{broken", "history.json: not valid JSON"),
        ("history.json", "", "history.json: empty; the run wrote it whole, so it was changed since"),
        ("history.json", "{}", "history.json: expected a JSON list of epoch records, got dict"),
        (
            "history.json",
            '[{"epoch": 1, "val_accuracy": 0.5}]',
            "history.json: record 0 (epoch 1) lacks the number 'val_loss'",
        ),
        ("history.json", '[{"val_loss": 1}]', "history.json: record 0 is not an epoch record"),
        ("metrics.json", "", "metrics.json: empty"),
        ("metrics.json", "[1, 2]", "metrics.json: expected a JSON object, got list"),
        ("metrics.json", '{"test_accuracy": "high"}', "metrics.json: 'test_accuracy' must be a number"),
        ("config.yaml", "name: [", "config.yaml"),
    ],
)
def test_compare_answers_the_good_runs_and_names_the_bad_file(
    finished: Path, tmp_path: Path, file: str, content: str, problem: str
) -> None:
    good = _copy(finished, tmp_path, "good")
    bad = _copy(finished, tmp_path, "bad")
    (bad / file).write_text(content)
    result = run_cli("compare", str(good), str(bad))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(bad) in errors[0] and problem in errors[0]
    assert "Traceback" not in result.stderr
    assert result.stdout.splitlines()[1].split()[0] == str(good), "the readable run is still compared"


def test_compare_with_only_bad_runs_is_one_line(finished: Path, tmp_path: Path) -> None:
    bad = _copy(finished, tmp_path, "bad")
    (bad / "history.json").write_text("[")
    result = run_cli("compare", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {bad / 'history.json'}: not valid JSON (Expecting value: "
        "line 1 column 2 (char 1)); the run wrote it whole, so it was changed since"
    ]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    history=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.sampled_from(["epoch", "val_loss", "val_accuracy", "x"]), inner, max_size=4)
        ),
        max_leaves=12,
    ),
    metrics=st.dictionaries(
        st.sampled_from(["test_accuracy", "best_value", "monitor", "best_epoch"]),
        st.none() | st.floats() | st.text(max_size=3) | st.integers(),
        max_size=4,
    ),
)
def test_any_history_and_metrics_are_compared_or_refused_in_one_line(
    finished: Path, tmp_path_factory: pytest.TempPathFactory, history: object, metrics: object
) -> None:
    run = _copy(finished, tmp_path_factory.mktemp("fuzz"), "run")
    (run / "history.json").write_text(json.dumps(history))
    (run / "metrics.json").write_text(json.dumps(metrics))
    try:
        result = compare_runs([run])
    except RunDirError as err:
        assert "\n" not in str(err) and str(run) in str(err)
        return
    assert result["runs"][0]["run"] == str(run)
