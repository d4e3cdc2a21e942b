"""resume.py: what a resume may change (one list, one message, the same words in the command line's help), extending
a finished run, and resuming after a kill."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from fmnist_ignite import Config, ConfigError, RunDirError, build_experiment, load_config, resume_experiment
from fmnist_ignite.resume import (
    CHANGEABLE_ON_RESUME,
    refuse_if_finished,
    resume_changes,
    resume_config,
    what_may_change,
)

from .conftest import BASE, CLI, REPO, values
from .helpers import handler_entry, read_history, start_cli, wait_for

REFUSED = (
    "--resume cannot change {}: the run would no longer continue exactly; a resume may change only "
    "trainer.max_epochs, early_stopping.patience and logging.*; to start a new run from this one's weights, use "
    "--init-from RUN_DIR with a config"
)


def test_what_may_change_in_words() -> None:
    assert CHANGEABLE_ON_RESUME == ("trainer.max_epochs", "early_stopping.patience", "logging.")
    assert what_may_change() == "trainer.max_epochs, early_stopping.patience and logging.*"
    assert what_may_change("``") == "``trainer.max_epochs``, ``early_stopping.patience`` and ``logging.*``"


def test_allowed_changes_are_applied_and_reported() -> None:
    saved = load_config(REPO / "configs" / "base.yaml")
    config, changes = resume_changes(
        saved, ["trainer.max_epochs=20", "early_stopping.patience=5", "logging.tensorboard=false", f"seed={saved.seed}"]
    )
    assert changes == {"trainer.max_epochs": 20, "early_stopping.patience": 5, "logging.tensorboard": False}
    assert (config.trainer.max_epochs, config.early_stopping.patience, config.logging.tensorboard) == (20, 5, False)
    assert resume_changes(saved, []) == (saved, {})


@pytest.mark.parametrize(
    ("overrides", "refused"),
    [
        (["optimizer.lr=0.5", "seed=3", "trainer.max_epochs=3"], "optimizer.lr, seed"),
        (["data.batch_size=7"], "data.batch_size"),
        (["optimizer.kwargs.betas=[0.8, 0.9]"], "optimizer.kwargs.betas"),
        (["scheduler.name=step"], "scheduler.name"),
        (["early_stopping.min_delta=0.1"], "early_stopping.min_delta"),
    ],
)
def test_other_changes_are_refused_with_the_list_of_what_may_change(overrides: list[str], refused: str) -> None:
    with pytest.raises(ConfigError) as info:
        resume_changes(
            load_config(REPO / "configs" / "base.yaml", ["optimizer.kwargs={betas: [0.9, 0.99]}"]), overrides
        )
    assert str(info.value) == REFUSED.format(refused)


def test_a_finished_run_resumes_only_to_train_longer(make_config: Callable[..., Config]) -> None:
    cfg = make_config("trainer.max_epochs=1", "early_stopping.enabled=false")
    experiment = build_experiment(cfg)
    experiment.run()
    config, changes = resume_config(cfg.run_dir)
    assert changes == {} and config.trainer.max_epochs == 1
    with pytest.raises(RunDirError) as info:
        refuse_if_finished(experiment.rundir, config, changes)
    assert str(info.value) == (
        f"the run in {experiment.rundir} has finished (metrics.json exists); to train it longer, resume it with "
        f"trainer.max_epochs=N above 1, or start a new run from its weights with --init-from {experiment.rundir}"
    )
    config, changes = resume_config(cfg.run_dir, ["trainer.max_epochs=2"])
    refuse_if_finished(experiment.rundir, config, changes)
    assert changes == {"trainer.max_epochs": 2}


def test_the_words_come_without_torch() -> None:
    # The command line's --help spells them with what_may_change, and must not wait for torch.
    code = (
        "import sys; from fmnist_ignite.resume import what_may_change; what_may_change(); print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "False"


def cosine_lr(iteration: int, total: int, start: float = 0.01, end: float = 0.0) -> float:
    """Ignite's cosine annealing after ``iteration`` steps of ``total`` (the rate of the last step)."""
    return end + (start - end) / 2 * (1 + math.cos(math.pi * (iteration - 1) / total))


