"""The reference for ``benchmarks/end_to_end.py``: the base run written by hand, in plain PyTorch.

It does the job of ``python -m fmnist_ignite configs/base.yaml`` the way a short script would:
read the four Fashion-MNIST ``.gz`` files, split the training images 50k/10k with a seeded
permutation, standardise them, train ``nn.Linear(784, 10)`` with SGD (lr 0.02, momentum 0.9,
Nesterov) and a cosine schedule, batches of 128, 10 epochs each followed by validation, then
measure test accuracy and save the weights.

What it leaves out is what the package adds: config validation, the history files, a
checkpoint every epoch, early stopping and the best epoch's weights, resume, the per-class
report and the pictures. It is not part of the package and imports nothing from it. It prints
``timing: <phase> <seconds> s`` lines on stderr (read by the benchmark) and the test accuracy as
JSON on stdout. Building the model and optimizer (whose first use imports ``torch._dynamo``, about a
second) is left to start-up, as fmnist_ignite does it before training starts.

    python benchmarks/reference_script.py --out /tmp/reference
"""

import argparse
import gzip
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MEAN, STD = 0.2860, 0.3530


def read_idx(path: Path, header: int) -> torch.Tensor:
    """An IDX file's bytes after its header (16 bytes for images, 8 for labels)."""
    with gzip.open(path, "rb") as f:
        return torch.from_numpy(np.frombuffer(f.read(), dtype=np.uint8, offset=header).copy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--out", type=Path, required=True, help="folder for model.pt")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    start = time.perf_counter()
    images = read_idx(args.data / "train-images-idx3-ubyte.gz", 16).view(-1, 784)
    labels = read_idx(args.data / "train-labels-idx1-ubyte.gz", 8).long()
    test_images = read_idx(args.data / "t10k-images-idx3-ubyte.gz", 16).view(-1, 784)
    test_labels = read_idx(args.data / "t10k-labels-idx1-ubyte.gz", 8).long()
    images = (images.float() / 255 - MEAN) / STD
    test_images = (test_images.float() / 255 - MEAN) / STD
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(args.seed))
    val_x, val_y = images[order[:10000]], labels[order[:10000]]
    train_x, train_y = images[order[10000:]], labels[order[10000:]]
    print(f"timing: data {time.perf_counter() - start:.3f} s", file=sys.stderr)

    torch.manual_seed(args.seed)
    model = nn.Linear(784, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    steps = args.epochs * math.ceil(len(train_y) / 128)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)

    def accuracy_and_loss(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        correct, loss = 0, 0.0
        with torch.no_grad():
            for i in range(0, len(y), 1000):
                out = model(x[i : i + 1000])
                correct += int((out.argmax(1) == y[i : i + 1000]).sum())
                loss += float(F.cross_entropy(out, y[i : i + 1000], reduction="sum"))
        return correct / len(y), loss / len(y)

    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        batches = torch.randperm(len(train_y))
        for i in range(0, len(train_y), 128):
            index = batches[i : i + 128]
            loss = F.cross_entropy(model(train_x[index]), train_y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        accuracy, val_loss = accuracy_and_loss(val_x, val_y)
        print(f"Epoch [{epoch}] val_loss {val_loss:.4f} val_acc {accuracy:.4f}", file=sys.stderr)
    print(f"timing: training {time.perf_counter() - start:.3f} s ({args.epochs} epochs)", file=sys.stderr)

    start = time.perf_counter()
    test_accuracy, test_loss = accuracy_and_loss(test_images, test_labels)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out / "model.pt")
    print(f"timing: end of run {time.perf_counter() - start:.3f} s (test, model.pt)", file=sys.stderr)
    print(json.dumps({"test_accuracy": test_accuracy, "test_loss": test_loss}))


if __name__ == "__main__":
    main()
