"""engine.py: devices, input scaling, the training step and its epoch metrics, the evaluator."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from torch import nn

from fmnist_ignite import Config, ConfigError, TrainingError, build_experiment
from fmnist_ignite.engine import (
    EpochLoss,
    compile_for_training,
    create_evaluator,
    create_trainer,
    make_prepare_batch,
    pixel_scaling,
    resolve_device,
)
from fmnist_ignite.fileio import safe_torch_load
from fmnist_ignite.models import LogisticRegression

from . import plugins
from .conftest import BASE, CLI
from .helpers import read_history

CPU = torch.device("cpu")


def batches(sizes: tuple[int, ...] = (3, 3), seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """uint8 images (n, 1, 2, 2) and labels of 3 classes."""
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randint(0, 256, (n, 1, 2, 2), dtype=torch.uint8, generator=generator),
            torch.randint(0, 3, (n,), generator=generator),
        )
        for n in sizes
    ]


def small_model(seed: int = 0) -> LogisticRegression:
    torch.manual_seed(seed)
    return LogisticRegression(4, 3)


# -- devices ------------------------------------------------------------------------------------------------------


def test_cpu_and_auto_without_accelerators(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto") == CPU


def test_auto_prefers_cuda_then_mps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("mps")


@pytest.mark.parametrize(
    ("name", "cuda", "count", "message"),
    [
        ("cuda", False, 0, "device 'cuda': CUDA is not available on this machine; use device=cpu or device=auto"),
        ("cuda:1", False, 0, "device 'cuda:1': CUDA is not available on this machine; use device=cpu or device=auto"),
        (
            "cuda:2",
            True,
            2,
            "device 'cuda:2': this machine has 2 CUDA device(s), numbered from 0; use device=cuda:0",
        ),
        ("mps", False, 0, "device 'mps': MPS is not available on this machine; use device=cpu or device=auto"),
    ],
)
def test_devices_the_machine_lacks_are_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, cuda: bool, count: int, message: str
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError) as info:
        resolve_device(name)
    assert str(info.value) == message


def test_an_existing_cuda_index_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_compiling_on_a_cpu_keeps_the_eager_model(caplog: pytest.LogCaptureFixture) -> None:
    model = small_model()
    with caplog.at_level(logging.INFO, logger="fmnist_ignite.engine"):
        assert compile_for_training(model, torch.zeros(2, 1, 2, 2)) is model
    assert caplog.messages == ["trainer.compile: compiling pays off on CUDA only; training on cpu runs eagerly"]


# -- input scaling ------------------------------------------------------------------------------------------------


def test_pixel_scaling() -> None:
    assert pixel_scaling(0.5, 0.25, normalize=False) == (1 / 255, 0.0)
    scale, shift = pixel_scaling(0.5, 0.25, normalize=True)
    assert scale == pytest.approx(1 / (255 * 0.25)) and shift == pytest.approx(2.0)
    assert 255 * scale - shift == pytest.approx((1.0 - 0.5) / 0.25)
    assert 0 * scale - shift == pytest.approx((0.0 - 0.5) / 0.25)


@pytest.mark.parametrize("normalize", [False, True])
def test_uint8_pixels_become_scaled_floats(normalize: bool) -> None:
    mean, std = 0.2860, 0.3530
    pixels = torch.arange(256, dtype=torch.uint8).reshape(4, 1, 8, 8)
    labels = torch.tensor([0, 1, 2, 3])
    x, y = make_prepare_batch(mean, std, normalize)((pixels, labels), CPU, False)
    expected = pixels.double() / 255
    if normalize:
        expected = (expected - mean) / std
    assert x.dtype == torch.float32 and x.shape == pixels.shape
    assert torch.allclose(x.double(), expected, atol=1e-5)
    assert y is labels or torch.equal(y, labels)
    assert pixels.dtype == torch.uint8 and int(pixels.max()) == 255  # the batch itself is untouched


def test_a_float_batch_is_not_changed_in_place() -> None:
    pixels = torch.full((1, 1, 2, 2), 255.0)
    make_prepare_batch(0.5, 0.25, True)((pixels, torch.tensor([0])), CPU, False)
    assert torch.equal(pixels, torch.full((1, 1, 2, 2), 255.0))


def test_float_pixels_get_the_same_inputs_as_uint8_pixels() -> None:
    prepare = make_prepare_batch(0.5, 0.25, True)
    pixels = torch.tensor([0, 51, 255], dtype=torch.uint8).reshape(1, 1, 1, 3)
    from_uint8, _ = prepare((pixels, torch.tensor([0])), CPU, False)
    from_float, _ = prepare((pixels.float(), torch.tensor([0])), CPU, False)
    assert torch.allclose(from_uint8, from_float)


# -- the training step --------------------------------------------------------------------------------------------


def by_hand(model: nn.Module, data: list, lr: float, epochs: int, scale: float) -> list[tuple[float, float]]:
    """Plain SGD on cross-entropy: each epoch's mean batch loss and accuracy, from the losses before each step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    results = []
    for _ in range(epochs):
        losses, correct, seen = [], 0, 0
        for images, labels in data:
            logits = model(images.float() * scale)
            loss = F.cross_entropy(logits, labels)
            losses.append(loss.item())
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        results.append((sum(losses) / len(losses), correct / seen))
    return results


