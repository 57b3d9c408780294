"""ftlab: a toolkit for teaching fine-tuning of pretrained networks in Jupyter.

    import ftlab
    task = ftlab.datasets.load("digits", n_train=200)
    model = ftlab.models.resnet18(weights="fashion-mnist")
    source_head = ftlab.models.replace_head(model, task.num_classes)

Submodules load on first use, so `import ftlab` stays quick (torch and transformers are heavy).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("datasets", "models", "weights", "families", "freezing", "features", "augment", "settings",
               "optim", "training", "history", "lr_finder", "pretrain", "doctor", "install", "paths", "checks",
               "plots", "cli", "measures", "mitigations", "store", "sweeps", "widgets", "lora", "adapters",
               "grading", "feedback", "course")
# public functions -> the module that defines them (imported on first use)
_FUNCTIONS = {
    "blocks": "freezing", "freeze": "freezing", "trainable_summary": "freezing", "frozen_depth": "freezing",
    "block_shapes": "freezing",
    "fit": "training", "fine_tune": "training", "evaluate": "training", "Source": "training",
    "StopTraining": "training", "FitSettings": "settings",
    "History": "history",
    "forgetting": "measures", "overfitting_gap": "measures",
    "sweep": "sweeps", "RunStore": "store",
    "plot_history": "plots", "plot_histories": "plots", "plot_sweep": "plots", "plot_tradeoff": "plots",
    "plot_confusion": "plots", "plot_lr_find": "plots",
    "lr_find": "lr_finder",
    "add_lora": "lora", "add_adapters": "adapters",
}

__all__ = [*_SUBMODULES, *_FUNCTIONS, "__version__"]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _FUNCTIONS:
        return getattr(importlib.import_module(f".{_FUNCTIONS[name]}", __name__), name)
    raise AttributeError(f"module 'ftlab' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


def _show_checks_kindly() -> None:
    """In a notebook, otter's check results read as ftlab.feedback writes them (one message each)."""
    import sys

    if "IPython" in sys.modules:  # only where IPython already runs: plain `python` pays nothing
        from .feedback import install

        install()


_show_checks_kindly()
