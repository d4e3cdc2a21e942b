"""The command line: a thin shell over :func:`load_config`, :func:`build_experiment` and ``run``.

Errors from the library become one line on stderr and an exit code (2 for usage and config
errors); nothing here does work the Python API cannot do.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from . import __version__
from .config import load_config
from .errors import FmnistIgniteError
from .experiment import build_experiment, resume_experiment
from .registry import DATASETS, HANDLERS, MODELS


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m fmnist_ignite",
        description="Train and evaluate a logistic-regression classifier on Fashion-MNIST or CIFAR-10 from YAML.",
        epilog="examples:\n"
        "  python -m fmnist_ignite configs/base.yaml\n"
        "  python -m fmnist_ignite configs/base.yaml optimizer.lr=0.05 name=lr005\n"
        "  python -m fmnist_ignite --resume runs/base",
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
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
