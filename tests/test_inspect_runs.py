"""inspect_runs.py: evaluate, predict and compare, from Python and the command line; what they read is untrusted."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fmnist_ignite import ConfigError, RunDirError, build_experiment, compare_runs, load_config, predict_images
from fmnist_ignite.inspect_runs import run_labels

from .conftest import BASE, CLI, idx_images, idx_labels, small_overrides, synthetic_images
from .helpers import png, product_photo


def test_predict_answers_good_images_next_to_a_bomb(finished: dict, tmp_path: Path, cli: Callable[..., CLI]) -> None:
    run = finished["run"]
    bomb, good = tmp_path / "bomb.png", tmp_path / "good.png"
    bomb.write_bytes(png(100_000, 100_000))
    Image.new("L", (28, 28), 128).save(good)
    answers = predict_images(run, [bomb, good])
    error = f"{bomb}: 100000x100000 pixels is more than the 50,000,000 allowed"
    assert answers[0] == {"file": str(bomb), "error": error}
    assert answers[1]["file"] == str(good) and answers[1]["prediction"] == answers[1]["top"][0]["class"]
    code, _, err = cli("predict", str(run), str(bomb), str(good))
    assert code == 1 and err == f"error: {error}\n"


@pytest.fixture(scope="module")
def dark_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A run on Fashion-MNIST-like data: light garments on a black background."""
    tmp = tmp_path_factory.mktemp("dark")
    system = tmp / "system"
    system.mkdir()
    for prefix, n, seed in (("train", 600, 1), ("t10k", 100, 2)):
        images, labels = synthetic_images(n, (28, 28), seed)
        images[:, :4, :] = images[:, -4:, :] = images[:, :, :4] = images[:, :, -4:] = 0
        (system / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_images(images)))
        (system / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_labels(labels)))
    config = load_config(BASE, [*small_overrides(tmp, system), "trainer.max_epochs=2", "name=dark"])
    experiment = build_experiment(config)
    experiment.run()
    return {"run": experiment.run_dir, "images": experiment.data.test_images, "tmp": tmp}


def test_predict_inverts_a_white_background_photo_and_answers_every_kind_of_input(dark_run: dict) -> None:
    run, tmp = dark_run["run"], dark_run["tmp"]
    assert json.loads((run / "data.json").read_text())["background"] == "dark"
    pixels = dark_run["images"][3, 0].numpy()
    dark, white = tmp / "dark.png", tmp / "white.png"
    Image.fromarray(pixels).save(dark)
    Image.fromarray(255 - pixels).convert("RGB").save(white)  # a colour photo of it on white
    broken = tmp / "broken.png"
    broken.write_bytes(b"\x89PNG but not really")

    original, photo, bad = predict_images(run, [dark, white, broken])
    assert original["inverted"] is False and photo["inverted"] is True
    assert photo["prediction"] == original["prediction"] and photo["top"] == original["top"]
    assert bad == {"file": str(broken), "error": f"{broken}: not an image file PIL can read"}
    assert predict_images(run, [white], invert="no")[0]["inverted"] is False

    as_pil, as_uint8, as_float = predict_images(
        run,
        [Image.fromarray(pixels), torch.from_numpy(pixels), torch.from_numpy(pixels).float() / 255],
        top_k=10,
    )
    assert as_pil["file"] is None and len(as_pil["top"]) == 10
    assert [t["class"] for t in as_pil["top"]][:3] == [t["class"] for t in original["top"]]
    assert as_uint8["top"] == as_pil["top"]
    assert as_float["prediction"] == as_pil["prediction"]
    assert predict_images(run, [torch.zeros(2, 2, 2, 2)])[0]["error"].startswith("image 0: ")
    with pytest.raises(ConfigError, match="top_k must be at least 1"):
        predict_images(run, [dark], top_k=0)


def test_predict_converts_a_product_photo_as_preprocess_does(dark_run: dict) -> None:
    import numpy as np

    from fmnist_ignite import load_trained_model
    from fmnist_ignite.preprocess import convert, plain

    run, tmp = dark_run["run"], dark_run["tmp"]
    path = tmp / "shop.jpg"
    product_photo(dark_run["images"][7, 0].numpy(), np.random.default_rng(7)).save(path, quality=90)
    (answer,) = predict_images(run, [path], top_k=10)
    trained = load_trained_model(run)
    with Image.open(path) as picture:
        pixels = convert(picture, "fashion_mnist", (1, 28, 28), "dark")
        assert not np.array_equal(pixels, 255 - plain(picture, (1, 28, 28))), "trimmed and fitted, not only resized"
    inputs, _ = trained.prepare_batch((torch.from_numpy(pixels)[None], torch.zeros(1)), "cpu", False)
    with torch.no_grad():
        probabilities = sorted(trained.model(inputs).softmax(1)[0].tolist(), reverse=True)
    assert answer["inverted"] is True
    assert [t["probability"] for t in answer["top"]] == pytest.approx(probabilities, abs=1e-6)
    (kept,) = predict_images(run, [path], top_k=10, invert="no")
    assert kept["inverted"] is False and kept["top"] != answer["top"]


