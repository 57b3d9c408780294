"""How responsive the fine-tuning dashboard is, measured headlessly (no browser, no kernel).

    python bench/dashboard.py                    # the ResNet lessons' default setting
    python bench/dashboard.py --source           # the same, also tracking forgetting on Fashion-MNIST
    python bench/dashboard.py --mode callback    # training inside the Run click, as on Colab

run to curves  ResNet-18 (ftlab's fashion-mnist weights), head replaced for digits (n_train=300),
               lr 1e-3, frozen depth 3, 10 epochs, patience 3: seconds from clicking Run to the
               curves of epoch 0 (before training) and of epoch 1 being in the output area.
               Target: epoch 1 in under 10 s; first curves in callback mode (Colab's) under 5 s.
               The first click of a session pays one-time costs (encoding the data, the frozen
               prefix); a second setting at the same depth does not.
from store     the first setting again: seconds from clicking Run to its curves, read back from the
               run store without training. Target: under 1 s.

--mode: "thread" (the default outside Colab) or "callback" (ftlab.widgets.MODES). In callback mode
the click returns only when the run is over; the curves are timed as they are sent, from inside it.
A private, empty run store is used, so the first runs really train. Results are printed and written
to bench/results/dashboard[-source][-callback].json. The machine is shared and noisy: repeat for a range.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import ftlab
from ftlab.store import RunStore

RESULTS = Path(__file__).resolve().parent / "results"


def _timed_click(board, **values) -> dict:
    """Set the controls, click Run, and time when the curves of epoch 0 and epoch 1 are shown."""
    for name, value in values.items():
        getattr(board, {"lr": "lr_slider", "frozen_depth": "depth_slider", "epochs": "epochs_slider",
                        "patience": "patience_menu"}[name]).value = value
    shown: dict[int, float] = {}

    def curves_shown(history):  # called after the dashboard's own callback has replaced the plot
        shown.setdefault(history.epochs_run, time.perf_counter())

    board.callbacks[:] = [curves_shown]
    clicked = time.perf_counter()
    board.run_button.click()
    result = board.wait()
    done = time.perf_counter()
    if result is None:
        raise SystemExit(f"the run failed: {board.last_error}")
    assert board.output.outputs and "image/png" in board.output.outputs[0]["data"]
    return {"from_store": result.from_store, "epochs_run": result.history.epochs_run,
            "first_curves_s": min(shown.values()) - clicked,
            "epoch_1_curves_s": shown[1] - clicked if 1 in shown else None,
            "run_s": done - clicked, "val_acc": result.row["val_acc"]}


def main(with_source: bool, mode: str = "thread") -> dict:
    started = time.perf_counter()
    task = ftlab.datasets.load("digits", n_train=300)
    model = ftlab.models.resnet18(weights="fashion-mnist")
    source_head = ftlab.models.replace_head(model, task.num_classes)
    source = None
    if with_source:
        fashion = ftlab.datasets.load("fashion-mnist", n_train=2000, n_test=1000)
        source = ftlab.Source(fashion, source_head, name="fashion-mnist")
    setup_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as folder:
        board = ftlab.widgets.dashboard(model, task, source=source, store=RunStore(folder), mode=mode,
                                        settings={"lr": 1e-3, "frozen_depth": 3, "epochs": 10, "patience": 3})
        rows = {
            "first click (lr 1e-3, depth 3)": _timed_click(board),
            "second setting (lr 3e-3, depth 3)": _timed_click(board, lr=10 ** -2.5),
            "first setting again (from the run store)": _timed_click(board, lr=1e-3),
        }
    print(f"data and model loaded in {setup_s:.1f} s; torch threads {torch.get_num_threads()}; mode {mode}"
          f"{'; tracking forgetting on fashion-mnist (1000 test images)' if with_source else ''}")
    print(f"{'':44} {'first curves':>12} {'epoch 1':>8} {'whole run':>10} {'epochs':>6}")
    for name, row in rows.items():
        epoch_1 = f"{row['epoch_1_curves_s']:7.2f}s" if row["epoch_1_curves_s"] is not None else "       -"
        print(f"{name:44} {row['first_curves_s']:11.2f}s {epoch_1} {row['run_s']:9.2f}s {row['epochs_run']:6}")
    return {"source": with_source, "mode": mode, "setup_s": setup_s, "threads": torch.get_num_threads(), "runs": rows}


if __name__ == "__main__":
    arguments = sys.argv[1:]
    mode = arguments[arguments.index("--mode") + 1] if "--mode" in arguments else "thread"
    if mode not in ftlab.widgets.MODES:
        raise SystemExit(f"--mode must be one of {ftlab.widgets.MODES}, got {mode!r}")
    result = main(with_source="--source" in arguments, mode=mode)
    RESULTS.mkdir(exist_ok=True)
    name = "dashboard" + ("-source" if result["source"] else "") + ("-callback" if mode == "callback" else "")
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1))
