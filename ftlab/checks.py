"""Argument checks shared by the public functions, so every message has one shape:

    <function>: <argument> must be <what is valid>, got <argument>=<what it was>

    require_int("n_train", 12.5, where="load", low=10, high=1008)
    # TypeError: load: n_train must be an integer in 10..1008, got n_train=12.5

A value of the wrong kind raises TypeError, a value of the right kind out of range raises ValueError
(Python's own convention). Each check returns the value, cleaned where that helps (numpy integers
become ints), so a caller can write `n = require_int(...)`.
"""
from __future__ import annotations

import numbers
from typing import Sequence

__all__ = ["require_int", "require_choice", "require_model", "require_task", "require_dataset",
           "require_history", "require_histories", "require_frame", "describe"]

_PLAIN = (int, float, str, bool, type(None), list, tuple, dict)  # their repr says what they are

GET_TASK = "e.g. task = ftlab.datasets.load('digits', n_train=200)"
GET_MODEL = ("e.g. ftlab.models.resnet18(weights='fashion-mnist') for images or "
             "ftlab.models.bert(num_classes=k) for text")


def describe(value) -> str:
    """A short, one-line account of `value` for an error message: its repr, and its type if unclear."""
    kind = type(value).__name__
    text = repr(value)
    if "\n" in text:  # a module or a frame: the repr is a screenful, the type says enough
        return f"a {kind}"
    if len(text) > 80:
        text = text[:77] + "..."
    return text if isinstance(value, _PLAIN) else f"{text} (a {kind})"


def _fail(error: type[Exception], where: str, name: str, valid: str, value, hint: str = "") -> None:
    raise error(f"{where}: {name} must be {valid}, got {name}={describe(value)}" + (f"; {hint}" if hint else ""))


def _span(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f"an integer in {low}..{high}"
    if low is not None:
        return f"an integer >= {low}"
    return "an integer" if high is None else f"an integer <= {high}"


def require_int(name: str, value, *, where: str, low: int | None = None, high: int | None = None,
                why: str = "") -> int:
    """`value` as an int in low..high (both included, either may be None); bools are refused.

    why: what the bounds mean, added in brackets (e.g. "digits' training split has 1008 examples").
    """
    valid = _span(low, high) + (f" ({why})" if why else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        _fail(TypeError, where, name, valid, value)
    if (low is not None and value < low) or (high is not None and value > high):
        _fail(ValueError, where, name, valid, value)
    return int(value)


def require_choice(name: str, value, *, where: str, choices: Sequence) -> object:
    """`value` if it is one of `choices` (compared with ==); the message lists them all."""
    valid = "one of " + ", ".join(repr(c) for c in choices)
    try:
        if value in choices:
            return value
    except TypeError:  # an unhashable or incomparable value is simply not a choice
        pass
    kinds = {type(c) for c in choices}
    _fail(ValueError if type(value) in kinds else TypeError, where, name, valid, value)


def require_model(value, where: str, *, name: str = "model"):
    """`value` if it is a torch.nn.Module of a family ftlab knows (see ftlab.families)."""
    from torch import nn

    from .families import family_of

    if not isinstance(value, nn.Module):
        _fail(TypeError, where, name, f"a torch.nn.Module ({GET_MODEL})", value)
    try:
        family_of(value)
    except TypeError as error:  # its message names the families and how to register one
        raise TypeError(f"{where}: {name} must be a model whose blocks ftlab knows, got a "
                        f"{type(value).__name__}. {error}") from None
    return value


_TASK_PARTS = ("train", "val", "test", "num_classes", "modality")


def require_task(value, where: str, *, name: str = "task"):
    """`value` if it is a ftlab Task (what ftlab.datasets.load returns), else TypeError saying how to get one."""
    if all(hasattr(value, part) for part in _TASK_PARTS):
        return value
    valid = f"a ftlab Task with train/val/test splits and classes, as ftlab.datasets.load returns ({GET_TASK})"
    hint = ""
    if _looks_like_dataset(value):
        hint = "this looks like a single split: pass the whole Task (task, not task.train)"
    elif any(hasattr(value, part) for part in _TASK_PARTS):
        missing = [part for part in _TASK_PARTS if not hasattr(value, part)]
        hint = f"it has no {', '.join(missing)}"
    _fail(TypeError, where, name, valid, value, hint)


def _looks_like_dataset(value) -> bool:
    return hasattr(value, "__len__") and hasattr(value, "__getitem__") and not isinstance(value, (str, bytes, dict))


def require_dataset(value, where: str, *, name: str = "dataset"):
    """`value` if it is a non-empty dataset of (input, label) pairs, e.g. task.val or task.test."""
    valid = "a dataset of (input, label) pairs, e.g. task.val or task.test of a ftlab Task"
    if all(hasattr(value, part) for part in _TASK_PARTS):
        _fail(TypeError, where, name, valid, value, "this is a whole Task: pass one of its splits (task.test)")
    if not _looks_like_dataset(value):
        _fail(TypeError, where, name, valid, value)
    if len(value) == 0:
        _fail(ValueError, where, name, valid + " with at least one example", value)
    first = value[0]
    if not (isinstance(first, (tuple, list)) and len(first) == 2 and _is_label(first[1])):
        _fail(TypeError, where, name, valid, value, f"its first item is {describe(first)}, not (input, label)")
    return value


def _is_label(label) -> bool:
    if isinstance(label, bool):
        return False
    if isinstance(label, numbers.Integral):
        return True
    return getattr(label, "ndim", None) == 0 and not getattr(label, "is_floating_point", lambda: True)()


def require_history(value, where: str, *, name: str = "history"):
    """`value` if it is a ftlab History (what ftlab.fit returns)."""
    from .history import History

    if isinstance(value, History):
        return value
    hint = ""
    if type(value).__name__ == "DataFrame":
        hint = "a DataFrame of runs (from ftlab.sweep) goes to plot_sweep or plot_tradeoff"
    _fail(TypeError, where, name, "a ftlab History, as ftlab.fit returns (history = ftlab.fit(model, task, ...))",
          value, hint)


def require_frame(value, where: str, *, name: str = "frame"):
    """`value` if it is a pandas DataFrame (e.g. the runs ftlab.sweep returns)."""
    import pandas as pd

    if isinstance(value, pd.DataFrame):
        return value
    from .history import History

    hint = "this is one run's History: plot it with plot_history(history)" if isinstance(value, History) else ""
    _fail(TypeError, where, name, "a pandas DataFrame of runs, as ftlab.sweep returns", value, hint)



def require_histories(value, where: str, *, name: str = "histories") -> dict:
    """`value` if it is a non-empty dict of label -> ftlab History (several runs to compare)."""
    valid = "a dict of label -> History, e.g. {'lr 1e-3': history_a, 'lr 1e-4': history_b}"
    if not isinstance(value, dict):
        _fail(TypeError, where, name, valid, value)
    if not value:
        _fail(ValueError, where, name, valid + " with at least one run", value)
    for label, history in value.items():
        require_history(history, where, name=f"{name}[{label!r}]")
    return value
