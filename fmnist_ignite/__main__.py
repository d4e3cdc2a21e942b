"""``python -m fmnist_ignite``: see :mod:`fmnist_ignite.app.cli`."""

from .app import main

main()
