"""Plots of runs. Each takes a History or a DataFrame and returns a matplotlib Figure; none trains,
none calls display (Jupyter shows a returned Figure by itself).

    ftlab.plot_history(history)            # loss and accuracy per epoch, gap, best/stop epochs
    ftlab.plot_sweep(frame, x="frozen_depth", y="lr", value="val_acc")
    ftlab.plot_tradeoff(frame)             # target accuracy against forgetting, Pareto front
    ftlab.plot_confusion(model, dataset)
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from .history import History

__all__ = ["plot_history", "plot_histories", "PALETTE"]

PALETTE = sns.color_palette("colorblind")
TRAIN, VAL, SOURCE = PALETTE[0], PALETTE[1], PALETTE[2]


def _new_figure(ncols: int, width: float = 5.2, height: float = 3.6) -> tuple[Figure, list]:
    # pyplot's figure manager is what makes a returned Figure render inline in Jupyter
    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), layout="constrained", squeeze=False)
    plt.close(fig)  # shown once, by whoever displays it; pyplot does not keep it alive
    return fig, list(axes[0])


def _mark_epochs(ax, history: History) -> None:
    if history.best_epoch is not None:
        ax.axvline(history.best_epoch, color="0.25", linestyle="--", linewidth=1,
                   label=f"best epoch ({history.best_epoch})" + (", restored" if history.restored_best else ""))
    if history.stop_epoch is not None:
        why = "diverged" if history.diverged else "stopped early" if history.stopped_early else "interrupted"
        ax.axvline(history.stop_epoch, color=PALETTE[3], linestyle=":", linewidth=1.5,
                   label=f"{why} (epoch {history.stop_epoch})")


def _title(history: History) -> str:
    c = history.config
    parts = [f"lr {c['lr']:g}" if "lr" in c else None,
             f"frozen depth {c['frozen_depth']}" if c.get("frozen_depth") is not None else None,
             f"patience {c['patience']}" if c.get("patience") else None]
    return ", ".join(p for p in parts if p)


def plot_history(history: History, *, title: str | None = None) -> Figure:
    """Loss and accuracy per epoch (epoch 0 = before training), the train/val gap shaded, the best
    and early-stop epochs marked, and source accuracy (forgetting) when it was tracked."""
    frame = history.to_frame()
    if frame.empty:
        raise ValueError("this History has no epochs to plot")
    fig, (loss_ax, acc_ax) = _new_figure(2)
    epochs = frame["epoch"]
    loss_ax.plot(epochs, frame["train_loss"], "o-", color=TRAIN, label="train")
    loss_ax.plot(epochs, frame["val_loss"], "s-", color=VAL, label="validation")
    loss_ax.fill_between(epochs, frame["train_loss"], frame["val_loss"], where=frame["val_loss"] >= frame["train_loss"],
                         color=VAL, alpha=0.15, interpolate=True, label="overfitting gap (val - train)")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    acc_ax.plot(epochs, 100 * frame["train_acc"], "o-", color=TRAIN, label="train")
    acc_ax.plot(epochs, 100 * frame["val_acc"], "s-", color=VAL, label="validation")
    if "source_acc" in frame:
        acc_ax.plot(epochs, 100 * frame["source_acc"], "^-", color=SOURCE,
                    label=f"source task (forgetting: {forgetting_points(frame):+.1f} pts)")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy", ylim=(0, 101))
    for ax in (loss_ax, acc_ax):
        _mark_epochs(ax, history)
        ax.set_xticks(_ticks(epochs))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best", framealpha=0.85)
    fig.suptitle(title or _title(history))
    return fig


def forgetting_points(frame: pd.DataFrame) -> float:
    """Source accuracy before minus after, in points (positive = forgotten)."""
    return 100 * (frame["source_acc"].iloc[0] - frame["source_acc"].iloc[-1])


def _ticks(epochs: pd.Series) -> Sequence[int]:
    last = int(epochs.max())
    step = max(1, int(np.ceil((last + 1) / 10)))
    return list(range(0, last + 1, step))


def plot_histories(histories: dict[str, History], *, metric: str = "val_acc") -> Figure:
    """Several runs' `metric` on one axis, to compare them (the dashboard's overlay)."""
    if not histories:
        raise ValueError("give at least one run to plot")
    fig, (ax,) = _new_figure(1, width=6.5)
    styles = ["o-", "s-", "^-", "D-", "v-", "P-", "X-", "*-"]
    for i, (label, history) in enumerate(histories.items()):
        frame = history.to_frame()
        scale = 100 if metric.endswith("acc") else 1
        ax.plot(frame["epoch"], scale * frame[metric], styles[i % len(styles)],
                color=PALETTE[i % len(PALETTE)], label=label)
    ax.set(xlabel="epoch", ylabel=_metric_label(metric), title=f"{_metric_label(metric)} by run")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.85)
    return fig


def _metric_label(metric: str) -> str:
    names = {"val_acc": "validation accuracy (%)", "train_acc": "train accuracy (%)",
             "val_loss": "validation loss", "train_loss": "train loss", "source_acc": "source accuracy (%)",
             "test_acc": "test accuracy (%)", "forgetting": "forgetting (points)"}
    return names.get(metric, metric)
