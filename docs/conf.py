"""Sphinx configuration for fmnist_ignite's documentation."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent / "_ext"))

import fmnist_ignite  # noqa: E402

project = "fmnist_ignite"
author = "fmnist_ignite developers"
release = fmnist_ignite.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
    "sphinx.ext.intersphinx",
    "reference",
]

html_theme = "furo"
html_title = f"fmnist_ignite {release}"
html_static_path = ["_static"]
exclude_patterns = ["_build"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
nitpicky = False

intersphinx_mapping = {}

doctest_global_setup = """
import os, tempfile
from pathlib import Path
import torch
from fmnist_ignite import *
os.chdir(tempfile.mkdtemp(prefix="fmnist-docs-"))
REPO = Path(%r)
""" % str(ROOT)