def test_predict_command_top_k_and_invert(dark_run: dict, cli: Callable[..., CLI]) -> None:
    run, tmp = dark_run["run"], dark_run["tmp"]
    white = tmp / "white-cli.png"
    Image.fromarray(255 - dark_run["images"][5, 0].numpy()).save(white)
    code, out, err = cli("predict", str(run), str(white), "--top-k", "5")
    answer = predict_images(run, [white], top_k=5)[0]
    assert code == 0 and err == ""
    top = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in answer["top"])
    assert out == f"{white}: {answer['prediction']} ({top}) [inverted]\n"
    code, out, _ = cli("predict", str(run), str(white), "--invert", "no", "--json")
    assert code == 0 and json.loads(out)[0]["inverted"] is False
    code, _, err = cli("predict", str(run), str(white), "--top-k", "0")
    assert code == 2 and "argument --top-k: '0' is not a whole number of at least 1" in err


def test_compare_shows_readable_differences_and_tells_same_named_runs_apart(
    tmp_path: Path, system_dir: Path, cli: Callable[..., CLI], monkeypatch: pytest.MonkeyPatch
) -> None:
    record = "handlers=[{target: 'tests.plugins:RecordMetrics', kwargs: {filename: rec.jsonl}}]"
    runs = []
    for folder, extra in (("a", ["logging.progress_bar=true"]), ("b", ["optimizer.lr=0.05", record])):
        config = load_config(BASE, [*small_overrides(tmp_path, system_dir), f"output_dir={tmp_path / folder}", *extra])
        experiment = build_experiment(load_config(config.to_dict(), ["trainer.max_epochs=1"]))
        experiment.run()
        runs.append(experiment.run_dir)
    result = compare_runs([str(r) for r in runs])
    assert result["differing"] == ["handlers", "optimizer.lr"], "logging.* is display only"
    assert [row["settings"] for row in result["runs"]] == [
        {"handlers": "[]", "optimizer.lr": "0.01"},
        {"handlers": "tests.plugins:RecordMetrics(filename=rec.jsonl)", "optimizer.lr": "0.05"},
    ]

    monkeypatch.chdir(tmp_path)
    code, out, err = cli("compare", *map(str, runs))
    assert code == 0 and out.splitlines()[0].split() == [
        "run",
        "test_accuracy",
        "monitor",
        "best_value",
        "best_epoch",
        "epochs",
        "handlers",
        "optimizer.lr",
    ]
    assert "tests.plugins:RecordMetrics(filename=rec.jsonl)" in out.splitlines()[2]
    assert "add --output" in err and not list(tmp_path.glob("*.png")), "no figure in the current folder unasked"

    figures = tmp_path / "figures"
    figures.mkdir()
    code, out, _ = cli("compare", *map(str, runs), "--output", str(figures))
    assert code == 0 and out.splitlines()[-1] == f"validation curves: {figures / 'compare.png'}"
    with Image.open(figures / "compare.png") as image:
        assert image.size == (1000, 400)

    assert run_labels([str(r) for r in runs]) == {str(r): str(r) for r in runs}, "same names: the paths"
    assert run_labels(["runs/base", "runs/lr005"]) == {"runs/base": "base", "runs/lr005": "lr005"}


def _copy(finished: dict, where: Path, name: str) -> Path:
    copy = where / name
    shutil.copytree(finished["run"], copy)
    return copy