def test_extending_a_finished_run_grows_its_history_and_rewrites_its_results(
    make_config: Callable[..., Config],
) -> None:
    cfg = make_config("trainer.max_epochs=2", "early_stopping.enabled=false")
    first = build_experiment(cfg)
    first.run()
    steps = len(first.loaders["train"])
    run = first.run_dir
    before = json.loads((run / "history.json").read_text())
    assert [r["lr"] for r in before] == pytest.approx([cosine_lr(e * steps, 2 * steps) for e in (1, 2)])
    picture = (run / "history.png").read_bytes()

    with pytest.raises(RunDirError, match="has finished .* resume it with trainer.max_epochs=N above 2"):
        resume_experiment(run)
    extended = resume_experiment(run, overrides=["trainer.max_epochs=4"])
    metrics = extended.run()

    history = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert history[:2] == before, "the epochs already trained are kept as they were"
    # The cosine is rebuilt over the new total: from iteration 2 * steps on, it follows a cosine over 4 epochs.
    assert [r["lr"] for r in history[2:]] == pytest.approx([cosine_lr(e * steps, 4 * steps) for e in (3, 4)])
    assert json.loads((run / "metrics.json").read_text()) == metrics and metrics["epochs_trained"] == 4
    assert (run / "history.png").read_bytes() != picture
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["max_epochs"] == 4
    assert [p.name for p in (run / "checkpoints").glob("checkpoint_*.pt")] != []


def test_a_run_ended_by_early_stopping_goes_on_only_with_more_patience(make_config: Callable[..., Config]) -> None:
    # From the end of epoch 2 on, the weights are scrambled: epoch 3 is the first without improvement.
    sabotage = "handlers=[{target: 'tests.plugins:Sabotage', kwargs: {start: 2}}]"
    cfg = make_config("trainer.max_epochs=6", "early_stopping.patience=1", sabotage)
    build_experiment(cfg).run()

    def epochs() -> int:
        return len(json.loads((cfg.run_dir / "history.json").read_text()))

    assert epochs() == 3
    resume_experiment(cfg.run_dir, overrides=["trainer.max_epochs=8"]).run()
    assert epochs() == 3, "its counter has reached the patience: early stopping stops it again at once"
    resume_experiment(cfg.run_dir, overrides=["early_stopping.patience=3"]).run()
    assert epochs() == 5, "two more epochs without improvement, as with patience 3 from the start"


def test_a_resume_refuses_changes_that_break_exactness_and_lists_what_may_change(
    make_config: Callable[..., Config], cli: Callable[..., CLI]
) -> None:
    cfg = make_config("trainer.max_epochs=1")
    build_experiment(cfg).run()
    code, out, err = cli("--resume", str(cfg.run_dir), "trainer.max_epochs=3", "optimizer.lr=0.5", "seed=3")
    assert code == 2 and out == ""
    assert err == (
        "error: --resume cannot change optimizer.lr, seed: the run would no longer continue exactly; a resume may "
        "change only trainer.max_epochs, early_stopping.patience and logging.*; to start a new run from this "
        "one's weights, use --init-from RUN_DIR with a config\n"
    )
    code, _, err = cli("--resume", str(cfg.run_dir), str(BASE))
    assert code == 2 and "--resume takes the run directory and key=value changes" in err
    with pytest.raises(ConfigError, match="cannot change data.batch_size"):
        resume_experiment(cfg.run_dir, overrides=["data.batch_size=7"])
    code, out, _ = cli("--resume", str(cfg.run_dir), "trainer.max_epochs=3", "--print-config")
    assert code == 0 and yaml.safe_load(out)["trainer"]["max_epochs"] == 3


