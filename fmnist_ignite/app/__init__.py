"""The program: the only code that prints, exits, sets up logging output, starts processes or installs
process-wide signal handlers.

The library below it raises typed errors (:mod:`fmnist_ignite.errors`) and logs; this package
turns them into lines on a terminal and exit codes. Nothing outside ``app`` imports it, except
the package's front door (:mod:`fmnist_ignite` names :func:`~fmnist_ignite.app.launch.train` and
friends lazily) and ``python -m fmnist_ignite``.
"""

import sys


def main() -> None:
    """``python -m fmnist_ignite``: the command line, with a Ctrl-C while its modules load answered in one line."""
    try:
        from .cli import main_entry
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C)", file=sys.stderr)
        sys.exit(130)
    main_entry()