def test_epoch_loss_and_accuracy_match_a_hand_computation() -> None:
    data = batches((3, 3, 2))
    model, reference = small_model(), small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    trainer = create_trainer(model, optimizer, CPU, make_prepare_batch(0.0, 1.0, False))
    per_epoch: list[tuple[float, float]] = []
    outputs: list[torch.Tensor] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(e.state.output))
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED,
        lambda e: per_epoch.append((e.state.metrics["train_loss"], e.state.metrics["train_accuracy"])),
    )
    trainer.run(data, max_epochs=2)
    expected = by_hand(reference, data, lr=0.5, epochs=2, scale=1 / 255)
    assert [v for pair in per_epoch for v in pair] == pytest.approx([v for pair in expected for v in pair], rel=1e-5)
    assert per_epoch[0][0] != pytest.approx(per_epoch[1][0])  # each epoch's own batches: reset when it starts
    for mine, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(mine, theirs, atol=1e-6)  # one optimizer step per batch
    assert len(outputs) == 6 and all(isinstance(o, torch.Tensor) and o.dim() == 0 for o in outputs)
    assert not any(o.requires_grad for o in outputs)


def test_the_model_is_put_in_training_mode_each_epoch() -> None:
    model = small_model()
    trainer = create_trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), CPU, make_prepare_batch(0.0, 1.0, False)
    )
    modes: list[bool] = []
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda: modes.append(model.training))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda: model.eval())  # as validation leaves it
    model.eval()
    trainer.run(batches((2, 2)), max_epochs=2)
    assert modes == [True] * 4


def test_a_share_of_the_batch_weights_the_gradient_and_the_recorded_loss() -> None:
    data = batches((4, 4))
    full, half = small_model(), small_model()
    start = copy.deepcopy(full.state_dict())
    runs = {}
    for name, model, share in (("full", full, None), ("half", half, 0.5)):
        trainer = create_trainer(
            model,
            torch.optim.SGD(model.parameters(), lr=0.2),
            CPU,
            make_prepare_batch(0.0, 1.0, False),
            batch_share=None if share is None else (lambda engine, n, s=share: s),
        )
        trainer.run(data[:1], max_epochs=1)
        runs[name] = trainer.state.metrics["train_loss"]
    assert runs["half"] == pytest.approx(runs["full"] / 2)
    moved_full = full.linear.weight - start["linear.weight"]
    moved_half = half.linear.weight - start["linear.weight"]
    assert torch.allclose(moved_half, moved_full / 2, atol=1e-6)


class PoisonAt(nn.Module):
    """A model whose output becomes NaN at its ``call``-th training call."""

    def __init__(self, call: int) -> None:
        super().__init__()
        self.inner = small_model()
        self.call, self.calls = call, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.inner(x)
        return out * float("nan") if self.calls == self.call else out


def test_a_nan_loss_names_the_epoch_and_the_first_bad_iteration() -> None:
    model = PoisonAt(call=5)  # epoch 2, its 2nd of 3 iterations
    trainer = create_trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), CPU, make_prepare_batch(0.0, 1.0, False)
    )
    completed: list[int] = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: completed.append(e.state.epoch))
    with pytest.raises(TrainingError) as info:
        trainer.run(batches((2, 2, 2)), max_epochs=4)
    assert str(info.value) == (
        "the training loss became NaN or infinite in epoch 2 at iteration 2 (global iteration 5); "
        "lower optimizer.lr and start a new run"
    )
    assert completed == [1]  # no handler saw the bad epoch
    assert trainer.state.iteration == 6  # raised when the epoch completed, not at the bad step


def test_an_epoch_without_batches_records_zeros() -> None:
    engine = Engine(lambda e, b: None)
    stats = EpochLoss(CPU)
    stats.complete(engine)
    assert engine.state.metrics == {"train_loss": 0.0, "train_accuracy": 0.0}


def test_epoch_loss_by_hand() -> None:
    engine = Engine(lambda e, b: None)
    stats = EpochLoss(CPU)
    stats.record(torch.tensor(1.0), torch.tensor(2), 4)
    stats.record(torch.tensor(0.5), torch.tensor(3), 3)
    stats.complete(engine)
    assert engine.state.metrics == {"train_loss": 0.75, "train_accuracy": 5 / 7}
    stats.reset()
    stats.record(torch.tensor(2.0), torch.tensor(0), 2)
    stats.complete(engine)
    assert engine.state.metrics == {"train_loss": 2.0, "train_accuracy": 0.0}


