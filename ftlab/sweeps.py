"""Runs and sweeps: fine-tune from the same starting weights under many settings, one row each.

    frame = ftlab.sweep(model, task, grid={"frozen_depth": [0, 3, 5], "lr": [1e-4, 1e-3]},
                        settings={"epochs": 5}, source=source)

Every run starts from the weights `model` has when `sweep` is called (they are put back after
each run, and at the end). Finished runs are kept in the run store, so asking again is instant.
"""
from __future__ import annotations

import hashlib
import inspect
import itertools
import time
from typing import Callable, Sequence

import pandas as pd
import torch
from torch import nn

from .freezing import blocks
from .history import History
from .measures import final_row, forgetting
from .store import RunStore, describe_key
from .settings import FitSettings, defaults
from .training import Source, evaluate, fit, resolve_device

__all__ = ["run", "sweep", "SETTINGS", "RunResult"]

# what describes a run: the fields of FitSettings, with their defaults (lr and epochs have none)
SETTINGS = defaults()


def _check_settings(settings: dict) -> dict:
    if not isinstance(settings, dict):
        raise TypeError(f"settings must be a dict of fit settings, e.g. {{'epochs': 5}}, got {type(settings).__name__}")
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; valid settings are {sorted(SETTINGS)}")
    full = {**SETTINGS, **settings}
    missing = [name for name in ("lr", "epochs") if full[name] is inspect.Parameter.empty]
    if missing:
        raise ValueError(f"every run needs {' and '.join(missing)}: put them in grid or settings")
    FitSettings(**full)  # every value checked in one place, before any run starts
    return full


def _fingerprint_tensors(tensors) -> str:
    digest = hashlib.sha256()
    for name, tensor in tensors:
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _fingerprint_task(task) -> dict:
    """What the task's data is, not just how it was asked for: labels, images or texts, per split."""
    digest = hashlib.sha256()
    for split in ("train", "val", "test"):
        dataset = getattr(task, split)
        digest.update(split.encode())
        for name in ("labels", "images"):
            if hasattr(dataset, name):
                digest.update(getattr(dataset, name).contiguous().numpy().tobytes())
        for text in getattr(dataset, "texts", ()):
            digest.update(text.encode())
    return {"config": getattr(task, "config", {}), "data": digest.hexdigest(),
            "sizes": [len(task.train), len(task.val), len(task.test)]}


def _fingerprint_model(model: nn.Module) -> str:
    """The starting weights and which of them train (freezing is part of what a run starts from)."""
    trainable = "|".join(name for name, p in model.named_parameters() if p.requires_grad)
    return _fingerprint_tensors([*model.state_dict().items(), ("trainable", torch.tensor(list(trainable.encode())))])


class RunResult:
    """One run: its summary row, its History, and whether it came from the store."""

    def __init__(self, row: dict, history: History, from_store: bool):
        self.row, self.history, self.from_store = row, history, from_store

    def __repr__(self) -> str:
        return f"RunResult(val_acc={self.row['val_acc']:.3f}, from_store={self.from_store})"


def _describe(model_print: str, task_print: dict, source_print: dict | None, settings: dict) -> dict:
    import ftlab

    return {"weights": model_print, "task": task_print, "source": source_print,
            "settings": {**settings, "device": resolve_device(settings["device"]).type},
            "ftlab": ftlab.__version__, "torch": torch.__version__.split("+")[0]}


def _row(settings: dict, history: History, test: dict, seconds: float) -> dict:
    final = final_row(history)
    row = {name: settings[name] for name in ("frozen_depth", "lr", "head_lr", "patience", "l2sp", "rehearsal",
                                               "epochs", "weight_decay", "seed")}
    row.update(best_val_acc=max(r["val_acc"] for r in history.rows), val_acc=final["val_acc"],
               test_acc=test["accuracy"], epochs_run=history.epochs_run, best_epoch=history.best_epoch,
               stopped_early=history.stopped_early, diverged=history.diverged, seconds=seconds,
               trainable_params=history.summary.get("trainable_parameters"))
    if "source_acc" in final:
        row.update(source_acc_before=history.rows[0]["source_acc"], source_acc=final["source_acc"],
                   forgetting=forgetting(history))
    return row


