"""Sphinx configuration for fmnist_ignite's documentation."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent / "_ext"))

import fmnist_ignite  # noqa: E402
from fmnist_ignite.resume import what_may_change  # noqa: E402

project = "fmnist_ignite"
author = "fmnist_ignite developers"
release = fmnist_ignite.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
    "reference",
    "myst_nb",
]

html_theme = "furo"
html_title = f"fmnist_ignite {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
exclude_patterns = ["_build", "**.ipynb_checkpoints"]

# The notebook (examples/fashion_mnist.ipynb, linked here) is kept without outputs: each build runs it
# top to bottom on the real data, from this folder (so "../configs" is the repository's), and a cell
# that fails stops the build. What a run prints on stdout is shown; progress bars (stderr) are not.
nb_execution_mode = "force"
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_execution_timeout = 600
nb_output_stderr = "remove"
nb_merge_streams = True

# What a resume may change, in the words of the code that checks it (fmnist_ignite.resume).
rst_prolog = f".. |resume-changes| replace:: {what_may_change('``')}\n"

# A literal block without a language is plain text; Python, shell and YAML blocks say what they are.
highlight_language = "none"

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
    "exclude-members": "model_config, model_fields, model_computed_fields, model_post_init",
}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
nitpicky = False

# Run from a throw-away folder laid out like the repository, with a tiny synthetic Fashion-MNIST,
# so that the examples read as a user runs them ("configs/base.yaml") and train in a moment.
# The package's own docstring examples use the names of their module, as its readers see them.
doctest_global_setup = """
import logging
import matplotlib

matplotlib.use("Agg")
logging.disable(logging.INFO)

from doc_workspace import enter_workspace

enter_workspace()

from fmnist_ignite import LogisticRegression, load_config
"""
doctest_global_cleanup = """
from doc_workspace import leave_workspace

leave_workspace()
"""


# Classes that readers receive rather than construct: their constructor is wiring (a pydantic
# config section lists its fields, Context shows "state=<factory>"), so the page shows neither its
# signature nor its parameters; their attributes are documented instead.
RECEIVED_CLASSES = {"fmnist_ignite.Context", "fmnist_ignite.Experiment"}


def _hide_constructor(app, what, name, obj, options, signature, return_annotation):
    from pydantic import BaseModel

    received = name in RECEIVED_CLASSES or (isinstance(obj, type) and issubclass(obj, BaseModel))
    if what != "class" or not received:
        return None
    # autodoc records the constructor's parameter types before this event, to list them under the
    # class; where it keeps them moved in Sphinx 8.2.
    document = getattr(app.env, "current_document", None)
    annotations = document.autodoc_annotations if document is not None else app.env.temp_data.get("annotations", {})
    annotations.pop(name, None)
    return "", None


def _drop_object_base(app, name, obj, options, bases):
    """ "Bases: object" says nothing; other bases (``nn.Module``, the error hierarchy) stay."""
    if bases == [object]:
        bases.clear()


def setup(app):
    app.connect("autodoc-process-signature", _hide_constructor)
    app.connect("autodoc-process-bases", _drop_object_base)
