"""``python -m fmnist_ignite``: see :mod:`fmnist_ignite.app.cli`."""

import sys

try:
    from .app.cli import main_entry
except KeyboardInterrupt:  # Ctrl-C while the libraries load
    print("error: interrupted (Ctrl-C)", file=sys.stderr)  # as app.console says it
    sys.exit(130)

main_entry()