def test_an_infinite_loss_is_refused_too() -> None:
    engine = Engine(lambda e, b: None)
    engine.state.epoch, engine.state.epoch_length = 3, 10
    stats = EpochLoss(CPU)
    for loss in (0.5, float("inf"), 0.4):
        stats.record(torch.tensor(loss), torch.tensor(1), 2)
    with pytest.raises(TrainingError, match=r"in epoch 3 at iteration 2 \(global iteration 22\)"):
        stats.complete(engine)


# -- the evaluator ------------------------------------------------------------------------------------------------


def test_evaluator_metrics_match_a_hand_computation() -> None:
    data = batches((5, 3), seed=4)
    model = small_model(seed=2)
    evaluator = create_evaluator(model, CPU, make_prepare_batch(0.0, 1.0, False), num_classes=3)
    evaluator.run(data)
    images = torch.cat([x for x, _ in data]).float() / 255
    labels = torch.cat([y for _, y in data])
    with torch.no_grad():
        logits = model(images)
    predicted = logits.argmax(1)
    metrics = evaluator.state.metrics
    assert set(metrics) == {"loss", "accuracy", "confusion"}
    assert metrics["loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert metrics["accuracy"] == pytest.approx((predicted == labels).float().mean().item())
    confusion = torch.zeros(3, 3, dtype=torch.long)
    for true, guess in zip(labels.tolist(), predicted.tolist(), strict=True):
        confusion[true, guess] += 1
    assert torch.equal(metrics["confusion"].long(), confusion)


def test_evaluator_without_classes_has_no_confusion_matrix_and_leaves_weights_alone() -> None:
    model = small_model()
    before = copy.deepcopy(model.state_dict())
    evaluator = create_evaluator(model, CPU, make_prepare_batch(0.0, 1.0, False))
    evaluator.run(batches((4,)))
    assert set(evaluator.state.metrics) == {"loss", "accuracy"}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training


def test_nan_loss_stops_with_epoch_and_iteration(small: list[str], cli: Callable[..., CLI]) -> None:
    code, _, err = cli(BASE, *small, "early_stopping.enabled=false", "optimizer.lr=1e36")
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        "error: the training loss became NaN or infinite in epoch 1 at iteration 2 (global iteration 2); "
        "lower optimizer.lr and start a new run"
    )


def test_nan_loss_keeps_history_and_the_last_good_checkpoint(make_config: Callable[..., Config]) -> None:
    experiment = build_experiment(
        make_config("early_stopping.enabled=false", "trainer.max_epochs=5", "scheduler.name=none")
    )

    def blow_up() -> None:
        if experiment.trainer.state.epoch == 2:
            experiment.context.optimizer.param_groups[0]["lr"] = 1e36

    experiment.trainer.add_event_handler(plugins.Events.EPOCH_COMPLETED, blow_up)
    with pytest.raises(TrainingError, match=r"in epoch 3 at iteration \d+ \(global iteration \d+\)"):
        experiment.run()
    run = experiment.run_dir
    assert [r["epoch"] for r in read_history(run)] == [1, 2]
    assert sorted(p.name for p in (run / "checkpoints").glob("checkpoint_*")) == ["checkpoint_1.pt", "checkpoint_2.pt"]
    state = safe_torch_load(run / "checkpoints" / "checkpoint_2.pt")
    assert torch.isfinite(state["model"]["linear.weight"]).all()


def gradient_norm(model: nn.Module) -> float:
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])))


@pytest.mark.parametrize("limit", [0.05, 1e6])
def test_grad_clip_norm_clips_the_step_to_the_limit(limit: float) -> None:
    prepare = make_prepare_batch(0.0, 1.0, False)
    data = batches((6,))
    free, clipped = small_model(), small_model()
    start = copy.deepcopy(clipped.state_dict())
    create_trainer(free, torch.optim.SGD(free.parameters(), lr=0.1), CPU, prepare).run(data, max_epochs=1)
    raw = gradient_norm(free)
    assert raw > 0.05
    trainer = create_trainer(clipped, torch.optim.SGD(clipped.parameters(), lr=0.1), CPU, prepare, grad_clip_norm=limit)
    trainer.run(data, max_epochs=1)
    # The gradients left by the step are the clipped ones, and SGD moved the weights by lr times them.
    assert gradient_norm(clipped) == pytest.approx(min(raw, limit), rel=1e-5)
    for name, p in clipped.named_parameters():
        assert torch.allclose(start[name] - 0.1 * p.grad, p.detach(), atol=1e-7)


def test_grad_clip_norm_from_the_command_line(small: list[str], cli: Callable[..., CLI]) -> None:
    code, _, err = cli(BASE, *small, "trainer.grad_clip_norm=0.001", "trainer.max_epochs=1", "scheduler.name=none")
    assert code == 0, err
    assert read_history(next(p for p in (Path(small[2].partition("=")[2])).iterdir()))[0]["epoch"] == 1