@pytest.mark.parametrize(
    ("file", "content", "problem"),
    [
        ("history.json", "{broken", "history.json: not valid JSON"),
        ("history.json", "", "history.json: empty; the run wrote it whole, so it was changed since"),
        ("history.json", "{}", "history.json: expected a JSON list of epoch records, got dict"),
        (
            "history.json",
            '[{"epoch": 1, "val_accuracy": 0.5}]',
            "history.json: record 0 (epoch 1) lacks the number 'val_loss'",
        ),
        ("history.json", '[{"val_loss": 1}]', "history.json: record 0 is not an epoch record"),
        ("metrics.json", "", "metrics.json: empty"),
        ("metrics.json", "[1, 2]", "metrics.json: expected a JSON object, got list"),
        ("metrics.json", '{"test_accuracy": "high"}', "metrics.json: 'test_accuracy' must be a number"),
        ("config.yaml", "name: [", "config.yaml"),
    ],
)
def test_compare_answers_the_good_runs_and_names_the_bad_file(
    finished: dict, tmp_path: Path, cli: Callable[..., CLI], file: str, content: str, problem: str
) -> None:
    good = _copy(finished, tmp_path, "good")
    bad = _copy(finished, tmp_path, "bad")
    (bad / file).write_text(content)
    code, out, err = cli("compare", str(good), str(bad))
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(bad) in errors[0] and problem in errors[0]
    assert "Traceback" not in err
    assert out.splitlines()[1].split()[0] == str(good), "the readable run is still compared"


def test_compare_with_only_bad_runs_is_one_line(finished: dict, tmp_path: Path, cli: Callable[..., CLI]) -> None:
    bad = _copy(finished, tmp_path, "bad")
    (bad / "history.json").write_text("[")
    code, _, err = cli("compare", str(bad))
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: {bad / 'history.json'}: not valid JSON (Expecting value: "
        "line 1 column 2 (char 1)); the run wrote it whole, so it was changed since"
    ]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    history=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.sampled_from(["epoch", "val_loss", "val_accuracy", "x"]), inner, max_size=4)
        ),
        max_leaves=12,
    ),
    metrics=st.dictionaries(
        st.sampled_from(["test_accuracy", "best_value", "monitor", "best_epoch"]),
        st.none() | st.floats() | st.text(max_size=3) | st.integers(),
        max_size=4,
    ),
)
def test_any_history_and_metrics_are_compared_or_refused_in_one_line(
    finished: dict, tmp_path_factory: pytest.TempPathFactory, history: object, metrics: object
) -> None:
    run = _copy(finished, tmp_path_factory.mktemp("fuzz"), "run")
    (run / "history.json").write_text(json.dumps(history))
    (run / "metrics.json").write_text(json.dumps(metrics))
    try:
        result = compare_runs([run])
    except RunDirError as err:
        assert "\n" not in str(err) and str(run) in str(err)
        return
    assert result["runs"][0]["run"] == str(run)


def test_evaluate_command_on_both_splits(finished: dict, cli: Callable[..., CLI]) -> None:
    run = finished["run"]
    code, out, err = cli("evaluate", str(run), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["split"] == "test" and result["weights"].endswith("model.pt")
    assert result["accuracy"] == pytest.approx(finished["metrics"]["test_accuracy"])
    code, val, err = cli("evaluate", str(run), "--split", "val", "--checkpoint", "best")
    assert code == 0, err
    first = val.splitlines()[0]
    assert "val split" in first and "checkpoints/best_model.pt" in first
    assert finished["metrics"]["monitor"] == "val_accuracy"
    assert f"accuracy {finished['metrics']['best_value']:.4f}" in first
    assert "Most confused (true -> predicted):" in val
    _, last, _ = cli("evaluate", str(run), "--checkpoint", "last", "--json")
    assert json.loads(last)["weights"].endswith(f"checkpoint_{finished['metrics']['epochs_trained']}.pt")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["evaluate", "NOWHERE"], 2, "run directory NOWHERE does not exist"),
        (["evaluate", "RUN", "--split", "train"], 2, "argument --split: invalid choice: 'train'"),
        (["evaluate", "RUN", "--checkpoint", "nope.pt"], 2, "--checkpoint nope.pt: no such file; use best, last"),
        (["predict", "RUN"], 2, "the following arguments are required: IMAGE"),
        (["compare", "NOWHERE"], 2, "run directory NOWHERE does not exist"),
    ],
)
def test_commands_refuse_bad_input_in_one_line(
    finished: dict, cli: Callable[..., CLI], args: list[str], code: int, message: str
) -> None:
    args = [str(finished["run"]) if a == "RUN" else a for a in args]
    returned, _, err = cli(*args)
    assert returned == code
    assert message in err and err.count("\n") == 1, err


