"""Fused trials: trained together, each equal to its standalone run, with the same files."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
import torch

from fmnist_ignite import Config, build_experiment
from fmnist_ignite.data import load_data
from fmnist_ignite.engine import EpochLoss, TrainStep
from fmnist_ignite.resume import resume_experiment
from fmnist_ignite.sweep.fused import FusedGroup, FusedWeights, group_key, plain_sgd, unfusable
from fmnist_ignite.sweep.trial import ReportToTrial

pytestmark = pytest.mark.usefixtures("torch_one_thread")  # trials side by side in one process, as a sweep runs them


def standalone(config: Config) -> tuple[list[dict], dict]:
    experiment = build_experiment(config)
    metrics = experiment.run()
    return experiment.history, metrics


def fused(configs: list[Config]) -> tuple[list[Any], dict[int, Any]]:
    data = load_data(configs[0].with_absolute_paths().data)
    experiments = [build_experiment(c, data) for c in configs]
    assert [unfusable(e) for e in experiments] == [None] * len(configs)
    assert len({group_key(e) for e in experiments}) == 1
    outcome: dict[int, Any] = {}
    FusedGroup(experiments).run(lambda k, metrics, error: outcome.__setitem__(k, error or metrics))
    return experiments, outcome


def assert_same_history(fused: list[dict], alone: list[dict]) -> None:
    assert [r["epoch"] for r in fused] == [r["epoch"] for r in alone]
    for a, b in zip(fused, alone, strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
        for key in ("val_accuracy", "train_accuracy"):
            assert a[key] == pytest.approx(b[key], abs=2e-3)
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-9)


def files(run: Path) -> set[str]:
    """The run's files, TensorBoard's event files by folder (their names hold the time and the process)."""
    return {
        re.sub(r"events\.out\.tfevents\..*", "events", str(p.relative_to(run))) for p in run.rglob("*") if p.is_file()
    }


@pytest.mark.parametrize(
    "swept",
    [
        [f"optimizer.lr={lr} optimizer.weight_decay={wd}".split() for lr in (0.01, 0.05) for wd in (0, 0.01)],
        [[f"seed={seed}", "optimizer.lr=0.03"] for seed in (1, 2, 3)],
    ],
    ids=["lr-x-weight-decay", "seeds"],
)
def test_each_fused_trial_equals_its_standalone_run(
    make_config: Callable[..., Config], swept: list[list[str]], tmp_path: Path
) -> None:
    configs = [make_config(*values, f"name=t{i}", "trainer.max_epochs=3") for i, values in enumerate(swept)]
    experiments, outcome = fused(configs)
    for i, (config, experiment) in enumerate(zip(configs, experiments, strict=True)):
        alone, metrics = standalone(config.model_copy(update={"name": f"alone{i}"}))
        assert_same_history(experiment.history, alone)
        assert outcome[i]["test_accuracy"] == pytest.approx(metrics["test_accuracy"], abs=2e-3)
        assert outcome[i]["test_loss"] == pytest.approx(metrics["test_loss"], rel=1e-4)
        assert outcome[i]["best_epoch"] == metrics["best_epoch"]
        assert files(experiment.run_dir) == files(tmp_path / "runs" / f"alone{i}")
        saved = json.loads((experiment.run_dir / "history.json").read_text())
        assert [r["val_loss"] for r in saved] == [r["val_loss"] for r in experiment.history]


def test_early_stopping_stops_each_trial_at_its_standalone_epoch(make_config: Callable[..., Config]) -> None:
    # A min_delta no epoch beats: those trials stop after `patience` epochs; the last one never stops.
    settings = [("0.5", "1"), ("0.5", "2"), ("0", "3")]
    configs = [
        make_config(f"early_stopping.min_delta={delta}", f"early_stopping.patience={patience}", f"name=es{i}",
                    "optimizer.lr=0.05", "trainer.max_epochs=5")
        for i, (delta, patience) in enumerate(settings)
    ]  # fmt: skip
    experiments, outcome = fused(configs)
    epochs = []
    for i, (config, experiment) in enumerate(zip(configs, experiments, strict=True)):
        alone, metrics = standalone(config.model_copy(update={"name": f"alone{i}"}))
        assert_same_history(experiment.history, alone)
        assert outcome[i]["best_epoch"] == metrics["best_epoch"]
        assert outcome[i]["test_accuracy"] == pytest.approx(metrics["test_accuracy"], abs=2e-3)
        best = torch.load(experiment.run_dir / "model.pt")
        assert torch.equal(best["linear.weight"], experiment.context.monitor.best_state["linear.weight"])
        epochs.append(len(alone))
    assert epochs == [3, 4, 5]  # the first epoch is the best; then `patience` more


def test_what_cannot_fuse_says_why(make_config: Callable[..., Config]) -> None:
    assert unfusable(build_experiment(make_config("trainer.compile=true"))) == "trainer.compile is set"
    handler = make_config("handlers=[{target: tests.plugins:CountingState}]")
    assert unfusable(build_experiment(handler)) == ("its handler handlers[0] (CountingState) is not fusion-aware")
    sizes = [build_experiment(make_config(f"data.batch_size={b}")) for b in (16, 32)]
    assert group_key(sizes[0]) != group_key(sizes[1])


class PruneAfter:
    """A stand-in for an Optuna trial whose pruner prunes it after ``epoch``."""

    number = 0

    def __init__(self, epoch: int) -> None:
        self.epoch, self.reported = epoch, []

    def report(self, value: float, step: int) -> None:
        self.reported.append(step)

    def should_prune(self) -> bool:
        return self.reported[-1] >= self.epoch


def test_a_pruned_trial_is_frozen_and_finished_while_the_others_go_on(make_config: Callable[..., Config]) -> None:
    configs = [make_config(f"name=p{i}", "trainer.max_epochs=3", "monitor.restore_best=false") for i in range(2)]
    data = load_data(configs[0].with_absolute_paths().data)
    experiments = [build_experiment(c, data) for c in configs]
    experiments[0].add_handler(ReportToTrial, trial=PruneAfter(1))
    experiments[1].add_handler(ReportToTrial, trial=PruneAfter(99))
    outcome: dict[int, Any] = {}
    FusedGroup(experiments).run(lambda k, metrics, error: outcome.__setitem__(k, error or metrics))
    assert (outcome[0]["pruned_epoch"], outcome[0]["epochs_trained"]) == (1, 1)
    assert "pruned_epoch" not in outcome[1] and outcome[1]["epochs_trained"] == 3
    pruned = experiments[0].run_dir
    saved = torch.load(pruned / "checkpoints" / "checkpoint_1.pt", weights_only=False)["model"]
    assert torch.equal(torch.load(pruned / "model.pt")["linear.weight"], saved["linear.weight"]), "frozen at epoch 1"
    alone, _ = standalone(configs[1].model_copy(update={"name": "alone"}))
    assert_same_history(experiments[1].history, alone)


def test_a_fused_trial_resumed_alone_goes_on_as_its_standalone_run(make_config: Callable[..., Config]) -> None:
    configs = [
        make_config(f"optimizer.lr={lr}", f"name=r{i}", "trainer.max_epochs=2") for i, lr in enumerate((0.01, 0.05))
    ]
    experiments, _ = fused(configs)
    resumed = resume_experiment(experiments[1].run_dir, overrides=["trainer.max_epochs=3"])
    resumed.run()
    standalone(configs[1].model_copy(update={"name": "alone"}))
    extended = resume_experiment(Path(configs[1].output_dir) / "alone", overrides=["trainer.max_epochs=3"])
    extended.run()
    assert_same_history(resumed.history, extended.history)


def test_the_fused_step_is_each_trials_own_optimizer_step() -> None:
    """Weight decay or none, momentum or none, Nesterov or not, each its own lr, an Adam among them: as
    ``optimizer.step()``, with the models' weights current while fused and the buffers in their states after."""
    settings: list[dict[str, Any]] = [
        {"lr": 0.02, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
        {"lr": 0.05, "momentum": 0.5, "nesterov": False, "weight_decay": 0.0},
        {"lr": 0.1, "momentum": 0.0, "nesterov": False, "weight_decay": 1e-2},
        {"adam": True, "lr": 0.01},
        {"lr": 0.005, "momentum": 0.9, "nesterov": True, "weight_decay": 0.0},
    ]

    def steps() -> list[TrainStep]:
        torch.manual_seed(0)
        made = []
        for options in settings:
            model = torch.nn.Linear(6, 3)
            optimizer: torch.optim.Optimizer
            if options.get("adam"):
                optimizer = torch.optim.Adam(model.parameters(), lr=options["lr"])
            else:
                optimizer = torch.optim.SGD(model.parameters(), **options)
            made.append(TrainStep(model, optimizer, torch.device("cpu"), lambda *a: a, EpochLoss(torch.device("cpu"))))
        return made

    alone, together = steps(), steps()
    assert [plain_sgd(step) for step in together] == [True, True, True, False, True]
    linears = [cast(torch.nn.Linear, step.model) for step in together]
    for rounds in ((0, 1), (2,)):  # fused for two steps (the first makes the buffers), then again from the states
        weights = FusedWeights(together, linears)
        for i in rounds:
            torch.manual_seed(i)
            gradients = [[torch.randn_like(p) for p in step.model.parameters()] for step in alone]
            for step, grads in zip(alone, gradients, strict=True):
                for param, grad in zip(step.model.parameters(), grads, strict=True):
                    param.grad = grad.clone()
                step.optimizer.step()
            weights.weight.grad = torch.cat([grads[0] for grads in gradients])
            weights.bias.grad = torch.cat([grads[1] for grads in gradients])
            weights.step()
            for a, t in zip(alone, together, strict=True):  # each model's own parameters see the step
                for p, q in zip(a.model.parameters(), t.model.parameters(), strict=True):
                    torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)
        weights.release()
        for a, t in zip(alone, together, strict=True):
            for p, q in zip(a.model.parameters(), t.model.parameters(), strict=True):
                assert q.data.untyped_storage().nbytes() == q.numel() * q.element_size()  # its own tensor again
                torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)
                state_a, state_t = a.optimizer.state[p], t.optimizer.state[q]
                assert state_a.keys() == state_t.keys()
                for key, value in state_a.items():
                    torch.testing.assert_close(state_t[key], value)


