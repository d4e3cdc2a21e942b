"""Exporting a run: the ONNX and TorchScript files against the torch model on 1,000 test images."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from fmnist_ignite import (
    ConfigError,
    ExportError,
    LogisticRegression,
    build_experiment,
    load_config,
    predict_images,
    preprocess,
)
from fmnist_ignite.engine import make_prepare_batch
from fmnist_ignite.export import ExportableClassifier, export_run

from .conftest import CLI, REPO, small_overrides, write_fashion_gz
from .helpers import onnx_route_classes, product_photo, run_without_torch

N_IMAGES = 1000
TOLERANCE = 1e-5

# torch deprecates the TorchScript-based ONNX exporter and TorchScript itself; both still work.
pytestmark = [
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning"),
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A finished small run whose test split is 1,000 images, exported both ways, and its torch model's answers."""
    tmp = tmp_path_factory.mktemp("export")
    system = write_fashion_gz(tmp / "system" / "fashion-mnist", n_test=N_IMAGES)
    config = load_config(REPO / "configs" / "base.yaml", small_overrides(tmp, system))
    experiment = build_experiment(config)
    metrics = experiment.run()
    data = experiment.data
    x, _ = experiment.context.prepare_batch((data.test_images, data.test_labels), "cpu", False)
    model = experiment.model.cpu().eval()
    with torch.no_grad():
        expected = model(x).softmax(1).numpy()
    return {
        "run": config.run_dir,
        "metrics": metrics,
        "images": data.test_images.numpy(),
        "labels": data.test_labels.numpy(),
        "classes": list(data.classes),
        "expected": expected,
        "onnx": export_run(config.run_dir),
        "torchscript": export_run(config.run_dir, fmt="torchscript"),
        "tmp": tmp,
    }


def onnx_probabilities(path: Path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"pixels": images.astype(np.float32)})[0])


def torchscript_probabilities(path: Path, images: np.ndarray | torch.Tensor) -> np.ndarray:
    model = torch.jit.load(str(path))
    with torch.no_grad():
        return model(torch.as_tensor(images)).numpy()


def assert_agrees(probabilities: np.ndarray, exported: dict) -> None:
    """Same shape, same argmax for every image, probabilities within TOLERANCE, and the run's test accuracy."""
    expected = exported["expected"]
    assert probabilities.shape == expected.shape == (N_IMAGES, 10)
    assert probabilities.dtype == np.float32
    assert (probabilities.argmax(1) == expected.argmax(1)).all()
    assert np.abs(probabilities - expected).max() <= TOLERANCE
    correct = int((probabilities.argmax(1) == exported["labels"]).sum())
    assert correct / N_IMAGES == exported["metrics"]["test_accuracy"]


def test_the_run_tests_on_1000_images(exported: dict) -> None:
    assert exported["images"].shape == (N_IMAGES, 1, 28, 28) and exported["images"].dtype == np.uint8
    assert exported["onnx"] == exported["run"] / "model.onnx"
    assert exported["torchscript"] == exported["run"] / "model.ts"


def test_onnx_agrees_with_the_torch_model(exported: dict) -> None:
    assert_agrees(onnx_probabilities(exported["onnx"], exported["images"]), exported)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_torchscript_agrees_with_the_torch_model(exported: dict, dtype: torch.dtype) -> None:
    images = torch.from_numpy(exported["images"]).to(dtype)
    assert_agrees(torchscript_probabilities(exported["torchscript"], images), exported)


@pytest.mark.parametrize("size", [1, 7])
def test_batch_axis_is_dynamic(exported: dict, size: int) -> None:
    images, expected = exported["images"][:size], exported["expected"][:size]
    for probabilities in (
        onnx_probabilities(exported["onnx"], images),
        torchscript_probabilities(exported["torchscript"], torch.from_numpy(images)),
    ):
        assert probabilities.shape == (size, 10)
        assert np.abs(probabilities - expected).max() <= TOLERANCE


def test_onnx_file_describes_itself(exported: dict) -> None:
    model = onnx.load(exported["onnx"])
    onnx.checker.check_model(model)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (pixels,) = model.graph.input
    assert pixels.name == "pixels" and pixels.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    batch, *image = pixels.type.tensor_type.shape.dim
    assert batch.dim_param == "batch" and [d.dim_value for d in image] == [1, 28, 28]
    meta = {p.key: json.loads(p.value) for p in model.metadata_props}
    data = json.loads((exported["run"] / "data.json").read_text())
    assert meta["classes"] == exported["classes"] == data["classes"]
    keys = ("image_shape", "mean", "std", "normalize", "dataset", "background")
    assert {k: meta[k] for k in keys} == {k: data[k] for k in keys}
    assert meta["dataset"] == "fashion_mnist"
    assert meta["weights"] == "model.pt"
    session_meta = ort.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"]).get_modelmeta()
    assert json.loads(session_meta.custom_metadata_map["classes"]) == exported["classes"]