def test_predict_converts_images_like_the_training_data(
    finished: dict, tmp_path: Path, cli: Callable[..., CLI]
) -> None:
    data, predicted = finished["data"], finished["predicted"]
    exact = tmp_path / "test0.png"
    Image.fromarray(data.test_images[0, 0].numpy()).save(exact)
    large = tmp_path / "large.jpg"
    Image.fromarray(data.test_images[1, 0].numpy()).resize((200, 200)).convert("RGB").save(large, quality=95)
    broken = tmp_path / "notes.png"
    broken.write_text("not a picture")
    code, out, err = cli("predict", str(finished["run"]), str(exact), str(broken), str(large), "--json")
    assert code == 1, "one file could not be read"
    answers = json.loads(out)
    assert [a["file"] for a in answers] == [str(exact), str(broken), str(large)]
    assert answers[0]["prediction"] == data.classes[int(predicted[0])]
    assert len(answers[0]["top"]) == 3 and answers[0]["top"][0]["class"] == answers[0]["prediction"]
    assert sum(t["probability"] for t in answers[0]["top"]) <= 1.0 + 1e-6
    assert answers[1] == {"file": str(broken), "error": f"{broken}: not an image file PIL can read"}
    assert "prediction" in answers[2]
    assert err.strip() == f"error: {broken}: not an image file PIL can read"
    code, text, _ = cli("predict", str(finished["run"]), str(exact))
    assert code == 0 and text.startswith(f"{exact}: {answers[0]['prediction']} (")


def test_compare_shows_metrics_and_differing_settings(finished: dict, tmp_path: Path, cli: Callable[..., CLI]) -> None:
    # Next to the finished run, with its data and settings but one.
    other = load_config(finished["run"] / "config.yaml", ["name=other", "optimizer.lr=0.05"])
    build_experiment(other).run()
    output = tmp_path / "cmp.png"
    code, out, err = cli("compare", str(finished["run"]), str(other.run_dir), "--output", str(output))
    assert code == 0, err
    header, first, second = out.splitlines()[:3]
    assert header.split() == [
        "run",
        "test_accuracy",
        "monitor",
        "best_value",
        "best_epoch",
        "epochs",
        "optimizer.lr",
    ]
    assert (
        first.split()[0] == str(finished["run"]) and first.split()[1] == f"{finished['metrics']['test_accuracy']:.4f}"
    )
    assert second.split()[-1] == "0.05"
    with Image.open(output) as image:
        assert image.size == (1000, 400)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory, system_dir: Path) -> list[Path]:
    tmp = tmp_path_factory.mktemp("inspect")
    runs = []
    for name in ("one", "two"):
        overrides = [
            *small_overrides(tmp, system_dir),
            "trainer.max_epochs=1",
            "logging.tensorboard=false",
            f"name={name}",
        ]
        experiment = build_experiment(load_config(BASE, overrides))
        experiment.run()
        runs.append(experiment.run_dir)
    return runs


def test_compare_output_never_replaces_a_special_file_a_run_file_or_an_unasked_file(
    two_runs: list[Path], tmp_path: Path, cli: Callable[..., CLI]
) -> None:
    """Class 1 of issue 19: compare --output writes a new .png, or replaces a regular one with --force."""
    runs = [str(r) for r in two_runs]
    picture = two_runs[0] / "history.png"
    before = picture.read_bytes()
    code, _, err = cli("compare", *runs, "--output", str(picture), "--force")
    assert code == 2 and f"error: {picture} is a file of the run in {two_runs[0]}" in err
    assert picture.read_bytes() == before
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    code, _, err = cli("compare", *runs, "--output", str(fifo), "--force")
    assert code == 2 and "is not a regular file" in err and fifo.is_fifo()
    code, _, err = cli("compare", *runs, "--output", str(tmp_path / "x.pdf"))
    assert code == 2 and err.endswith("the figure is a PNG; name a .png file or a folder\n")
    assert not (tmp_path / "x.pdf").exists()

    mine = tmp_path / "mine.png"
    mine.write_text("a file of mine")
    code, _, err = cli("compare", *runs, "--output", str(mine))
    assert code == 2 and err.endswith(f"error: {mine} exists; pass --force to replace it\n")
    assert mine.read_text() == "a file of mine"
    code, out, _ = cli("compare", *runs, "--output", str(mine), "--force")
    assert code == 0 and out.splitlines()[-1] == f"validation curves: {mine}"
    assert mine.read_bytes().startswith(b"\x89PNG")
    code, out, _ = cli("compare", *runs, "--output", f"{tmp_path}/")
    assert code == 0 and (tmp_path / "compare.png").read_bytes().startswith(b"\x89PNG")
