"""Execute notebooks top to bottom and keep only the outputs nbval checks.

    python scripts/execute_notebooks.py notebooks/00_setup.ipynb ...

Cells marked `# NBVAL_CHECK_OUTPUT` keep their (stable) outputs, which nbval compares on every
test run; all other outputs are dropped, so the committed notebooks stay small and free of
machine-specific paths and timings.
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def execute(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=900, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    for cell in notebook.cells:
        if cell.cell_type == "code" and "NBVAL_CHECK_OUTPUT" not in cell.source:
            cell.outputs, cell.execution_count = [], None
    nbformat.write(notebook, path)
    print(f"executed {path}")


if __name__ == "__main__":
    for name in sys.argv[1:]:
        execute(Path(name))
