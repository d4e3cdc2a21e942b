"""The program: the only code that prints, exits, sets up logging output, starts processes or installs
process-wide signal handlers.

The library below it raises typed errors (:mod:`fmnist_ignite.errors`) and logs; this package
turns them into lines on a terminal and exit codes. Nothing outside ``app`` imports it, except
the package's front door (:mod:`fmnist_ignite` names :func:`~fmnist_ignite.app.launch.train` and
friends lazily) and ``python -m fmnist_ignite``.
"""

import importlib.util
import sys
from pathlib import Path

REQUIRED = ("torch", "ignite")  # what every command needs, and a Python without them has no use for


def main() -> None:
    """``python -m fmnist_ignite``: the command line, with a Ctrl-C while its modules load answered in one line.

    Under a Python that lacks torch (the system's, when the package's environment is elsewhere)
    it says so in one line, naming the environment's interpreter when there is one to hand.
    """
    missing = [name for name in REQUIRED if importlib.util.find_spec(name) is None]
    if missing:
        print(f"error: {missing_dependencies(missing)}", file=sys.stderr)
        sys.exit(1)
    try:
        from .cli import main_entry
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C)", file=sys.stderr)
        sys.exit(130)
    main_entry()


def missing_dependencies(missing: list[str]) -> str:
    """The line for a Python without the package's dependencies: which interpreter to use instead."""
    from ..errors import python_command

    here = f"this Python ({python_command()}) has no {' or '.join(missing)}"
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        venv = root / ".venv" / "bin"
        if (venv / "python").is_file():
            shown = venv if root != Path.cwd() else Path(".venv", "bin")
            return f"{here}; use the environment's: {shown / 'fmnist-ignite'} (or {shown / 'python'} -m fmnist_ignite)"
    return f"{here}; run the Python of the environment the package is installed in, or pip install -e . into this one"
