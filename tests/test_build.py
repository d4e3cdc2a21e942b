"""build.py: a new run from another run's weights (init_from); the data-parallel layout a run records."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from fmnist_ignite import Config, ConfigError, RunDirError, build_experiment
from fmnist_ignite.build import record_processes

from .conftest import BASE, CLI


@pytest.mark.parametrize("which", ["", ":best", ":last"])
def test_init_from_starts_a_new_run_from_another_runs_weights(
    make_config: Callable[..., Config], cli: Callable[..., CLI], which: str
) -> None:
    source = make_config("trainer.max_epochs=2", "name=source")
    build_experiment(source).run()
    files = {"": "model.pt", ":best": "checkpoints/best_model.pt", ":last": "checkpoints/checkpoint_2.pt"}
    saved = torch.load(source.run_dir / files[which], weights_only=True)
    expected = saved.get("model", saved)

    fork = build_experiment(make_config("name=fork", "optimizer.lr=0.001", f"init_from={source.run_dir}{which}"))
    for key, value in fork.model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    fork.run()
    assert yaml.safe_load((fork.run_dir / "config.yaml").read_text())["init_from"] == f"{source.run_dir}{which}"

    code, out, _ = cli(
        str(BASE), f"output_dir={source.output_dir}", "--init-from", f"{source.run_dir}{which}", "--print-config"
    )
    assert code == 0 and yaml.safe_load(out)["init_from"] == f"{source.run_dir}{which}"


def test_init_from_a_folder_that_is_no_run_is_refused(make_config: Callable[..., Config], tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match=f"init_from: run directory {tmp_path / 'nope'} does not exist"):
        build_experiment(make_config(f"init_from={tmp_path / 'nope'}:best"))


@pytest.mark.parametrize(
    ("trained", "resumed", "message"),
    [
        ((2, 2), (2, 1), "this run trained on 1 machine × 2 processes and is resumed on 2 machines × 1 process"),
        ((2, 1), (4, 4), "this run trained on 2 machines × 1 process and is resumed on 1 machine × 4 processes"),
    ],
)
def test_a_run_records_its_layout_and_resumes_only_in_it(
    make_config: Callable[..., Config],
    monkeypatch: pytest.MonkeyPatch,
    trained: tuple[int, int],
    resumed: tuple[int, int],
    message: str,
) -> None:
    import ignite.distributed as idist

    def processes(world: int, here: int) -> None:
        monkeypatch.setattr(idist, "get_world_size", lambda: world)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(here))

    processes(*trained)
    recorded = record_processes(make_config("distributed.backend=gloo"), new_run=True)
    each, nnodes = trained[1], trained[0] // trained[1]
    assert (recorded.distributed.nproc_per_node, recorded.distributed.nnodes) == (each, nnodes)
    assert record_processes(recorded, new_run=False) == recorded
    processes(*resumed)
    with pytest.raises(ConfigError) as info:
        record_processes(recorded, new_run=False)
    assert str(info.value) == (
        f"{message}: it would not continue exactly; resume it in as many (torchrun --nnodes {nnodes} "
        f"--nproc_per_node {each})"
    )
