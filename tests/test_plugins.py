"""A plugin in a separate installed package, used from YAML by the names its entry points register.

The package is installed once (pip --target); each test puts that folder on this process's path
(its entry points are read from there on each lookup) and takes it off again.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from fmnist_ignite import HANDLERS, ConfigError, Registry
from fmnist_ignite.app.cli import plugin_listing
from fmnist_ignite.fileio import safe_torch_load

from .conftest import CLI, REPO

PLUGIN = REPO / "examples" / "fmnist_ignite_example_plugin"


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin package, installed (with its entry points) into a folder of its own."""
    site = tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("plugin-source") / PLUGIN.name
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))  # keep the repo clean
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(site),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    return site


def test_list_plugins_shows_built_ins_and_installed_entry_points(
    plugin_site: Path, importable: Callable[[Path], None], cli: Callable[..., CLI]
) -> None:
    importable(plugin_site)
    code, out, err = cli("--list-plugins")
    assert code == 0, err
    lines = out.splitlines()
    assert "handlers (handlers[].target; entry-point group fmnist_ignite.handlers):" in lines
    assert any(line.split()[:2] == ["early_stopping", "built-in"] for line in lines)
    assert "  epoch_log       fmnist-ignite-example-plugin 0.1.0 (fmnist_ignite_example_plugin:EpochLog)" in lines
    assert "  mlp       fmnist-ignite-example-plugin 0.1.0 (fmnist_ignite_example_plugin:build_mlp)" in lines
    assert any(line.split()[0] == "prototypes" for line in lines if line.startswith("  "))


def test_plugin_names_from_yaml_train_and_resume(
    tmp_path: Path, plugin_site: Path, importable: Callable[[Path], None], cli: Callable[..., CLI]
) -> None:
    importable(plugin_site)
    config = str(REPO / "examples" / "plugin.yaml")
    stop = (
        "handlers=[{target: epoch_log, kwargs: {filename: epochs.txt}}, "
        "{target: 'tests.plugins:StopOnce', event: EPOCH_STARTED, kwargs: {epoch: 1}}]"
    )
    common = (f"output_dir={tmp_path}", "logging.progress_bar=false", "early_stopping.enabled=false")
    code, _, err = cli(config, *common, stop)
    assert code == 130, err
    run = tmp_path / "plugin-demo"
    code, _, err = cli("--resume", str(run))
    assert code == 0, err
    lines = (run / "epochs.txt").read_text().splitlines()
    assert [line.split()[1] for line in lines] == ["1", "2", "3"]
    assert [line.split()[-1] for line in lines] == ["1)", "2)", "3)"], "the plugin's state resumed"
    weights = safe_torch_load(run / "model.pt")
    assert weights["1.weight"].shape == (32, 784), "the mlp plugin model, with its kwargs"
    assert weights["3.weight"].shape == (10, 32)


def test_plugin_kwargs_are_checked_at_start_up(
    tmp_path: Path, plugin_site: Path, importable: Callable[[Path], None], cli: Callable[..., CLI]
) -> None:
    importable(plugin_site)
    code, _, err = cli(
        str(REPO / "examples" / "plugin.yaml"),
        f"output_dir={tmp_path}",
        "handlers=[{target: progress}, {target: epoch_log, kwargs: {colour: red}}]",
    )
    assert code == 2
    assert "error: handlers[1].kwargs: epoch_log got an unexpected keyword argument 'colour'" in err
    assert not (tmp_path / "plugin-demo").exists()


def test_without_the_package_its_names_are_unknown(tmp_path: Path, cli: Callable[..., CLI]) -> None:
    code, _, err = cli(str(REPO / "examples" / "plugin.yaml"), f"output_dir={tmp_path}")
    assert code == 2
    assert "unknown dataset 'prototypes'" in err


def test_registry_resolution_order_and_errors() -> None:
    registry = Registry("widget", "fmnist_ignite.widgets-for-tests", "fmnist_ignite.models")

    @registry.register("spanner")
    def spanner() -> str:
        return "built-in"

    assert registry.get("spanner") is spanner
    assert registry.get("tests.plugins:RecordMetrics").__name__ == "RecordMetrics"
    with pytest.raises(ConfigError, match="unknown widget 'hammer'; choose one of spanner"):
        registry.get("hammer")
    with pytest.raises(ConfigError, match="unknown widget 'spaner' \\(did you mean 'spanner'\\?\\); choose one of"):
        registry.get("spaner")
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("spanner")(lambda: None)
    assert {"early_stopping", "mlflow", "progress", "tensorboard"} <= set(HANDLERS.names())
    assert "built-in (fmnist_ignite.handlers.early_stopping:EarlyStopping)" in plugin_listing()
