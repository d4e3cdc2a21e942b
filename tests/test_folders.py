"""data/folders.py: a folder of class subfolders read into uint8 arrays, checked, and cached."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fmnist_ignite import ConfigError, DataError
from fmnist_ignite.data import folders
from fmnist_ignite.data.folders import CACHE_FOLDER, read_image_folder

from .helpers import write_image_folder


def test_classes_come_from_the_sorted_folder_names_and_gray_images_have_one_channel(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images")
    (root / "train" / ".hidden").mkdir()  # hidden folders and files are left out
    (root / "train" / "bag" / ".DS_Store").write_bytes(b"junk")
    read = read_image_folder(root, None, None)
    assert read.classes == ("bag", "coat", "shirt")
    images, labels = read.train
    assert images.dtype == np.uint8 and images.shape == (12, 1, 10, 12)
    assert labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert (
        read.test is not None and read.test[0].shape == (6, 1, 10, 12) and read.test[1].tolist() == [0, 0, 1, 1, 2, 2]
    )
    expected = np.asarray(Image.open(root / "train" / "coat" / "0.png"))
    assert np.array_equal(images[4, 0], expected), "a PNG's pixels, untouched"
    assert abs(float(images[labels == 2].mean()) - 160) < 5, "class shirt (third folder) is the lightest"


def test_colour_images_have_three_channels_and_channels_can_be_chosen(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images", color=True, test=False)
    images, _ = read_image_folder(root, None, None).train
    assert images.shape == (12, 3, 10, 12)
    assert images[:, 0].mean() > images[:, 1].mean() + 40, "red channel first"
    gray, _ = read_image_folder(root, None, 1).train
    assert gray.shape == (12, 1, 10, 12)
    rgb, _ = read_image_folder(write_image_folder(tmp_path / "gray"), None, 3).train
    assert rgb.shape == (12, 3, 10, 12) and np.array_equal(rgb[:, 0], rgb[:, 2])


def test_images_of_any_size_are_converted_to_image_size(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images", size=(30, 20), test=False)
    Image.new("L", (7, 50), 255).save(root / "train" / "bag" / "tall.png")
    with pytest.raises(ConfigError) as info:
        read_image_folder(root, None, None)
    assert str(info.value) == (
        f"{root / 'train' / 'bag' / 'tall.png'} is 7x50 pixels but {root / 'train' / 'bag' / '0.png'} is 30x20; "
        "set data.image_size to convert every image to one size"
    )
    images, labels = read_image_folder(root, 16, None).train
    assert images.shape == (13, 1, 16, 16) and len(labels) == 13
    assert images[4].min() == 255, "the white tall image (sorted after the four numbered ones) stays white"


def test_a_second_read_comes_from_the_cache_and_a_changed_file_is_decoded_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_image_folder(tmp_path / "images")
    first = read_image_folder(root, None, None)
    (cache,) = (root / CACHE_FOLDER).iterdir()

    def no_decoding(path: Path, mode: str) -> Image.Image:
        raise AssertionError(f"{path} decoded again")

    with monkeypatch.context() as patched:
        patched.setattr(folders, "open_image", no_decoding)
        again = read_image_folder(root, None, None)
    assert np.array_equal(again.train[0], first.train[0]) and np.array_equal(again.test[0], first.test[0])

    changed = root / "train" / "bag" / "0.png"
    Image.new("L", (12, 10), 7).save(changed)
    os.utime(changed, ns=(1, 1))  # another modification time, whatever the clock's resolution
    renewed = read_image_folder(root, None, None)
    assert renewed.train[0][0].max() == 7
    assert [p.name for p in (root / CACHE_FOLDER).iterdir()] != [cache.name], "the old cache is replaced"
    assert len(list((root / CACHE_FOLDER).iterdir())) == 1
    assert read_image_folder(root, 8, None).train[0].shape[2:] == (8, 8), "the size is part of the cache's key"


def test_a_damaged_cache_is_decoded_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_image_folder(tmp_path / "images")
    first = read_image_folder(root, None, None)
    (cache,) = (root / CACHE_FOLDER).iterdir()
    cache.write_bytes(b"not a zip file")
    again = read_image_folder(root, None, None)
    assert np.array_equal(again.train[0], first.train[0])
    assert f"the cache {cache} cannot be read" in caplog.text


def _no_folder(root: Path) -> Path:
    return root / "none"


def _no_class_folders(root: Path) -> Path:
    (root / "empty" / "train").mkdir(parents=True)
    return root / "empty"


def _empty_class(root: Path) -> Path:
    (root / "train" / "hat").mkdir()
    return root


def _text_file(root: Path) -> Path:
    (root / "train" / "bag" / "notes.txt").write_text("x")
    return root


def _broken_png(root: Path) -> Path:
    (root / "train" / "bag" / "broken.png").write_bytes(b"\x89PNG broken")
    return root


def _loose_file(root: Path) -> Path:
    (root / "train" / "loose.png").write_bytes(b"")
    return root


def _extra_test_class(root: Path) -> Path:
    (root / "test" / "hat").mkdir()
    Image.new("L", (12, 10)).save(root / "test" / "hat" / "0.png")
    return root


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            _no_folder,
            "data.root {root}/none does not exist; put your images in {root}/none/train/<class>/ (PNG or "
            "JPEG, one folder per class)",
        ),
        (
            _no_class_folders,
            "{root}/empty/train holds no class folders; put your images in {root}/empty/train/<class>/ "
            "(one folder per class)",
        ),
        (_empty_class, "{root}/train/hat: a class folder with no images; add PNG or JPEG files to it, or remove it"),
        (
            _text_file,
            "{root}/train/bag/notes.txt: not a PNG or JPEG image (*.png, *.jpg, *.jpeg); remove it from "
            "{root}/train or convert it",
        ),
        (_broken_png, "{root}/train/bag/broken.png: not an image file PIL can read"),
        (
            _loose_file,
            "{root}/train/loose.png: train/ holds class folders only; move the file into a folder named "
            "after its class",
        ),
        (
            _extra_test_class,
            "{root}: the class folders of test/ must be those of train/ (test/ has hat that train/ "
            "lacks); make them the same",
        ),
    ],
)
def test_bad_folders_are_one_line_naming_the_path(tmp_path: Path, damage, message: str) -> None:
    root = write_image_folder(tmp_path / "images", classes=("bag", "coat"))
    with pytest.raises((ConfigError, DataError)) as info:
        read_image_folder(damage(root), None, None)
    assert str(info.value) == message.format(root=root)
    # A folder laid out wrongly is a setting to fix (exit 2); a file that cannot be decoded is damaged data (exit 1).
    assert type(info.value) is (DataError if damage is _broken_png else ConfigError)


def test_test_classes_missing_a_class_are_refused(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images", classes=("bag", "coat"))
    for path in (root / "test" / "coat").iterdir():
        path.unlink()
    (root / "test" / "coat").rmdir()
    with pytest.raises(ConfigError, match=r"the class folders of test/ must be those of train/ \(test/ lacks coat\)"):
        read_image_folder(root, None, None)