def test_momentum_a_schedule_turns_on_while_fused_starts_its_buffer_as_sgd_does() -> None:
    def made() -> TrainStep:
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.0)
        return TrainStep(model, optimizer, torch.device("cpu"), lambda *a: a, EpochLoss(torch.device("cpu")))

    alone, together = made(), made()
    weights = FusedWeights([together], [cast(torch.nn.Linear, together.model)])
    for i, momentum in enumerate((0.0, 0.9, 0.9)):
        for step in (alone, together):
            step.optimizer.param_groups[0]["momentum"] = momentum
        torch.manual_seed(i)
        grads = [torch.randn_like(p) for p in alone.model.parameters()]
        for param, grad in zip(alone.model.parameters(), grads, strict=True):
            param.grad = grad.clone()
        alone.optimizer.step()
        weights.weight.grad, weights.bias.grad = grads[0].clone(), grads[1].clone()
        weights.step()
    weights.release()
    for p, q in zip(alone.model.parameters(), together.model.parameters(), strict=True):
        torch.testing.assert_close(q, p)
        torch.testing.assert_close(
            together.optimizer.state[q]["momentum_buffer"], alone.optimizer.state[p]["momentum_buffer"]
        )


def sgd_steps(models: list[torch.nn.Linear]) -> list[TrainStep]:
    """A plain SGD training step for each model."""
    cpu = torch.device("cpu")
    return [TrainStep(m, torch.optim.SGD(m.parameters(), lr=0.1), cpu, lambda *a: a, EpochLoss(cpu)) for m in models]


