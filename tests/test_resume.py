"""What a resume may change: one list, one message, the same words in the command line's help."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

from fmnist_ignite import Config, ConfigError, RunDirError, build_experiment, load_config
from fmnist_ignite.resume import (
    CHANGEABLE_ON_RESUME,
    refuse_if_finished,
    resume_changes,
    resume_config,
    what_may_change,
)

from .conftest import REPO

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


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from fmnist_ignite.app.cli import main

    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_run_record_that_drifted_from_its_checkpoints_is_refused_naming_the_file_and_keys(
    make_config: Callable[..., Config], capsys: pytest.CaptureFixture[str]
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
        code, out, err = _cli(capsys, "--resume", str(run), *changes)
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
    code, out, err = _cli(capsys, "--resume", str(run), "trainer.max_epochs=3")
    assert code == 0, err
    assert out.startswith(f"Resuming {run} from checkpoint_2.pt (epoch 2), with trainer.max_epochs=3")
