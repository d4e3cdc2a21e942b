"""The sweep's study on a real SQLite storage, in this process: samplers and pruners by name, the study's
definition, the grid's order, which trial is left to start, the heartbeat's retry, and the turn's lock; on a
real PostgreSQL server, the lock in the database that machines sharing a study take turns with."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import optuna
import pytest

from fmnist_ignite import ConfigError
from fmnist_ignite.rundir import SweepDir, exclusive_lock
from fmnist_ignite.sweep.space import SweepPlan, grid_points, parse_arguments
from fmnist_ignite.sweep.study import (
    HEARTBEAT_VARIABLE,
    Heartbeat,
    Turn,
    asking,
    make,
    open_study,
    retry_failed,
    startable,
    to_start,
)
from fmnist_ignite.sweep.trial import suggest

COMPLETE, FAIL = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL


def plan_of(
    tmp_path: Path, *arguments: str, trials: int | None = None, prune: str = "none", storage: str | None = None
) -> SweepPlan:
    _, params = parse_arguments(arguments)
    storage = storage or f"sqlite:///{tmp_path / 'study.db'}"
    plan = SweepPlan(None, (), tuple(params), str(tmp_path), storage, "s", "val_accuracy", "maximize", trials)
    return replace(plan, sampler="random", prune=prune)


def add(study: optuna.Study, plan: SweepPlan, values: dict, state: optuna.trial.TrialState) -> None:
    distributions = {p.key: optuna.distributions.CategoricalDistribution(p.values) for p in plan.params}
    study.add_trial(
        optuna.trial.create_trial(
            params=values, distributions=distributions, state=state, value=0.5 if state == COMPLETE else None
        )
    )


def test_samplers_and_pruners_are_optunas_by_short_name() -> None:
    assert isinstance(make("sampler", "tpe"), optuna.samplers.TPESampler)
    assert isinstance(make("sampler", "qmc"), optuna.samplers.QMCSampler)
    assert isinstance(make("prune", "median"), optuna.pruners.MedianPruner)
    assert isinstance(make("prune", "none"), optuna.pruners.NopPruner)
    with pytest.raises(ConfigError, match=r"^--sampler 'grid': choose one of .*\brandom\b.*\btpe$"):
        make("sampler", "grid")  # needs its search space: the sweep uses it for grids itself
    with pytest.raises(ConfigError, match=r"^--prune 'mean': choose one of hyperband, median, none, "):
        make("prune", "mean")


def test_a_grid_is_handed_out_in_the_order_given(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, "optimizer.lr=0.3,0.1,0.2", "seed=2,1")
    seen: list[dict] = []
    study = open_study(plan)
    study.optimize(lambda t: seen.append({p.key: suggest(t, p) for p in plan.params}) or 0.0, n_trials=6)
    assert seen == grid_points(plan.params)
    assert not startable(study, plan)  # what stops the sweep at the end of its grid (not GridSampler's check)


def test_a_study_started_with_other_values_is_refused(tmp_path: Path) -> None:
    open_study(plan_of(tmp_path, "seed=1,2"))
    with pytest.raises(ConfigError) as caught:
        open_study(plan_of(tmp_path, "seed=1,3", prune="median"))
    assert str(caught.value) == (
        f"study 's' in sqlite:///{tmp_path / 'study.db'} was started with other settings (seed=1,2, monitor "
        "val_accuracy (maximize), --prune none); run that command again, or choose another --name"
    )


def test_a_failed_grid_point_is_queued_again_once_per_start(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, "seed=1,2")
    study = open_study(plan)
    assert startable(study, plan)
    add(study, plan, {"seed": "1"}, COMPLETE)
    add(study, plan, {"seed": "2"}, FAIL)
    assert not startable(study, plan), "a point that failed in this start is not tried again in it"
    retry_failed(study, plan)
    retry_failed(study, plan)  # a second process starting now: it is queued already
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [(t.system_attrs["fixed_params"], t.user_attrs) for t in waiting] == [({"seed": "2"}, {"again": 1})]
    assert startable(study, plan)


def test_the_trials_left_to_start_are_counted_and_the_turn_knows_how_many(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, "seed=1,2,3,4")
    study = open_study(plan)
    assert to_start(study, plan) == 4
    with asking(study):  # two trials as the sweep runs them: one complete, one failed
        for state in (COMPLETE, FAIL):
            trial = study.ask()
            suggest(trial, plan.params[0])
            study.tell(trial, 0.5 if state == COMPLETE else None, state=state)
    assert to_start(study, plan) == 2, "points 3 and 4; a failed point waits for the next start"
    retry_failed(study, plan)
    assert to_start(study, plan) == 3, "and point 2, queued again"
    turn = Turn(plan, study)
    assert turn.take() and turn.left == 3
    with asking(study):
        asked = [study.ask() for _ in range(turn.left)]  # what a fused group asks for under the turn
    turn.release()
    assert sorted(suggest(t, plan.params[0]) for t in asked) == ["2", "3", "4"], "each point once"
    assert to_start(study, plan) == 0 and not turn.take()
    (tmp_path / "sampled").mkdir()
    sampled = replace(plan_of(tmp_path / "sampled", "seed=choice(1,2,3)", trials=5), study="sampled")
    study = open_study(sampled)
    add(study, sampled, {"seed": "1"}, COMPLETE)
    add(study, sampled, {"seed": "2"}, FAIL)
    assert to_start(study, sampled) == 3
    retry_failed(study, sampled)
    assert to_start(study, sampled) == 4, "the queued one does not count against the budget"


def test_a_grid_point_left_without_values_by_a_stopped_process_is_queued_again_and_run_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plan = plan_of(tmp_path, "seed=1,2,3")
    study = open_study(plan)
    with asking(study):
        study.ask()  # a process stopped here, before its values: the grid's first point, running for ever
    turn = Turn(plan, study)
    with caplog.at_level("INFO", logger="fmnist_ignite"):
        assert turn.take() and turn.left == 3
    assert "Trial 0 was left without its values by a process that stopped: they are queued again" in caplog.text
    with asking(study):
        asked = [study.ask() for _ in range(turn.left)]
    turn.release()
    assert sorted(suggest(t, plan.params[0]) for t in asked) == ["1", "2", "3"], "each point once"
    assert [t.state.name for t in study.trials][:1] == ["FAIL"] and to_start(study, plan) == 0


def test_one_thread_beats_for_every_trial_of_a_group_and_an_error_does_not_stop_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(HEARTBEAT_VARIABLE, "1")
    plan = plan_of(tmp_path, "seed=1,2,3")
    study = open_study(plan)
    storage, beats = study._storage, []
    record = storage.record_heartbeat

    def flaky(trial_id: int) -> None:
        beats.append(trial_id)
        if len(beats) == 2:
            raise RuntimeError("database is locked\nmore")
        record(trial_id)

    monkeypatch.setattr(storage, "record_heartbeat", flaky)
    threads = threading.active_count()
    with caplog.at_level("WARNING", logger="fmnist_ignite"), Heartbeat(study) as beating:
        assert threading.active_count() == threads + 1, "one thread for the group"
        with asking(study):
            trials = [study.ask() for _ in range(3)]
        ids = [t._trial_id for t in trials]
        for trial in trials:
            beating.add(trial)
        assert beats == ids, "each trial's first beat as it is added"
        deadline = time.monotonic() + 30
        while len(beats) < 6 and time.monotonic() < deadline:  # the next ones a second later, from the thread
            time.sleep(0.05)
    assert threading.active_count() == threads, "gone at the end of the block"
    assert beats[:6] == ids + ids, "every trial again, the one whose beat failed included"
    warning = f"Trial {trials[1].number}: its heartbeat could not be recorded (database is locked); trying again in 1 s"
    assert warning in caplog.text


def test_trials_run_again_do_not_count_against_the_budget(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, "seed=choice(1,2,3)", trials=2)
    study = open_study(plan)
    add(study, plan, {"seed": "1"}, COMPLETE)
    assert startable(study, plan)
    add(study, plan, {"seed": "2"}, FAIL)
    assert not startable(study, plan)
    retry_failed(study, plan)
    study.optimize(lambda t: [suggest(t, p) for p in plan.params] and 0.7, n_trials=1)  # runs the queued one
    assert [t.state for t in study.trials] == [COMPLETE, FAIL, COMPLETE]
    assert not startable(study, plan), "two trials of the budget, and one run again"


def test_a_trial_whose_heartbeat_stopped_is_failed_and_queued_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(HEARTBEAT_VARIABLE, "1")  # taken for dead after 3 s
    plan = plan_of(tmp_path, "seed=1,2")
    study = open_study(plan)
    with pytest.warns(UserWarning, match="Heartbeat"):
        trial = study.ask()  # as a process killed mid-trial leaves it: running, with its values
    suggest(trial, plan.params[0])
    study._storage.record_heartbeat(trial._trial_id)
    add(study, plan, {"seed": "2"}, COMPLETE)
    assert not startable(study, plan)
    time.sleep(4.5)  # SQLite's clock counts whole seconds
    with caplog.at_level("INFO", logger="fmnist_ignite"):
        assert startable(study, plan)
    assert "Trial 0 sent no heartbeat for a while (its process is gone): it will be run again" in caplog.text
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE", "WAITING"]
    assert study.trials[2].params == {"seed": "1"}


def test_the_turn_holds_the_sweeps_lock_until_the_trial_has_its_values(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, "seed=1,2")
    turn = Turn(plan, open_study(plan))
    lock = SweepDir(plan.sweep_dir).claims_lock
    assert turn.take()
    with pytest.raises(BlockingIOError), exclusive_lock(lock, wait=False):
        pass  # another process (another open file, here) cannot look meanwhile
    turn.release()
    with exclusive_lock(lock, wait=False):
        pass
    add(turn.study, plan, {"seed": "1"}, COMPLETE)
    add(turn.study, plan, {"seed": "2"}, COMPLETE)
    assert not turn.take(), "nothing left: the lock is let go at once"
    with exclusive_lock(lock, wait=False):
        pass


def test_on_postgresql_machines_with_folders_of_their_own_take_turns_through_the_database(
    tmp_path: Path, postgres: str
) -> None:
    plans = [plan_of(tmp_path / machine, "seed=1,2", storage=postgres) for machine in ("a", "b")]
    for plan in plans:
        Path(plan.sweep_dir).mkdir()
    first, second = (Turn(plan, open_study(plan)) for plan in plans)
    assert first.take()
    taken = threading.Event()
    waiting = threading.Thread(target=lambda: second.take() and taken.set())
    waiting.start()
    try:
        assert not taken.wait(1.0), "the other machine waits while this one starts a trial"
        with pytest.warns(UserWarning, match="Heartbeat"):
            trial = first.study.ask()
        suggest(trial, plans[0].params[0])
        first.release()
        assert taken.wait(30), "and goes on once the trial has its values"
    finally:
        first.release()
        waiting.join(30)
    second.release()
    add(first.study, plans[0], {"seed": "2"}, COMPLETE)
    assert not second.take(), "a point running on the other machine is not handed out again"
