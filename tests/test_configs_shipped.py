from __future__ import annotations

import json
from pathlib import Path

import pytest

from fmnist_ignite import load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path: Path) -> None:
    config = load_config(path)
    assert config.name == path.stem


def test_the_notebook_is_shipped_without_outputs_and_rendered_by_the_docs() -> None:
    """The docs build runs it (docs/conf.py: myst-nb, execution forced, errors raise) and shows what it made."""
    notebook = REPO / "examples" / "fashion_mnist.ipynb"
    cells = json.loads(notebook.read_text())["cells"]
    code = [cell for cell in cells if cell["cell_type"] == "code"]
    assert code and all(cell["outputs"] == [] and cell["execution_count"] is None for cell in code)
    assert (REPO / "docs" / "fashion_mnist.ipynb").resolve() == notebook.resolve()
    assert "   fashion_mnist\n" in (REPO / "docs" / "index.rst").read_text()
