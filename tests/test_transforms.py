"""data/transforms.py: data.transforms on each training image, seeded from (seed, epoch, batch), resumable."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch

from fmnist_ignite import Config, ConfigError, build_experiment, resume_experiment
from fmnist_ignite.data.loaders import Shard, TensorLoader
from fmnist_ignite.data.transforms import BatchTransform

from . import plugins
from .conftest import values

CROP_AND_FLIP = [{"RandomCrop": {"size": 8, "padding": 2}}, {"RandomHorizontalFlip": {}}]
TRANSFORMS = "data.transforms=[{RandomCrop: {size: 28, padding: 2}}, {RandomHorizontalFlip: {}}]"


def ramp(n: int) -> torch.Tensor:
    """``n`` equal images ``(n, 1, 8, 8)`` whose columns brighten left to right: a flip or a shift shows."""
    return (torch.arange(8, dtype=torch.uint8) * 30).expand(n, 1, 8, 8).contiguous()


def test_each_image_draws_its_own_parameters() -> None:
    images = ramp(64)
    flipped = BatchTransform([{"RandomHorizontalFlip": {}}], seed=0)(images, epoch=1, batch=0)
    left_dark = flipped[:, 0, 0, 0] < flipped[:, 0, 0, 7]
    assert 10 < int(left_dark.sum()) < 54, "some images flipped, some not"
    assert torch.equal(flipped[~left_dark], images[~left_dark].flip(-1))
    cropped = BatchTransform([{"RandomCrop": {"size": 8, "padding": 2}}], seed=0)(images, epoch=1, batch=0)
    assert len({tuple(image.flatten().tolist()) for image in cropped}) > 10, "many different crops"


def one_by_one(transform: BatchTransform, images: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    """The definition the grouped calls reproduce: each transform called on each image alone, transform ``k``
    after seeding with the image's seed + ``k``."""
    out = []
    with torch.random.fork_rng(devices=[]):
        for image, seed in zip(images, seeds, strict=True):
            for number, step in enumerate(transform.steps):
                torch.manual_seed(seed + number)
                image = step(image)
            out.append(image)
    return torch.stack(out)


def test_grouped_calls_give_what_a_call_per_image_gives() -> None:
    images = torch.randint(0, 256, (50, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    # own forward (per image), tensor parameters (per image), float parameters (groups of one), grouped ones
    entries = [
        *CROP_AND_FLIP,
        {"TrivialAugmentWide": {}},
        {"RandomErasing": {"p": 0.5}},
        {"RandomRotation": {"degrees": 20}},
    ]
    transform = BatchTransform(entries, seed=3)
    out = transform(images, epoch=2, batch=5)
    assert torch.equal(out, one_by_one(transform, images, transform.image_seeds(2, 5, 0, 50)))
    assert out.dtype == torch.uint8 and out.shape == images.shape


def test_the_randomness_is_a_function_of_seed_epoch_and_batch_and_leaves_torch_s_generator_alone() -> None:
    images = ramp(32)
    transform = BatchTransform(CROP_AND_FLIP, seed=0)
    before = torch.random.get_rng_state()
    first = transform(images, epoch=1, batch=0)
    assert torch.equal(torch.random.get_rng_state(), before), "the run's own draws are not disturbed"
    torch.manual_seed(123)  # whatever the global generator holds
    assert torch.equal(BatchTransform(CROP_AND_FLIP, seed=0)(images, epoch=1, batch=0), first)
    for other in ({"epoch": 2, "batch": 0}, {"epoch": 1, "batch": 1}):
        assert not torch.equal(transform(images, **other), first)
    assert not torch.equal(BatchTransform(CROP_AND_FLIP, seed=1)(images, epoch=1, batch=0), first)


def test_the_shares_of_a_data_parallel_batch_are_transformed_as_the_whole_batch() -> None:
    images = torch.randint(0, 256, (23, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    labels = torch.arange(23)
    transform = BatchTransform(CROP_AND_FLIP, seed=4)
    whole = list(TensorLoader(images, labels, 10, shuffle=True, seed=4, transform=transform))
    shares = [list(TensorLoader(images, labels, 10, True, 4, shard=Shard(r, 3), transform=transform)) for r in range(3)]
    for number, (batch, batch_labels) in enumerate(whole[:2]):  # the last batch (3 images) splits as 1+1+1
        assert torch.equal(torch.cat([shares[r][number][0] for r in range(3)]), batch)
        assert torch.equal(torch.cat([shares[r][number][1] for r in range(3)]), batch_labels)
    untransformed = list(TensorLoader(images, labels, 10, shuffle=True, seed=4))
    assert not torch.equal(whole[0][0], untransformed[0][0]) and torch.equal(whole[0][1], untransformed[0][1])


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (
            [{"Resize": {"size": 4}}],
            "data.transforms (Resize) turn a uint8 (1, 8, 8) training image into a uint8 (1, 4, 4) one; the model "
            "takes the data's shape and the batches stay uint8: keep the size (e.g. RandomCrop with padding) and "
            "leave out type conversions and Normalize",
        ),
        (
            [{"RandomHorizontalFlip": {}}, {"Normalize": {"mean": [0.5], "std": [0.5]}}],
            "data.transforms (RandomHorizontalFlip, Normalize) fail on a uint8 (1, 8, 8) training image (TypeError: "
            "Input tensor should be a float tensor. Got torch.uint8.); use transforms that take uint8 images",
        ),
    ],
)
def test_transforms_that_change_the_images_shape_or_type_are_refused(entries: list, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        BatchTransform(entries, seed=0).check(ramp(1)[0])
    assert str(info.value) == message


def test_only_training_batches_are_transformed(make_config: Callable[..., Config]) -> None:
    experiment = build_experiment(make_config(TRANSFORMS))
    assert isinstance(experiment.loaders["train"].transform, BatchTransform)
    assert experiment.loaders["val"].transform is None and experiment.loaders["test"].transform is None


def test_a_run_without_transforms_is_the_run_of_before(make_config: Callable[..., Config], reference) -> None:
    experiment = build_experiment(make_config("early_stopping.enabled=false", "data.transforms=[]"))
    experiment.run()
    assert values(experiment.history) == reference
    transformed = build_experiment(make_config("early_stopping.enabled=false", TRANSFORMS, "name=transformed"))
    transformed.run()
    assert values(transformed.history)[0] != reference[0], "the transforms change training"
    assert [r[4] for r in values(transformed.history)] != [r[4] for r in reference]


def test_a_resumed_run_with_transforms_ends_as_the_uninterrupted_one(make_config: Callable[..., Config]) -> None:
    overrides = ("trainer.max_epochs=3", "early_stopping.enabled=false", TRANSFORMS)
    full = build_experiment(make_config("name=full", *overrides))
    full.run()
    cut = build_experiment(make_config("name=cut", *overrides))
    cut.add_handler(plugins.StopAfter, event="EPOCH_STARTED", epoch=1)
    with pytest.raises(KeyboardInterrupt):
        cut.run()
    resumed = resume_experiment(cut.run_dir)
    metrics = resumed.run()
    assert values(resumed.history) == values(full.history)
    assert metrics == json.loads((full.run_dir / "metrics.json").read_text())
