"""Epoch time, time to 0.84 validation accuracy, memory and scaling, measured side by side in one run.

Compares, on the real Fashion-MNIST with the hyperparameters of ``configs/base.yaml``:

1. the original notebook's pipeline: ``torchvision`` dataset + ``ToTensor`` + ``DataLoader``, plain loop;
2. a plain PyTorch loop over the data held as one in-memory tensor (the eager lower bound);
3. fmnist_ignite with ``configs/base.yaml`` (Ignite engines, metrics and the default handlers,
   checkpoints included), progress bar off and on.

Then peak resident memory of a whole ``python -m fmnist_ignite`` run (Fashion-MNIST, and a
CIFAR-10-sized data set), and how fmnist_ignite's epoch time grows with the data (1x, 2x, 4x the
training set) and with the features (784 vs 3072).

Run it with ``make bench`` or ``.venv/bin/python benchmarks/epoch_speed.py [--epochs N] [--device cpu|cuda]``.
"""

from __future__ import annotations

import argparse
import gzip
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from ignite.engine import Events

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fmnist_ignite import ImageData, build_experiment, load_config  # noqa: E402
from fmnist_ignite.data import epoch_permutation, load_data  # noqa: E402
from fmnist_ignite.data.sources import FASHION_FILES  # noqa: E402

TARGET = 0.84


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Timer:
    """Per-epoch wall times and the time at which validation accuracy first reached TARGET."""

    def __init__(self) -> None:
        self.epochs: list[float] = []
        self.reached: float | None = None
        self.start = time.perf_counter()

    def record(self, epoch_seconds: float, accuracy: float) -> None:
        self.epochs.append(epoch_seconds)
        if self.reached is None and accuracy >= TARGET:
            self.reached = time.perf_counter() - self.start


def sgd(model: torch.nn.Module, config) -> torch.optim.Optimizer:  # type: ignore[no-untyped-def]
    o = config.optimizer
    return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)


def cosine(optimizer: torch.optim.Optimizer, lr: float, total: int) -> Callable[[int], None]:
    def set_lr(step: int) -> None:
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))

    return set_lr


def torchvision_root(config, folder: Path) -> Path:  # type: ignore[no-untyped-def]
    """``folder``, holding the four files uncompressed in ``FashionMNIST/raw/``: where the notebook reads them.

    fmnist_ignite reads the ``.gz`` files directly and writes no such copy.
    """
    raw = folder / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    places = [
        Path(config.data.root) / "FashionMNIST" / "raw",
        *([Path(config.data.system_dir)] * bool(config.data.system_dir)),
    ]
    for name in FASHION_FILES:
        source = next(place / f"{name}.gz" for place in places if (place / f"{name}.gz").is_file())
        (raw / name).write_bytes(gzip.decompress(source.read_bytes()))
    return folder


def original_pipeline(config, epochs: int, device: torch.device, root: Path) -> Timer:  # type: ignore[no-untyped-def]
    """The notebook: ToTensor per image, random_split, DataLoader, a plain fit loop."""
    from torch.utils.data import DataLoader, random_split
    from torchvision.datasets import FashionMNIST
    from torchvision.transforms import ToTensor

    dataset = FashionMNIST(str(root), train=True, transform=ToTensor())
    train_ds, val_ds = random_split(
        dataset, [len(dataset) - config.data.val_size, config.data.val_size], torch.Generator().manual_seed(0)
    )
    train_dl = DataLoader(train_ds, config.data.batch_size, shuffle=True)
    val_dl = DataLoader(val_ds, config.data.batch_size * 2)
    torch.manual_seed(config.seed)
    model = torch.nn.Linear(784, 10).to(device)
    optimizer = sgd(model, config)
    set_lr = cosine(optimizer, config.optimizer.lr, epochs * len(train_dl))
    timer, step = Timer(), 0
    for _ in range(epochs):
        start = time.perf_counter()
        for xb, yb in train_dl:
            xb, yb = xb.to(device), yb.to(device)
            set_lr(step)
            step += 1
            loss = F.cross_entropy(model(xb.reshape(-1, 784)), yb)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        with torch.no_grad():
            outputs = []
            for xb, yb in val_dl:
                xb, yb = xb.to(device), yb.to(device)
                out = model(xb.reshape(-1, 784))
                acc = (out.argmax(1) == yb).float().mean()
                outputs.append({"val_loss": F.cross_entropy(out, yb), "val_acc": acc})
            accuracy = torch.stack([x["val_acc"] for x in outputs]).mean().item()
        timer.record(time.perf_counter() - start, accuracy)
    return timer