@pytest.mark.parametrize("where", ["train", "validation", "checkpoint", "history"])
def test_kill_9_anywhere_then_resume_gives_the_uninterrupted_history(
    tmp_path: Path, small: list[str], reference: list[tuple], cli: Callable[..., CLI], where: str
) -> None:
    # A real process, killed with SIGKILL at the fault point; the second process and the resume run here.
    marker = tmp_path / "frozen"
    stall = handler_entry("Stall", "EPOCH_COMPLETED", f"where: {where}, epoch: 2, marker: '{marker}'")
    process = start_cli(BASE, *small, "early_stopping.enabled=false", stall)
    wait_for(marker, process)
    run = tmp_path / "runs" / "small"

    if where == "train":  # while it holds the run, a second process is refused
        code, _, err = cli("--resume", str(run))
        assert code == 2
        assert f"{run} is in use by another training process" in err

    process.send_signal(signal.SIGKILL)
    process.wait()
    assert [r["epoch"] for r in read_history(run)] == ([1, 2] if where == "checkpoint" else [1])
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("checkpoint_"))
    assert checkpoints == ["checkpoint_1.pt"], "no partial file under a checkpoint's name"

    code, out, err = cli("--resume", str(run))
    assert code == 0, err
    assert out.startswith(f"Resuming {run} from checkpoint_1.pt (epoch 1)\n")
    assert values(read_history(run)) == reference
    leftovers = [p.name for p in [*run.iterdir(), *(run / "checkpoints").iterdir()] if "tmp" in p.name]
    assert leftovers == []


def test_a_run_record_that_drifted_from_its_checkpoints_is_refused_naming_the_file_and_keys(
    make_config: Callable[..., Config], cli: Callable[..., CLI]
) -> None:
    """Class 3 of issue 19: each checkpoint knows its config and epoch; a resume compares them with the files."""
    import shutil

    import yaml

    from fmnist_ignite import build_experiment

    cfg = make_config("trainer.max_epochs=2", "seed=7", "logging.tensorboard=false")
    build_experiment(cfg).run()
    run = cfg.run_dir
    pristine = run.parent / "pristine"
    shutil.copytree(run, pristine)
    config = run / "config.yaml"

    def refused(*changes: str) -> str:
        files = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
        code, out, err = cli("--resume", str(run), *changes)
        assert (code, out) == (2, "") and err.count("\n") == 1, err
        after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
        assert after == files, "nothing written, nothing removed"
        return err

    edited = yaml.safe_load(config.read_text())
    edited["optimizer"]["lr"] = 0.5
    config.write_text(yaml.safe_dump(edited))
    err = refused("trainer.max_epochs=3")
    assert err.startswith(f"error: {config} does not match the config checkpoint_2.pt was trained with (optimizer.lr: ")
    assert "0.5 now" in err

    truncated = {k: v for k, v in yaml.safe_load((pristine / "config.yaml").read_text()).items() if k != "seed"}
    config.write_text(yaml.safe_dump(truncated))
    err = refused("trainer.max_epochs=3")
    assert f"(seed: 7 trained, {Config().seed} now)" in err

    shutil.copy(pristine / "config.yaml", config)
    (run / "checkpoints" / "checkpoint_2.pt").unlink()
    (run / "checkpoints" / "checkpoint_1.pt").rename(run / "checkpoints" / "checkpoint_9.pt")
    err = refused("trainer.max_epochs=12")
    assert err == (
        f"error: {run / 'checkpoints' / 'checkpoint_9.pt'} holds the training state after epoch 1, not 9 as its name "
        "says: it was renamed; name it checkpoint_1.pt again (or move it out of the run)\n"
    )

    shutil.rmtree(run)
    shutil.copytree(pristine, run)
    hand = yaml.safe_load(config.read_text())
    hand["early_stopping"]["patience"] = 9  # what --resume key=value may change goes through that door
    config.write_text(yaml.safe_dump(hand))
    code, out, err = cli("--resume", str(run), "trainer.max_epochs=3")
    assert code == 0, err
    assert out.startswith(f"Resuming {run} from checkpoint_2.pt (epoch 2), with trainer.max_epochs=3")