@pytest.mark.parametrize("batch", [1, 7, 128])
def test_the_fused_gradients_are_those_autograd_gives_each_trials_own_mean_cross_entropy(batch: int) -> None:
    torch.manual_seed(batch)
    models = [torch.nn.Linear(12, 5) for _ in range(4)]
    steps = sgd_steps(models)
    x, labels = torch.randn(batch, 12) * 3, torch.randint(0, 5, (batch,))
    weights = FusedWeights(steps, models)
    losses, correct = weights.forward_backward(x, labels)
    for k, model in enumerate(models):  # each trial alone, as its standalone step computes it
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        loss.backward()
        torch.testing.assert_close(losses[k], loss.detach())
        assert int(correct[k]) == int(logits.argmax(1).eq(labels).sum())
        assert model.weight.grad is not None and model.bias.grad is not None
        torch.testing.assert_close(weights.weight.grad[k * 5 : (k + 1) * 5], model.weight.grad)
        torch.testing.assert_close(weights.bias.grad[k * 5 : (k + 1) * 5], model.bias.grad)


def test_a_model_computes_with_its_fused_weights() -> None:
    torch.manual_seed(0)
    models = [torch.nn.Linear(4, 3) for _ in range(3)]
    steps = sgd_steps(models)
    x = torch.randn(5, 4)
    expected = torch.stack([m(x) for m in models], 1)
    weights = FusedWeights(steps, models)
    torch.testing.assert_close(weights.logits(x), expected)
    with torch.no_grad():
        weights.weight.add_(1.0)
    torch.testing.assert_close(models[1](x), expected[:, 1] + x.sum(1, keepdim=True))  # a view of the fused rows
    weights.release()
    with torch.no_grad():
        weights.weight.add_(1.0)
    torch.testing.assert_close(models[1](x), expected[:, 1] + x.sum(1, keepdim=True))  # its own tensor again


def test_an_optimizer_other_than_plain_sgd_takes_its_own_step() -> None:
    model = torch.nn.Linear(2, 2)
    cpu = torch.device("cpu")

    def step(optimizer: torch.optim.Optimizer, clip: float | None = None) -> TrainStep:
        return TrainStep(model, optimizer, cpu, lambda *a: a, EpochLoss(cpu), grad_clip_norm=clip)

    assert plain_sgd(step(torch.optim.SGD(model.parameters(), lr=0.1)))
    assert not plain_sgd(step(torch.optim.Adam(model.parameters(), lr=0.1)))
    assert not plain_sgd(step(torch.optim.SGD(model.parameters(), lr=0.1, dampening=0.1)))
    assert not plain_sgd(step(torch.optim.SGD(model.parameters(), lr=0.1), clip=1.0))
    counted = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.optim.lr_scheduler.StepLR(counted, step_size=1)  # counts the optimizer's steps
    assert not plain_sgd(step(counted))
