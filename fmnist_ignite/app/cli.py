"""The command line: one table maps each subcommand to its arguments and the library call it makes.

``python -m fmnist_ignite CONFIG [key=value ...]`` trains (the ``train`` subcommand is implied);
``evaluate``, ``predict`` and ``compare`` ask runs questions. The run's record (its directory,
one line per epoch, the test, where the results are) goes to stdout, warnings and errors to
stderr; errors from the library become one line there and an exit code (2 for usage and config
errors). Nothing here does work the Python API cannot do.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from .. import __version__
from ..errors import program_name
from ..tables import format_table
from . import console
from .defaults import FUSE_MAX


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


@dataclass(frozen=True)
class Command:
    """One subcommand: its one-line summary, its arguments, and what it runs (returning the exit code)."""

    summary: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    from ..resume import what_may_change  # imports no torch: --help stays quick

    parser.add_argument("config", nargs="?", help="YAML config file")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key.sub=value",
        help=f"override a config value (read as YAML); with --resume, only {what_may_change()}",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its newest checkpoint; with trainer.max_epochs=N, extend it "
        "(a finished run too)",
    )
    parser.add_argument(
        "--init-from",
        metavar="RUN_DIR[:best|last]",
        help="start a new run from another run's weights (its model.pt, else best; or best, or last): sets init_from",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config (the defaults without CONFIG) and exit"
    )
    parser.add_argument(
        "--list-plugins",
        action="store_true",
        help="list the handlers, models, data sets, optimizers and schedules a config can name",
    )


def _train(args: argparse.Namespace) -> int:
    from .launch import resolve, start_up, train

    if args.list_plugins:
        sys.stdout.write(plugin_listing())
        return 0
    overrides = list(args.overrides)
    if args.resume:
        # The first override lands in the CONFIG slot: --resume takes the run directory and changes only.
        overrides = [*([args.config] if args.config else []), *overrides]
        if args.init_from:
            args.parser.error("--init-from starts a new run from a run's weights; it does not go with --resume")
        if overrides and "=" not in overrides[0]:
            args.parser.error(
                "--resume takes the run directory and key=value changes (e.g. trainer.max_epochs=20), not a config "
                "file: its config.yaml is used"
            )
    if not args.resume and not args.config and not args.print_config:
        args.parser.error("give a config file (e.g. configs/base.yaml) or --resume RUN_DIR")
    if args.print_config:
        with start_up():
            config, _ = resolve(args.config, overrides, args.resume, args.init_from)
        sys.stdout.write(config.to_yaml())
        return 0
    train(args.config, *overrides, resume=args.resume, init_from=args.init_from, verbose=args.verbosity)
    return 0


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN_DIR", help="run directory")
    parser.add_argument(
        "--checkpoint",
        metavar="best|last|PATH",
        help="weights: best model, newest checkpoint, or a file (default: model.pt, else the best model)",
    )


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    _run_arguments(parser)
    parser.add_argument("--split", choices=("val", "test"), default="test", help="which split (default: test)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def _evaluate(args: argparse.Namespace) -> int:
    from ..inspect_runs import evaluate_run
    from ..reports import format_report

    result = evaluate_run(args.run, args.split, args.checkpoint)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{result['run']}, {result['split']} split, weights {result['weights']}: "
            f"accuracy {result['accuracy']:.4f} loss {result['loss']:.4f}"
        )
        print(format_report(result))
    return 0


def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    _run_arguments(parser)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="PNG or JPEG files, any size or colour")
    parser.add_argument("--top-k", type=_positive, default=3, metavar="K", help="how many classes to list (default: 3)")
    parser.add_argument(
        "--invert",
        choices=("auto", "yes", "no"),
        default="auto",
        help="negate each image's brightness; auto (default): as the data set's conversion does (Fashion-MNIST: "
        "a photo whose background is light, as the training images' is dark)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def _predict(args: argparse.Namespace) -> int:
    from ..inspect_runs import predict_images

    answers = predict_images(args.run, args.images, args.checkpoint, top_k=args.top_k, invert=args.invert)
    if args.json:
        print(json.dumps(answers, indent=2))
    for answer in answers:
        if "error" in answer:
            print(f"error: {answer['error']}", file=sys.stderr)
        elif not args.json:
            top = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in answer["top"])
            inverted = " [inverted]" if answer["inverted"] else ""
            print(f"{answer['file']}: {answer['prediction']} ({top}){inverted}")
    return 1 if any("error" in a for a in answers) else 0


def _compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs", nargs="+", metavar="RUN_DIR", help="run directories, sweep folders, or folders of runs (runs/, runs/*)"
    )
    parser.add_argument(
        "--output",
        metavar="FILE|FOLDER",
        help="also write a figure overlaying the runs' validation curves: to FILE, or FOLDER/compare.png "
        "(default: no figure)",
    )
    parser.add_argument("--force", action="store_true", help="replace the --output file if it exists")


def _compare(args: argparse.Namespace) -> int:
    from ..inspect_runs import compare_runs, save_compare_figure

    result = compare_runs(args.runs)
    for error in result["errors"]:
        print(f"error: {error}", file=sys.stderr)
    print(format_comparison(result))
    if args.output:
        print(f"validation curves: {save_compare_figure(result, args.output, args.force)}")
    elif args.verbosity >= 0:
        print("(add --output FILE.png for a figure of the validation curves)", file=sys.stderr)
    return 1 if result["errors"] else 0


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    _run_arguments(parser)
    parser.add_argument("--format", choices=("onnx", "torchscript"), default="onnx", help="file format (default: onnx)")
    parser.add_argument("--output", metavar="PATH", help="where to write it (default: RUN_DIR/model.onnx or model.ts)")
    parser.add_argument("--force", action="store_true", help="replace the --output file if it exists")


def _export(args: argparse.Namespace) -> int:
    from ..export import export_run

    print(export_run(args.run, args.checkpoint, args.format, args.output, args.force))
    return 0


def _positive(text: str) -> int:
    value = int(text) if text.isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def _sweep_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config file")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=v1,v2|key=interval(lo,hi)|key=value",
        help="a comma list is a grid over the key; interval(lo,hi), log(lo,hi) and choice(a,b) are sampled "
        "(with --trials); a single value is an override for every trial; values are read as YAML",
    )
    parser.add_argument("--name", help="the sweep's folder under output_dir and its study's name (default: NAME-sweep)")
    parser.add_argument("--workers", type=_positive, default=1, help="trials run at once, a process each (default: 1)")
    parser.add_argument("--trials", type=_positive, help="how many trials a sampled sweep runs in all")
    parser.add_argument(
        "--sampler",
        metavar="NAME",
        help="how a sampled sweep picks values: an optuna.samplers class by short name, tpe (default), random, qmc, "
        "cmaes, gp, ...",
    )
    parser.add_argument(
        "--prune",
        metavar="NAME",
        default="none",
        help="an optuna.pruners class by short name: median stops a trial that falls below the median of the earlier "
        "trials at the same epoch; hyperband, ...; none (default)",
    )
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="an Optuna storage several machines share, postgresql+psycopg://USER@HOST/DB, each with its own "
        "output_dir (default: NAME/study.db, SQLite, for one machine)",
    )
    parser.add_argument(
        "--fuse",
        choices=("auto", "off"),
        default="auto",
        help="auto (default): train the trials that can share a data pass together, as one batched model; "
        "off: each trial alone, one after the other",
    )
    parser.add_argument(
        "--fuse-max",
        type=_positive,
        default=FUSE_MAX,
        metavar="N",
        help=f"the most trials trained together; more are split into groups (default: {FUSE_MAX})",
    )


def _sweep(args: argparse.Namespace) -> int:
    from ..sweep.results import format_sweep
    from .workers import run_sweep

    console.setup_logging(args.verbosity, lines="stderr")  # stdout is for the sweep's table
    result = run_sweep(
        args.config,
        args.overrides,
        name=args.name,
        workers=args.workers,
        trials=args.trials,
        sampler=args.sampler,
        prune=args.prune,
        storage=args.storage,
        fuse_max=args.fuse_max if args.fuse == "auto" else 0,
    )
    print(format_sweep(result))
    if result["failed"]:
        print(f"error: {result['failed']} of {len(result['rows'])} trials failed (see above)", file=sys.stderr)
        return 1
    return 0


COMMANDS: dict[str, Command] = {
    "train": Command(
        "Train a config, or continue a run with --resume (the default command).", _train_arguments, _train
    ),
    "evaluate": Command(
        "Metrics and the per-class report of a saved model on the validation or test split, without training.",
        _evaluate_arguments,
        _evaluate,
    ),
    "predict": Command(
        "Class and top-K probabilities of image files, each converted into what the run trained on (Fashion-MNIST: "
        "the data set's own conversion of a product photo).",
        _predict_arguments,
        _predict,
    ),
    "compare": Command(
        "Final metrics and the settings that differ between runs; --output adds a figure overlaying their curves.",
        _compare_arguments,
        _compare,
    ),
    "sweep": Command(
        "Train many runs of one config, over a grid or sampled values, as one Optuna study (resumable).",
        _sweep_arguments,
        _sweep,
    ),
    "export": Command(
        "Write the model as ONNX or TorchScript: pixels 0-255 in, class probabilities out, normalisation inside.",
        _export_arguments,
        _export,
    ),
}


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The parser: global options, then one subparser per entry of :data:`COMMANDS`."""
    prog = prog or program_name()
    parser = _Parser(
        prog=prog,
        description="Train and evaluate a logistic-regression classifier on Fashion-MNIST or CIFAR-10 from YAML.",
        epilog="examples:\n"
        f"  {prog} configs/base.yaml\n"
        f"  {prog} configs/base.yaml optimizer.lr=0.05 name=lr005\n"
        f"  {prog} --resume runs/base\n"
        f"  {prog} --resume runs/base trainer.max_epochs=20\n"
        f"  {prog} configs/base.yaml --init-from runs/base:best optimizer.lr=0.005 name=finetune\n"
        f"  {prog} evaluate runs/base --split val\n"
        f"  {prog} predict runs/base shirt.png --top-k 5\n"
        f"  {prog} compare runs/base runs/lr005 --output compare.png\n"
        f"  {prog} sweep configs/base.yaml optimizer.lr=0.01,0.05 seed=1,2,3 --workers 2\n"
        f"  {prog} export runs/base --format onnx",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fmnist_ignite {__version__}")
    _add_verbosity(parser, 0)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, command in COMMANDS.items():
        child = sub.add_parser(name, help=command.summary, description=command.summary)
        _add_verbosity(child, 0)  # anywhere among the command's arguments (see parse_arguments)
        command.add_arguments(child)
        child.set_defaults(command_function=command.run, parser=child)
    return parser


def _add_verbosity(parser: argparse.ArgumentParser, default: Any) -> None:
    group = parser.add_mutually_exclusive_group()
    options = {"dest": "verbosity", "default": default, "action": "store_const"}
    group.add_argument(
        "-q",
        "--quiet",
        const=-1,
        help="print the outcome (test line, where the results are), warnings and errors only",
        **options,
    )
    group.add_argument(
        "-v", "--verbose", const=1, help="print more (Ignite's lines too), and the traceback of an error", **options
    )


def plugin_listing() -> str:
    """What ``--list-plugins`` prints: every registered name and where it comes from."""
    from ..registry import DATASETS, HANDLERS, MODELS, OPTIMIZERS, SCHEDULERS

    lines = []
    for title, registry, key in (
        ("handlers", HANDLERS, "handlers[].target"),
        ("models", MODELS, "model.name"),
        ("datasets", DATASETS, "data.dataset"),
        ("optimizers", OPTIMIZERS, "optimizer.name"),
        ("schedulers", SCHEDULERS, "scheduler.name"),
    ):
        lines.append(f"{title} ({key}; entry-point group {registry.group}):")
        rows = registry.describe()
        width = max(len(name) for name, _ in rows)
        lines += [f"  {name:<{width}}  {origin}" for name, origin in rows]
    lines.append("Any of them may also be named as package.module:Name.")
    return "\n".join(lines) + "\n"


def format_comparison(result: dict[str, Any]) -> str:
    """The table ``compare`` prints: final metrics, then each setting that differs."""

    columns = ["run", "test_accuracy", "monitor", "best_value", "best_epoch", "epochs", *result["differing"]]
    rows = [
        [row["run"], *(row[k] for k in columns[1:6]), *(row["settings"][k] for k in result["differing"])]
        for row in result["runs"]
    ]
    lines = format_table(columns, rows)
    if not result["differing"]:
        lines.append("(the runs' settings are the same)")
    return "\n".join(lines)


VERBOSITY_OPTIONS = ("-q", "--quiet", "-v", "--verbose")


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """The command and its arguments, options and ``key=value`` overrides in any order.

    The command comes first (``train`` when none is named); ``-q`` / ``-v`` may stand before it.
    Each command's arguments are parsed intermixed (argparse's ``parse_intermixed_args``), so
    ``CONFIG --init-from RUN key=value`` and ``CONFIG key=value --init-from RUN`` mean the same.
    """
    words = list(argv)
    leading = []
    while words and words[0] in VERBOSITY_OPTIONS:
        leading.append(words.pop(0))
    parser = build_parser()
    if words and words[0] in ("-h", "--help", "--version"):
        return parser.parse_args([*leading, *words])  # prints and exits
    name = words.pop(0) if words and words[0] in COMMANDS else "train"
    command = _subparsers(parser)[name]
    args = command.parse_intermixed_args([*leading, *words])
    args.command = name
    return args


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("the parser has no commands")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    verbosity = args.verbosity
    with console.logging_restored():
        # --json: stdout holds the JSON alone, so the log lines (a data set prepared, ...) go to stderr.
        console.setup_logging(verbosity, lines="stderr" if getattr(args, "json", False) else "stdout")
        return console.reported(lambda: args.command_function(args), verbosity, console.process_rank())


def main_entry() -> None:
    """Console-script entry point (``fmnist-ignite`` and ``python -m fmnist_ignite``).

    Start-up (torch, Ignite, building the experiment) creates over a million long-lived objects
    and next to no garbage, yet the garbage collector sweeps them all again and again: about half
    a second of a run, and twice that when the interpreter exits. So the collector is off until
    the experiment is built (see :func:`fmnist_ignite.app.launch.start_up`), and what is alive at
    exit is frozen, not swept: the process ends and the memory is returned anyway.
    """
    gc.disable()
    try:
        code = main()
    except KeyboardInterrupt:
        print(f"error: {console.INTERRUPTED}", file=sys.stderr)
        code = 130
    gc.freeze()
    sys.exit(code)
