"""``python -m fmnist_ignite``: see :mod:`fmnist_ignite.cli`."""

import sys

try:
    from .cli import main_entry
except KeyboardInterrupt:  # Ctrl-C while the libraries load
    print("error: interrupted (Ctrl-C)", file=sys.stderr)
    sys.exit(130)

main_entry()
