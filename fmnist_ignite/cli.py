"""The command line: a thin shell over :func:`load_config`, :func:`build_experiment` and ``run``.

Errors from the library become one line on stderr and an exit code (2 for usage and config
errors); nothing here does work the Python API cannot do.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import __version__
from .config import load_config
from .errors import FmnistIgniteError
from .experiment import build_experiment, resume_experiment
from .export import export_run
from .inspect_runs import compare_figure, compare_runs, evaluate_run, predict_images
from .registry import DATASETS, HANDLERS, MODELS
from .reports import format_report, save_figure


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m fmnist_ignite",
        description="Train and evaluate a logistic-regression classifier on Fashion-MNIST or CIFAR-10 from YAML.",
        epilog="commands (each has --help):\n"
        "  evaluate RUN_DIR [--split val|test] [--checkpoint best|last|PATH]   metrics of a saved model\n"
        "  predict RUN_DIR IMAGE [IMAGE ...] [--json]                          classify image files\n"
        "  compare RUN_DIR [RUN_DIR ...] [--output compare.png]                 runs side by side\n"
        "  export RUN_DIR [--format onnx|torchscript] [--checkpoint ...]       model.onnx for serving\n"
        "\nexamples:\n"
        "  python -m fmnist_ignite configs/base.yaml\n"
        "  python -m fmnist_ignite configs/base.yaml optimizer.lr=0.05 name=lr005\n"
        "  python -m fmnist_ignite --resume runs/base\n"
        "  python -m fmnist_ignite evaluate runs/base --split val",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", nargs="?", help="YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override a config value (read as YAML)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its newest checkpoint")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument(
        "--list-plugins", action="store_true", help="list the handlers, models and data sets a config can name"
    )
    parser.add_argument("--version", action="version", version=f"fmnist_ignite {__version__}")
    return parser


def plugin_listing() -> str:
    """What ``--list-plugins`` prints: every registered name and where it comes from."""
    lines = []
    for title, registry, key in (
        ("handlers", HANDLERS, "handlers[].target"),
        ("models", MODELS, "model.name"),
        ("datasets", DATASETS, "data.dataset"),
    ):
        lines.append(f"{title} ({key}; entry-point group {registry.group}):")
        rows = registry.describe()
        width = max(len(name) for name, _ in rows)
        lines += [f"  {name:<{width}}  {origin}" for name, origin in rows]
    lines.append("Any of them may also be named as package.module:Name.")
    return "\n".join(lines) + "\n"


def setup_logging() -> None:
    """Log the library's INFO lines to stderr as plain messages; keep Ignite's own chatter down."""
    logging.basicConfig(stream=sys.stderr, format="%(message)s", level=logging.WARNING)
    logging.getLogger("fmnist_ignite").setLevel(logging.INFO)
    logging.getLogger("ignite").setLevel(logging.WARNING)
    # The CLI reports every exception itself; Ignite's log line about it would say it twice.
    logging.getLogger("ignite.engine.engine.Engine").addFilter(
        lambda record: not record.getMessage().startswith("Engine run is terminating due to exception")
    )


def build_command_parser(command: str) -> argparse.ArgumentParser:
    """The parser of ``evaluate``, ``predict``, ``compare`` or ``export``."""
    parser = _Parser(prog=f"python -m fmnist_ignite {command}", description=COMMANDS[command])
    if command == "compare":
        parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories")
        parser.add_argument("--output", default="compare.png", help="where to write the figure (default: compare.png)")
    else:
        parser.add_argument("run", metavar="RUN_DIR", help="run directory")
        parser.add_argument(
            "--checkpoint",
            metavar="best|last|PATH",
            help="weights: best model, newest checkpoint, or a file (default: model.pt, else the best model)",
        )
    if command == "evaluate":
        parser.add_argument("--split", choices=("val", "test"), default="test", help="which split (default: test)")
    if command == "predict":
        parser.add_argument("images", nargs="+", metavar="IMAGE", help="PNG or JPEG files, any size or colour")
    if command in ("evaluate", "predict"):
        parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    if command == "export":
        parser.add_argument(
            "--format", choices=("onnx", "torchscript"), default="onnx", help="file format (default: onnx)"
        )
        parser.add_argument(
            "--output", metavar="PATH", help="where to write it (default: RUN_DIR/model.onnx or model.ts)"
        )
    return parser


COMMANDS = {
    "evaluate": "Metrics and the per-class report of a saved model on the validation or test split, without training.",
    "predict": "Class and top-3 probabilities of image files, converted the way the training data was.",
    "compare": "Final metrics and differing settings of several runs, and compare.png overlaying their curves.",
    "export": "Write the model as ONNX or TorchScript: pixels 0-255 in, class probabilities out, normalisation inside.",
}


def run_command(command: str, argv: Sequence[str]) -> int:
    """``evaluate``, ``predict``, ``compare`` or ``export``; returns the exit code."""
    args = build_command_parser(command).parse_args(argv)
    setup_logging()
    logging.getLogger("fmnist_ignite").setLevel(logging.WARNING)
    try:
        if command == "evaluate":
            result = evaluate_run(Path(args.run), args.split, args.checkpoint)
            if args.json:
                print(json.dumps(result, indent=2))
            else:
                print(
                    f"{result['run']}, {result['split']} split, weights {result['weights']}: "
                    f"accuracy {result['accuracy']:.4f} loss {result['loss']:.4f}"
                )
                print(format_report(result))
            return 0
        if command == "predict":
            answers = predict_images(Path(args.run), args.images, args.checkpoint)
            if args.json:
                print(json.dumps(answers, indent=2))
            for answer in answers:
                if "error" in answer:
                    print(f"error: {answer['error']}", file=sys.stderr)
                elif not args.json:
                    top = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in answer["top"])
                    print(f"{answer['file']}: {answer['prediction']} ({top})")
            return 1 if any("error" in a for a in answers) else 0
        if command == "export":
            print(export_run(Path(args.run), args.checkpoint, args.format, args.output))
            return 0
        result = compare_runs([Path(r) for r in args.runs])
        print(format_comparison(result))
        save_figure(compare_figure(result["histories"]), Path(args.output))
        print(f"validation curves: {args.output}")
        return 0
    except FmnistIgniteError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code


def format_comparison(result: dict[str, Any]) -> str:
    """The table ``compare`` prints: final metrics, then each setting that differs."""

    def show(value: Any) -> str:
        return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    columns = ["run", "test_accuracy", "best_val_accuracy", "best_epoch", "epochs", *result["differing"]]
    rows = [
        [row["run"], *(show(row[k]) for k in columns[1:5]), *(str(row["settings"][k]) for k in result["differing"])]
        for row in result["runs"]
    ]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if not result["differing"]:
        lines.append("(the runs' settings are the same)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        return run_command(argv[0], argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_plugins:
        sys.stdout.write(plugin_listing())
        return 0
    if args.resume and (args.config or args.overrides):
        parser.error("--resume takes the run directory alone: its config.yaml is used as saved")
    if not args.resume and not args.config:
        parser.error("give a config file (e.g. configs/base.yaml) or --resume RUN_DIR")
    setup_logging()
    try:
        if args.resume:
            experiment = resume_experiment(args.resume)
        else:
            config = load_config(args.config, args.overrides)
            if args.print_config:
                sys.stdout.write(config.to_yaml())
                return 0
            experiment = build_experiment(config)
    except FmnistIgniteError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    try:
        experiment.run()
    except FmnistIgniteError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"error: interrupted; {experiment.resume_hint()}", file=sys.stderr)
        return 130
    except OSError as err:
        where = f" {err.filename}" if err.filename else ""
        print(
            f"error: cannot write{where}: {err.strerror or err}; the files already written are whole: "
            f"free space or fix the folder, then {experiment.resume_hint()}",
            file=sys.stderr,
        )
        return 1
    except Exception as err:
        # A bug or a user handler's error: show the whole traceback, then how to go on.
        traceback.print_exc()
        if experiment.run_dir.is_dir() and not (experiment.run_dir / "metrics.json").exists():
            print(
                f"error: the run stopped on {type(err).__name__}; its last checkpoint is kept: "
                f"{experiment.resume_hint()}",
                file=sys.stderr,
            )
        else:
            print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


def main_entry() -> None:
    """Console-script entry point (``fmnist-ignite``)."""
    sys.exit(main())
