"""What each process of a data-parallel run needs to know, seen from a single process (the gloo runs are in
test_distributed.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fmnist_ignite import ConfigError
from fmnist_ignite.interrupt import StopRequest
from fmnist_ignite.parallel import (
    EpochConsensus,
    agree_on_run_dir,
    barrier,
    check_batch,
    in_parallel_context,
    is_writer,
    launched_by_torchrun,
    lost_contact,
    machines,
    rank,
    world_size,
    wrap_model,
)


def test_a_single_process_is_rank_0_of_1_and_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert (rank(), world_size(), is_writer(), in_parallel_context(), launched_by_torchrun()) == (
        0,
        1,
        True,
        False,
        False,
    )
    assert agree_on_run_dir(Path("runs/base-2")) == Path("runs/base-2")
    barrier()  # nothing to wait for


def test_torchrun_is_recognised_by_its_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "RANK": "1",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "x",
        "MASTER_PORT": "1",
    }.items():
        monkeypatch.setenv(name, value)
    assert launched_by_torchrun()
    monkeypatch.delenv("MASTER_PORT")
    assert not launched_by_torchrun()


@pytest.mark.parametrize(
    ("batch", "processes", "nearest"),
    [(128, 3, "126 or 129"), (1, 2, "2"), (65, 2, "64 or 66")],
)
def test_a_batch_that_does_not_split_evenly_names_the_nearest_that_do(batch: int, processes: int, nearest: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_batch(batch, processes)
    assert str(info.value) == (
        f"data.batch_size={batch} does not split evenly between {processes} processes "
        f"(it is the effective batch, shared by all of them); use data.batch_size={nearest}"
    )
    check_batch(batch - batch % processes or processes, processes)


def test_one_process_trains_the_model_itself_and_agrees_on_nothing() -> None:
    model = torch.nn.Linear(4, 2)
    assert wrap_model(model, torch.device("cpu")) is model
    from ignite.engine import Engine

    trainer = Engine(lambda engine, batch: None)
    terminate = trainer.terminate
    EpochConsensus(StopRequest()).attach(trainer)
    assert trainer.terminate == terminate  # a stop is not deferred to an epoch's end without other processes


def test_a_lost_process_is_told_from_other_errors_by_torch_distributed_and_gloo(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ignite.distributed as idist

    gloo = RuntimeError(
        "[/x/gloo/transport/tcp/pair.cc:561] Connection closed by peer [10.0.0.2]:41234. This is typically caused "
        "by a remote worker crashing. Check the logs of the remote worker before reporting an error."
    )
    assert lost_contact(gloo) is None, "one process has no other to lose"
    monkeypatch.setattr(idist, "get_world_size", lambda: 2)
    assert lost_contact(gloo) == "Connection closed by peer [10.0.0.2]:41234"
    reset = RuntimeError("[../pair.cc:534] Read error [10.0.0.2]:5: Connection reset by peer")
    assert lost_contact(reset) == "Read error [10.0.0.2]:5: Connection reset by peer"
    assert lost_contact(torch.distributed.DistNetworkError("timed out joining")) == "timed out joining"
    assert lost_contact(torch.distributed.DistBackendError("NCCL error: invalid usage")) is None
    assert lost_contact(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None


def test_machines_are_the_processes_over_those_on_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    import ignite.distributed as idist

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert machines() == 1
    monkeypatch.setattr(idist, "get_world_size", lambda: 8)
    assert machines() == 1, "processes started here: all on this machine"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert machines() == 2