def test_torchscript_file_carries_the_same_metadata(exported: dict) -> None:
    files = {"metadata.json": ""}
    torch.jit.load(str(exported["torchscript"]), _extra_files=files)
    meta = json.loads(files["metadata.json"])
    assert meta["classes"] == exported["classes"] and meta["image_shape"] == [1, 28, 28]
    assert meta["weights"] == "model.pt" and meta["input"].startswith("pixels: uint8 or float")
    assert meta["dataset"] == "fashion_mnist" and "background" in meta


def test_preprocess_py_goes_next_to_the_model_and_is_never_written_over_unasked(
    exported: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = Path(preprocess.__file__).read_bytes()
    assert (exported["run"] / "preprocess.py").read_bytes() == source
    code, out, err = _export_cli(capsys, str(exported["run"]), "--output", str(tmp_path / "a.onnx"))
    assert (code, out, err) == (0, f"{tmp_path / 'a.onnx'}\n", "")
    assert (tmp_path / "preprocess.py").read_bytes() == source
    code, _, err = _export_cli(
        capsys, str(exported["run"]), "--output", str(tmp_path / "b.ts"), "--format", "torchscript"
    )
    assert (code, err) == (0, ""), "the same preprocess.py is already there"

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "preprocess.py").write_text("my own code\n")
    code, out, err = _export_cli(capsys, str(exported["run"]), "--output", str(mine / "model.onnx"))
    assert (code, out) == (2, "") and err == f"error: {mine / 'preprocess.py'} exists; pass --force to replace it\n"
    assert sorted(p.name for p in mine.iterdir()) == ["preprocess.py"], "nothing written, the model neither"
    assert (mine / "preprocess.py").read_text() == "my own code\n"
    code, _, _ = _export_cli(capsys, str(exported["run"]), "--output", str(mine / "model.onnx"), "--force")
    assert code == 0 and (mine / "preprocess.py").read_bytes() == source and (mine / "model.onnx").is_file()


@pytest.mark.parametrize("normalize", [True, False])
def test_classifier_scales_pixels_as_training_does(normalize: bool) -> None:
    torch.manual_seed(0)
    model = LogisticRegression(784, 10).eval()
    pixels = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    x, _ = make_prepare_batch(0.286, 0.353, normalize)((pixels, torch.zeros(5)), "cpu", False)
    classifier = ExportableClassifier(model, 0.286, 0.353, normalize)
    with torch.no_grad():
        assert torch.equal(classifier(pixels), model(x).softmax(1))
        assert torch.equal(classifier(pixels.float()), classifier(pixels))


def test_serving_snippet_in_the_docs_runs_without_torch(exported: dict, tmp_path: Path) -> None:
    """The docs' onnxruntime example, run as written on a photo, answers as ``predict`` does."""
    text = (REPO / "docs" / "export.rst").read_text()
    block = re.search(r"\.\. code-block:: python\n\n((?:   .*\n|\n)+)", text)
    assert block is not None
    code = "\n".join(line[3:] for line in block.group(1).splitlines())
    (tmp_path / "runs" / "base").mkdir(parents=True)
    for name in ("model.onnx", "preprocess.py"):
        (tmp_path / "runs" / "base" / name).write_bytes((exported["run"] / name).read_bytes())
    product_photo(exported["images"][3, 0], np.random.default_rng(3)).save(tmp_path / "boot.jpg", quality=90)
    name, probability = run_without_torch(code, tmp_path).strip().rsplit(" ", 1)
    (expected,) = predict_images(exported["run"], [tmp_path / "boot.jpg"], top_k=1)
    assert name == expected["prediction"]
    assert float(probability) == pytest.approx(expected["top"][0]["probability"], abs=TOLERANCE)


def test_the_onnx_route_gives_predict_s_classes_on_the_same_files(exported: dict, tmp_path: Path) -> None:
    """model.onnx and the preprocess.py shipped beside it, imported from the export folder without the
    package, against ``predict`` on photos, originals, a cut-out and a dark picture."""
    images, rng = exported["images"], np.random.default_rng(5)
    files = []
    for i in range(12):
        files.append(tmp_path / f"photo{i}.jpg")
        product_photo(images[i, 0], rng).save(files[-1], quality=90)
        files.append(tmp_path / f"original{i}.png")
        Image.fromarray(images[i, 0]).save(files[-1])
    cutout = Image.new("RGBA", (200, 150), (0, 0, 0, 0))
    cutout.paste(Image.fromarray(255 - images[20, 0]).resize((112, 112)).convert("RGBA"), (60, 20))
    cutout.save(tmp_path / "cutout.png")
    Image.fromarray(images[21, 0]).resize((90, 90)).save(tmp_path / "dark.png")
    files += [tmp_path / "cutout.png", tmp_path / "dark.png"]
    folder = exported["onnx"].parent
    assert (folder / "preprocess.py").read_bytes() == Path(preprocess.__file__).read_bytes()
    classes = onnx_route_classes(exported["onnx"], files)
    assert classes == [answer["prediction"] for answer in predict_images(exported["run"], files)]
    assert len(set(classes)) > 1


