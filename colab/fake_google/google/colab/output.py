"""`google.colab.output`: the widget-manager switches, as no-ops that count their calls.

On Colab, `enable_custom_widget_manager()` loads a third-party widget manager in the browser; it
does not make ipywidgets 8 work there (colabtools #3020). JupyterLab, which stands in for Colab's
front end in the browser test, always has its own manager, so nothing needs to happen here.
"""
from __future__ import annotations

calls: list[str] = []  # what was asked, so a test can see it


def enable_custom_widget_manager() -> None:
    calls.append("enable_custom_widget_manager")


def disable_custom_widget_manager() -> None:
    calls.append("disable_custom_widget_manager")


def clear(*, wait: bool = False) -> None:
    """Colab's clear of the cell's output: the same as IPython's."""
    from IPython.display import clear_output

    clear_output(wait=wait)