def run(model: nn.Module, task, *, settings: dict, source: Source | None = None,
        store: RunStore | None | bool = True, progress: bool = False,
        callbacks: Sequence[Callable[[History], None]] = (), stop_event=None,
        _prints: tuple | None = None) -> RunResult:
    """One fine-tuning run with the store: a finished run with the same description is read back.

    The model is trained in place (it ends with the run's weights) unless the run came from the store.
    """
    settings = _check_settings(settings)
    store = RunStore() if store is True else store if isinstance(store, RunStore) else None
    model_print, source_print = _prints or (_fingerprint_model(model), _source_print(source))
    key = describe_key(_describe(model_print, _fingerprint_task(task), source_print, settings))
    if store is not None and (record := store.get(key)) is not None:
        history = History(**record["history"])
        for callback in callbacks:  # live views show a stored run like a finished one
            callback(history)
        return RunResult({**record["row"], "from_store": True, "key": key}, history, True)
    started = time.perf_counter()
    history = fit(model, task, **{k: v for k, v in settings.items()}, source=source, progress=progress,
                  callbacks=callbacks, stop_event=stop_event)
    test = evaluate(model, task.test, device=settings["device"], max_length=settings["max_length"])
    row = _row(settings, history, test, time.perf_counter() - started)
    if store is not None and not (history.interrupted or history.diverged):  # only complete runs are kept
        store.put(key, {"row": row, "history": history.to_dict()})
    return RunResult({**row, "from_store": False, "key": key}, history, False)


def _source_print(source: Source | None) -> dict | None:
    if source is None:
        return None
    return {"task": _fingerprint_task(source.task), "head": _fingerprint_tensors(source.head.state_dict().items())}


def sweep(model: nn.Module, task, *, grid: dict[str, Sequence], settings: dict | None = None,
          source: Source | None = None, store: RunStore | None | bool = True,
          progress: bool = True) -> pd.DataFrame:
    """Every combination of `grid` (e.g. frozen_depth x lr), each from the same starting weights.

    Returns one row per run: the settings, best and final validation accuracy, test accuracy,
    forgetting (with a source), epochs run, seconds, trainable parameters, and whether it came from
    the store. `settings` fixes the other fit arguments (e.g. {"epochs": 5, "patience": 2}).
    """
    if not isinstance(grid, dict) or not grid:
        raise ValueError(f"grid must be a dict naming at least one setting to vary, e.g. {{'lr': [1e-4, 1e-3]}}, "
                         f"got {grid!r}")
    overlap = set(grid) & set(settings or {})
    if overlap:
        raise ValueError(f"{sorted(overlap)} appear in both grid and settings; put each in one place")
    for name, values in grid.items():
        if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__iter__"):
            raise ValueError(f"grid[{name!r}] must be a non-empty list of values, got {values!r}")
    grid = {name: list(values) for name, values in grid.items()}  # any iterable, read once (a generator too)
    empty = [name for name, values in grid.items() if not values]
    if empty:
        raise ValueError(f"grid[{empty[0]!r}] must be a non-empty list of values, got an empty one")
    if "frozen_depth" in grid:  # check depths against the model before running anything
        limit = len(blocks(model))
        bad = [d for d in grid["frozen_depth"] if not (isinstance(d, int) and 0 <= d <= limit)]
        if bad:
            raise ValueError(f"frozen_depth values {bad} are outside 0..{limit} for this model")
    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    for combo in combos:
        _check_settings({**(settings or {}), **combo})

    start_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    start_flags = [p.requires_grad for p in model.parameters()]
    prints = (_fingerprint_model(model), _source_print(source))
    from tqdm.auto import tqdm

    rows = []
    try:
        for combo in tqdm(combos, desc="sweep", unit="run", disable=not progress):
            result = run(model, task, settings={**(settings or {}), **combo}, source=source, store=store,
                         _prints=prints)
            rows.append(result.row)
            model.load_state_dict(start_state)  # the next run starts where this one did
            for p, flag in zip(model.parameters(), start_flags):
                p.requires_grad_(flag)
    finally:
        model.load_state_dict(start_state)
    return pd.DataFrame(rows)