def test_cli_exports_torchscript_and_chooses_weights(exported: dict, tmp_path: Path, cli: Callable[..., CLI]) -> None:
    run = exported["run"]
    code, out, err = cli("export", str(run), "--format", "torchscript")
    assert code == 0, err
    assert out == f"{run / 'model.ts'}\n"
    assert_agrees(torchscript_probabilities(run / "model.ts", exported["images"]), exported)

    last = tmp_path / "last.onnx"
    code, out, err = cli("export", str(run), "--checkpoint", "last", "--output", str(last))
    assert code == 0, err
    assert out == f"{last}\n"
    weights = json.loads({p.key: p.value for p in onnx.load(last).metadata_props}["weights"])
    assert re.fullmatch(r"checkpoints/checkpoint_\d+\.pt", weights)


def test_cli_refuses_an_unknown_format(exported: dict, cli: Callable[..., CLI]) -> None:
    code, _, err = cli("export", str(exported["run"]), "--format", "tflite")
    assert code == 2
    assert "argument --format: invalid choice: 'tflite'" in err


def test_cli_refuses_a_missing_run_directory(tmp_path: Path, cli: Callable[..., CLI]) -> None:
    missing = tmp_path / "nope"
    code, _, err = cli("export", str(missing))
    assert code == 2
    assert err == f"error: run directory {missing} does not exist\n"
    assert not missing.exists()


def test_unknown_format_from_python(exported: dict) -> None:
    with pytest.raises(ConfigError, match=r"^export format 'tflite': use onnx or torchscript$"):
        export_run(exported["run"], fmt="tflite")


def test_missing_onnx_names_the_extra(exported: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # what `import onnx` meets where it is not installed
    with pytest.raises(ExportError) as raised:
        export_run(exported["run"], output=tmp_path / "model.onnx")
    assert str(raised.value) == "exporting to ONNX needs the onnx package: pip install 'fmnist_ignite[export]'"
    assert list(tmp_path.iterdir()) == []


def _export_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from fmnist_ignite.app.cli import main

    code = main(["export", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_export_output_never_replaces_a_special_file_a_run_file_or_an_unasked_file(
    exported: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Class 1 of issue 19: an output lands only where nothing is, or on a regular file with --force."""
    import os

    run = exported["run"]
    weights = (run / "model.pt").read_bytes()
    for victim in (run / "model.pt", run / "config.yaml", run / "checkpoints" / "best_model.pt"):
        before = victim.read_bytes()
        code, out, err = _export_cli(capsys, str(run), "--output", str(victim), "--force")
        assert (code, out) == (2, "") and err == (
            f"error: {victim} is a file of the run in {run}; an output is never written over it: name another file\n"
        )
        assert victim.read_bytes() == before
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    code, _, err = _export_cli(capsys, str(run), "--output", str(fifo), "--force")
    assert (
        code == 2
        and err == f"error: {fifo} is not a regular file (a device, a FIFO or a socket); an output never replaces one\n"
    )
    assert fifo.is_fifo()
    code, _, err = _export_cli(capsys, str(run), "--output", "/dev/null", "--force")
    assert code == 2 and "/dev/null is not a regular file" in err
    folder = tmp_path / "folder"
    folder.mkdir()
    code, _, err = _export_cli(capsys, str(run), "--output", str(folder))
    assert code == 2 and err == f"error: {folder} is a folder; name the file to write\n"
    link = tmp_path / "link.onnx"
    link.symlink_to(tmp_path / "target.onnx")
    code, _, err = _export_cli(capsys, str(run), "--output", str(link), "--force")
    assert code == 2 and "is a symbolic link" in err and not (tmp_path / "target.onnx").exists()

    mine = tmp_path / "mine.onnx"
    mine.write_text("a file of mine")
    code, _, err = _export_cli(capsys, str(run), "--output", str(mine))
    assert code == 2 and err == f"error: {mine} exists; pass --force to replace it\n"
    assert mine.read_text() == "a file of mine"
    code, out, _ = _export_cli(capsys, str(run), "--output", str(mine), "--force")
    assert code == 0 and out == f"{mine}\n" and onnx.load(mine).graph is not None
    assert (run / "model.pt").read_bytes() == weights
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "no temporary file left"


def test_export_into_a_read_only_run_is_one_line(
    exported: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Class 6 of issue 19: the run's own export slot, unwritable, is one line naming the file."""
    import os
    import shutil
    import tempfile

    run = tmp_path / "run"
    shutil.copytree(exported["run"], run)
    (run / "model.onnx").unlink(missing_ok=True)
    run.chmod(0o555)
    if os.geteuid() == 0:  # root writes into read-only folders: the folder refuses as it would anyone else

        def refused(*args: object, **kwargs: object) -> None:
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(tempfile, "mkstemp", refused)
    try:
        code, out, err = _export_cli(capsys, str(run))
    finally:
        run.chmod(0o755)
    assert (code, out) == (2, "") and err == f"error: {run / 'model.onnx'}: cannot be written (Permission denied)\n"