def batches(images: torch.Tensor, labels: torch.Tensor, size: int, order: torch.Tensor | None) -> Iterator:
    for start in range(0, len(labels), size):
        index = slice(start, start + size) if order is None else order[start : start + size]
        yield images[index], labels[index]


def plain_loop(config, data: ImageData, epochs: int, device: torch.device) -> Timer:  # type: ignore[no-untyped-def]
    """The eager lower bound: uint8 tensors in memory, a permutation per epoch, floats per batch."""
    val = config.data.val_size
    order = torch.randperm(len(data.train_labels), generator=torch.Generator().manual_seed(config.seed))
    images, labels = data.train_images[order].to(device), data.train_labels[order].to(device)
    train_x, train_y, val_x, val_y = images[val:], labels[val:], images[:val], labels[:val]
    scale, shift = 1 / (255 * data.std), data.mean / data.std
    torch.manual_seed(config.seed)
    model = torch.nn.Linear(train_x[0].numel(), 10).to(device)
    optimizer = sgd(model, config)
    n_batches = math.ceil(len(train_y) / config.data.batch_size)
    set_lr = cosine(optimizer, config.optimizer.lr, epochs * n_batches)
    timer, step = Timer(), 0
    for epoch in range(epochs):
        sync(device)
        start = time.perf_counter()
        perm = epoch_permutation(len(train_y), config.seed, epoch + 1).to(device)
        for xb, yb in batches(train_x, train_y, config.data.batch_size, perm):
            set_lr(step)
            step += 1
            loss = F.cross_entropy(model(xb.flatten(1).float().mul_(scale).sub_(shift)), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():  # accuracy and loss, as the notebook and fmnist_ignite compute
            correct = torch.zeros((), device=device)
            loss_sum = torch.zeros((), device=device)
            for xb, yb in batches(val_x, val_y, config.data.eval_batch_size, None):
                out = model(xb.flatten(1).float().mul_(scale).sub_(shift))
                correct += (out.argmax(1) == yb).sum()
                loss_sum += F.cross_entropy(out, yb, reduction="sum")
            accuracy = correct.item() / len(val_y)
            _ = loss_sum.item() / len(val_y)
        sync(device)
        timer.record(time.perf_counter() - start, accuracy)
    return timer


def framework(config, data: ImageData | None = None) -> Timer:  # type: ignore[no-untyped-def]
    """fmnist_ignite itself: the epoch from EPOCH_STARTED to after the last EPOCH_COMPLETED handler."""
    experiment = build_experiment(config, data)
    timer = Timer()
    started: list[float] = []
    device = experiment.context.device
    experiment.trainer.add_event_handler(
        Events.EPOCH_STARTED, lambda: (sync(device), started.append(time.perf_counter()))
    )

    def done() -> None:
        sync(device)
        timer.record(time.perf_counter() - started[-1], experiment.evaluator.state.metrics["accuracy"])

    experiment.trainer.add_event_handler(Events.EPOCH_COMPLETED, done)
    timer.start = time.perf_counter()
    experiment.run()
    return timer


def framework_run(base, data: ImageData, name: str, bar: bool) -> Timer:  # type: ignore[no-untyped-def]
    """fmnist_ignite with the base config; with ``bar``, the progress bar draws into /dev/null (its cost counts)."""
    config = load_config(base.to_dict(), [f"name={name}", f"logging.progress_bar={str(bar).lower()}"])
    if not bar:
        return framework(config, data)
    with open(os.devnull, "w") as null:
        stderr, sys.stderr = sys.stderr, null
        try:
            return framework(config, data)
        finally:
            sys.stderr = stderr


def cifar_sized(data: ImageData) -> ImageData:
    """A CIFAR-10-sized stand-in (3x32x32, same counts and labels): only the shape matters for timing."""
    generator = torch.Generator().manual_seed(0)
    return ImageData(
        train_images=torch.randint(0, 256, (len(data.train_labels), 3, 32, 32), dtype=torch.uint8, generator=generator),
        train_labels=data.train_labels,
        test_images=torch.randint(0, 256, (len(data.test_labels), 3, 32, 32), dtype=torch.uint8, generator=generator),
        test_labels=data.test_labels,
        classes=data.classes,
        mean=0.47,
        std=0.25,
    )


def repeated(data: ImageData, times: int) -> ImageData:
    return ImageData(
        train_images=data.train_images.repeat(times, 1, 1, 1),
        train_labels=data.train_labels.repeat(times),
        test_images=data.test_images,
        test_labels=data.test_labels,
        classes=data.classes,
        mean=data.mean,
        std=data.std,
    )


MEMORY_SCRIPT = """
import sys, torch
sys.path.insert(0, {repo!r})
from fmnist_ignite import DATASETS, ImageData, build_experiment, load_config

def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":"))

@DATASETS.register("cifar_sized")
def cifar_sized(config):
    n, gen = {images!r}, torch.Generator().manual_seed(0)
    return ImageData(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen),
                     torch.randint(0, 10, (n,), generator=gen),
                     torch.randint(0, 256, (10000, 3, 32, 32), dtype=torch.uint8, generator=gen),
                     torch.randint(0, 10, (10000,), generator=gen), tuple(map(str, range(10))), 0.47, 0.25)

before = status("VmRSS")
dataset = ["data.dataset=cifar_sized", "data.val_size=" + str(min(10000, {images!r} // 5))] if {cifar!r} else []
config = load_config({repo!r} + "/configs/base.yaml", ["output_dir=" + {out!r}, "name=" + {name!r},
                      "trainer.max_epochs=2", "logging.progress_bar=false", *dataset])
build_experiment(config).run()
print(before, status("VmHWM"))
"""


def run_memory(out: Path, name: str, cifar: bool, images: int = 50000) -> tuple[float, float]:
    """(RSS after imports, peak RSS) of a whole 2-epoch run in a fresh process, in MB (VmHWM resets on exec)."""
    script = MEMORY_SCRIPT.format(repo=str(REPO), out=str(out), name=name, cifar=cifar, images=images)
    result = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    before, peak = (int(kb) / 1024 for kb in result.stdout.split())
    return before, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="epochs per pipeline and round (the original gets 3)")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds of the fast pipelines")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    out = Path(tempfile.mkdtemp(prefix="fmnist-bench-"))
    base = load_config(REPO / "configs" / "base.yaml", [f"output_dir={out}", f"device={args.device}"])
    device = torch.device(args.device)
    data = load_data(base.data)
    print(
        f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )

    original = original_pipeline(base, 3, device, torchvision_root(base, out / "torchvision"))
    # Alternate the fast pipelines, so that a slow spell of the machine does not favour one of them.
    plain, quiet, bar = Timer(), Timer(), Timer()
    round_ratios: list[float] = []
    for round_ in range(args.rounds):
        results = (
            plain_loop(base, data, args.epochs, device),
            framework_run(base, data, f"bar-off-{round_}", bar=False),
            framework_run(base, data, f"bar-on-{round_}", bar=True),
        )
        for timer, result in zip((plain, quiet, bar), results, strict=True):
            timer.epochs += result.epochs
            if round_ == 0:
                timer.reached = result.reached
        round_ratios.append(statistics.median(results[1].epochs) / statistics.median(results[0].epochs))

    def row(name: str, timer: Timer) -> str:
        median = statistics.median(timer.epochs)
        reached = f"{timer.reached:8.2f} s" if timer.reached is not None else "   never"
        return (
            f"{name:<34} {median * 1000:9.1f} ms {statistics.median(plain.epochs) / median:9.2f}x "
            f"{statistics.median(original.epochs) / median:9.1f}x {reached}"
        )

    print(
        f"\nEpoch (train + validation), median over epochs ({args.rounds} alternating rounds of {args.epochs}); "
        "ratios against the plain loop and the original"
    )
    print(f"{'pipeline':<34} {'epoch':>12} {'vs plain':>10} {'vs orig':>10} {'to ' + str(TARGET) + ' val':>10}")
    print(row("1. original (ToTensor+DataLoader)", original))
    print(row("2. plain in-memory loop", plain))
    print(row("3. fmnist_ignite, bar off", quiet))
    print(row("3. fmnist_ignite, bar on", bar))
    overhead = statistics.median(quiet.epochs) / statistics.median(plain.epochs)
    speedup = statistics.median(original.epochs) / statistics.median(quiet.epochs)
    fastest = min(quiet.epochs) / min(plain.epochs)
    paired = statistics.median(round_ratios)
    print(
        f"\nfmnist_ignite (bar off) vs plain loop: {paired:.2f}x (median of the {args.rounds} rounds' ratios; "
        f"target <= 1.1x); {overhead:.2f}x by overall medians, {fastest:.2f}x by fastest epochs"
    )
    print(f"fmnist_ignite (bar off) vs original: {speedup:.1f}x faster (target >= 25x)")

    print("\nScaling of fmnist_ignite's epoch (bar off, 3 epochs each, median)")
    scale_base = load_config(
        base.to_dict(), ["logging.progress_bar=false", "trainer.max_epochs=3", "early_stopping.enabled=false"]
    )
    reference = None
    for label, scaled in (
        ("1x training set (784 features)", data),
        ("2x training set", repeated(data, 2)),
        ("4x training set", repeated(data, 4)),
        ("1x, 3072 features (CIFAR-sized)", cifar_sized(data)),
    ):
        name = "scale-" + label.split()[0].replace(",", "") + ("-3072" if "3072" in label else "")
        median = statistics.median(framework(load_config(scale_base.to_dict(), [f"name={name}"]), scaled).epochs)
        reference = reference or median
        print(f"  {label:<34} {median * 1000:9.1f} ms  ({median / reference:.2f}x)")

    if device.type == "cpu":
        print("\nPeak resident memory of a whole 2-epoch run, each in a fresh process")
        before, peak = run_memory(out, "mem-fashion", cifar=False)
        print(
            f"  Fashion-MNIST, configs/base.yaml: peak {peak:6.0f} MB (after imports {before:.0f} MB; target < 1500 MB)"
        )
        _, peak = run_memory(out, "mem-cifar", cifar=True)
        _, small_peak = run_memory(out, "mem-cifar-small", cifar=True, images=1000)
        uint8_mb = (50000 - 1000) * 3072 / 2**20
        print(
            f"  CIFAR-10-sized (50k+10k x 3x32x32): peak {peak:.0f} MB; the same run on 1k training images: "
            f"{small_peak:.0f} MB"
        )
        print(
            f"    memory that grows with the data: {peak - small_peak:.0f} MB for {uint8_mb:.0f} MB more uint8 "
            f"images = {(peak - small_peak) / uint8_mb:.2f}x (target < 2x)"
        )


if __name__ == "__main__":
    main()
