"""Plots of runs. Each takes a History or a DataFrame and returns a matplotlib Figure; none trains,
none calls display (Jupyter shows a returned Figure by itself).

    ftlab.plot_history(history)            # loss and accuracy per epoch, gap, best/stop epochs
    ftlab.plot_sweep(frame, x="frozen_depth", y="lr", value="val_acc")
    ftlab.plot_tradeoff(frame)             # target accuracy against forgetting, Pareto front
    ftlab.plot_confusion(model, dataset)
    ftlab.plot_lr_find(ftlab.lr_find(model, task))   # loss against learning rate, the suggestion marked

Heatmaps read one way throughout: darker = more (more accuracy is better, more forgetting is
worse), and the colour bar says which.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from .checks import require_dataset, require_frame, require_histories, require_history, require_model
from .history import History
from .measures import forgetting

if TYPE_CHECKING:  # plots draw results; they never import the code that trains
    from .lr_finder import LRFinderResult

__all__ = ["plot_history", "plot_histories", "plot_sweep", "plot_tradeoff", "plot_confusion", "pareto_front",
           "plot_lr_find", "PALETTE"]

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
        ax.axvline(history.stop_epoch, color=PALETTE[3], linestyle=":", linewidth=1.5, label=history.ending)


def _frozen_depths(frame: pd.DataFrame) -> pd.Series | None:
    """The frozen depth of each epoch when it changed during the run (gradual unfreezing), else None."""
    if "frozen_depth" not in frame:
        return None
    depths = frame["frozen_depth"].dropna()
    return depths if depths.nunique() > 1 else None


def _show_frozen_depth(ax, epochs: pd.Series, depths: pd.Series):
    """The frozen depth as a step line on a right-hand axis: epoch e's depth held during (e-1, e]."""
    depth_ax = ax.twinx()
    depth_ax.plot(epochs[depths.index], depths, drawstyle="steps-pre", color="0.45", linewidth=1.5,
                  alpha=0.8, label="frozen depth (right axis)")
    depth_ax.set_ylabel("frozen depth (blocks)")
    depth_ax.set_yticks(range(int(depths.min()), int(depths.max()) + 1))
    depth_ax.set_ylim(depths.min() - 0.5, depths.max() + 0.5)
    return depth_ax


def _title(history: History) -> str:
    c = history.config
    depths = _frozen_depths(history.to_frame())
    if depths is not None:  # gradual unfreezing: the depths it went through, e.g. "5→3→1"
        changes = [int(d) for i, d in enumerate(depths) if i == 0 or d != depths.iloc[i - 1]]
        depth = "frozen depth " + "→".join(map(str, changes))
    else:
        depth = f"frozen depth {c['frozen_depth']}" if c.get("frozen_depth") is not None else None
    parts = [f"lr {c['lr']:g}" if "lr" in c else None, depth,
             f"patience {c['patience']}" if c.get("patience") else None]
    return ", ".join(p for p in parts if p)


def plot_history(history: History, *, title: str | None = None) -> Figure:
    """Loss and accuracy per epoch (epoch 0 = before training), the train/val gap shaded, the best
    and early-stop epochs marked, and source accuracy (forgetting) when it was tracked. When the
    frozen depth changed between epochs (gradual unfreezing), the loss plot shows it on a right axis."""
    require_history(history, "plot_history")
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
                    label=f"source task (forgetting {forgetting(history):+.1f} pts)")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy", ylim=(0, 101))
    depths = _frozen_depths(frame)
    depth_ax = _show_frozen_depth(loss_ax, epochs, depths) if depths is not None else None
    for ax in (loss_ax, acc_ax):
        _mark_epochs(ax, history)
        ax.set_xticks(_ticks(epochs))
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if ax is loss_ax and depth_ax is not None:  # one legend for both axes, on the one drawn last
            more_handles, more_labels = depth_ax.get_legend_handles_labels()
            depth_ax.legend(handles + more_handles, labels + more_labels, fontsize=8, loc="best", framealpha=0.85)
        else:
            ax.legend(handles, labels, fontsize=8, loc="best", framealpha=0.85)
    fig.suptitle(title or _title(history))
    return fig


def _ticks(epochs: pd.Series) -> Sequence[int]:
    last = int(epochs.max())
    step = max(1, int(np.ceil((last + 1) / 10)))
    return list(range(0, last + 1, step))


def plot_histories(histories: dict[str, History], *, metric: str = "val_acc") -> Figure:
    """Several runs' `metric` on one axis, to compare them (the dashboard's overlay)."""
    require_histories(histories, "plot_histories")
    if not histories:
        raise ValueError("give at least one run to plot")
    fig, (ax,) = _new_figure(1, width=6.5)
    styles = ["o-", "s-", "^-", "D-", "v-", "P-", "X-", "*-"]
    for i, (label, history) in enumerate(histories.items()):
        frame = history.to_frame()
        scale = 100 if metric.endswith("acc") else 1
        ax.plot(frame["epoch"], scale * frame[metric], styles[i % len(styles)],
                color=PALETTE[i % len(PALETTE)], label=label)
    last = max(int(h.to_frame()["epoch"].max()) for h in histories.values())
    ax.set_xticks(_ticks(pd.Series(range(last + 1))))
    ax.set(xlabel="epoch", ylabel=_metric_label(metric), title=f"{_metric_label(metric)} by run")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.85)
    return fig


def _metric_label(metric: str) -> str:
    names = {"val_acc": "validation accuracy (%)", "train_acc": "train accuracy (%)",
             "val_loss": "validation loss", "train_loss": "train loss", "source_acc": "source accuracy (%)",
             "test_acc": "test accuracy (%)", "forgetting": "forgetting (points)"}
    return names.get(metric, metric)


def _format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "off" if value is None else str(value)


# How to read a heatmap of each value. Every colour map runs light -> dark as the value grows, so
# "darker = more" holds for every value; the hue and the colour bar say whether more is good.
_HIGHER_IS_BETTER = ("acc",)  # suffixes: accuracies (val_acc, test_acc, source_acc)
_LOWER_IS_BETTER = ("loss", "forgetting", "gap", "seconds")


def _reading(value: str) -> tuple[str, str]:
    """The colour map for `value` and the words that go with it on the colour bar."""
    if value.endswith(_HIGHER_IS_BETTER):
        return "Blues", "darker is better"
    if value.endswith(_LOWER_IS_BETTER):
        return "Reds", "darker forgets more" if value == "forgetting" else "darker is worse"
    return "Greys", "darker is more"


def plot_sweep(frame: pd.DataFrame, *, x: str = "frozen_depth", y: str = "lr", value: str = "val_acc",
               title: str | None = None) -> Figure:
    """A heatmap of `value` (e.g. val_acc, test_acc, forgetting) over two swept settings.

    Darker always means more: accuracy in blues (darker is better), forgetting and losses in reds
    (darker is worse); the colour bar's label says which."""
    require_frame(frame, "plot_sweep")
    for column in (x, y, value):
        if column not in frame:
            raise ValueError(f"no column {column!r} in the sweep; it has {list(frame.columns)}")
    table = frame.pivot_table(index=y, columns=x, values=value, aggfunc="mean", dropna=False)
    table = table.sort_index(ascending=False)  # larger learning rates on top
    scale = 100 if value.endswith("acc") else 1
    fig, (ax,) = _new_figure(1, width=1.1 * len(table.columns) + 3, height=0.6 * len(table) + 2)
    cmap, reading = _reading(value)  # light -> dark as the value grows, for every value
    sns.heatmap(scale * table, annot=True, fmt=".1f", cmap=cmap,
                cbar_kws={"label": f"{_metric_label(value)}: {reading}"}, linewidths=0.5, ax=ax)
    ax.set_yticklabels([_format_value(v) for v in table.index], rotation=0)
    ax.set_xticklabels([_format_value(v) for v in table.columns], rotation=0)
    ax.set(xlabel=_setting_label(x), ylabel=_setting_label(y),
           title=title or f"{_metric_label(value)} by {_setting_label(x)} and {_setting_label(y)}")
    return fig


def _setting_label(name: str) -> str:
    return {"frozen_depth": "frozen depth (blocks from the input)", "lr": "learning rate",
            "patience": "early-stopping patience", "l2sp": "L2-SP strength",
            "rehearsal": "rehearsal fraction"}.get(name, name)


def pareto_front(frame: pd.DataFrame, *, accuracy: str = "test_acc", cost: str = "forgetting") -> pd.DataFrame:
    """The runs no other run beats on both: higher accuracy and lower forgetting."""
    require_frame(frame, "pareto_front")
    ordered = frame.sort_values([cost, accuracy], ascending=[True, False])
    best, keep = -np.inf, []
    for index, row in ordered.iterrows():
        if row[accuracy] > best:
            keep.append(index)
            best = row[accuracy]
    return frame.loc[keep].sort_values(cost)


def plot_tradeoff(frame: pd.DataFrame, *, accuracy: str = "test_acc", label: str | None = None,
                  title: str | None = None) -> Figure:
    """Target accuracy against forgetting for every run, with the Pareto front drawn.

    label: a column naming each run's method (default: built from depth, lr and mitigations)."""
    require_frame(frame, "plot_tradeoff")
    if "forgetting" not in frame:
        raise ValueError("the runs have no 'forgetting' column: sweep with source=ftlab.Source(task, head)")
    labels = frame[label] if label else frame.apply(_run_label, axis=1)
    fig, (ax,) = _new_figure(1, width=7, height=4.6)
    methods = pd.Categorical(labels.map(lambda s: s.split(",")[0]))
    for i, method in enumerate(methods.categories):
        chosen = methods == method
        ax.scatter(frame.loc[chosen, "forgetting"], 100 * frame.loc[chosen, accuracy], s=60,
                   color=PALETTE[i % len(PALETTE)], marker="os^DvPX*"[i % 8], label=method, zorder=3)
    front = pareto_front(frame, accuracy=accuracy)
    ax.plot(front["forgetting"], 100 * front[accuracy], "--", color="0.3", zorder=2, label="Pareto front")
    for index in front.index:  # name only the runs worth choosing; the legend covers the rest
        ax.annotate(labels[index], (frame.loc[index, "forgetting"], 100 * frame.loc[index, accuracy]),
                    textcoords="offset points", xytext=(6, -10), fontsize=7, color="0.2")
    ax.set(xlabel="forgetting: source accuracy lost (points)", ylabel=f"target {_metric_label(accuracy)}",
           title=title or "Learning the new task vs keeping the old one")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right", framealpha=0.85)
    return fig


def _run_label(row: pd.Series) -> str:
    parts = []
    if row.get("l2sp", 0):
        parts.append(f"L2-SP {row['l2sp']:g}")
    if row.get("rehearsal", 0):
        parts.append(f"rehearsal {row['rehearsal']:g}")
    if row.get("patience") is not None and not pd.isna(row.get("patience")):
        parts.append(f"patience {int(row['patience'])}")
    method = parts[0] if parts else "plain"
    return ", ".join([method, f"depth {row['frozen_depth']}", f"lr {row['lr']:g}"] + parts[1:])


def plot_confusion(model, dataset, *, classes: Sequence[str] | None = None, normalize: bool = True,
                   device: str = "auto") -> Figure:
    """Which classes the model confuses: rows are true classes, columns predictions."""
    require_model(model, "plot_confusion")
    require_dataset(dataset, "plot_confusion")
    from .training import evaluate

    result = evaluate(model, dataset, confusion=True, device=device)
    matrix = result["confusion"].astype(float)
    if normalize:
        matrix = 100 * matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    names = list(classes) if classes is not None else [str(i) for i in range(len(matrix))]
    size = max(4.5, 0.55 * len(names) + 2)
    fig, (ax,) = _new_figure(1, width=size + 1, height=size)
    sns.heatmap(matrix, annot=True, fmt=".0f" if normalize else "g", cmap="Blues", xticklabels=names,
                yticklabels=names, cbar_kws={"label": "% of the true class" if normalize else "examples"}, ax=ax)
    ax.set(xlabel="predicted class", ylabel="true class",
           title=f"Confusion matrix (accuracy {result['accuracy']:.1%} on {result['n']} examples)")
    return fig


def plot_lr_find(result: "LRFinderResult", *, title: str | None = None) -> Figure:
    """The range test: training loss against learning rate (log scale), the suggestion marked.

    The raw mini-batch losses are drawn faintly behind the smoothed curve the suggestion was read from."""
    if not result.lrs:
        raise ValueError("this range test has no steps to plot")
    fig, (ax,) = _new_figure(1, width=6.5, height=4.2)
    lrs, losses = np.asarray(result.lrs), np.asarray(result.losses)
    ax.plot(lrs, result.raw_losses, color=TRAIN, alpha=0.25, linewidth=1, label="loss of each mini-batch")
    ax.plot(lrs, losses, color=TRAIN, linewidth=2, label="smoothed loss")
    if np.isfinite(result.suggestion):
        at = float(np.interp(np.log(result.suggestion), np.log(lrs), losses))
        ax.axvline(result.suggestion, color=VAL, linestyle="--", linewidth=1)
        ax.plot([result.suggestion], [at], "o", color=VAL, markersize=8,
                label=f"suggestion ({result.rule} rule): {result.suggestion:.1e}")
    if result.diverged:
        ax.plot([lrs[-1]], [losses[-1]], "x", color=PALETTE[3], markersize=8, label="loss exploded: stopped")
    # the blow-up can be many times the start: cut it, so the fall stays readable
    low = min(losses.min(), np.min(result.raw_losses))
    high = max(losses[0], min(losses.max(), 1.5 * losses[0]))
    pad = 0.05 * ((high - low) or 1.0)
    ax.set_ylim(low - pad, high + pad)
    ax.set_xscale("log")
    ax.set(xlabel="learning rate (log scale)", ylabel="training loss (cross-entropy)",
           title=title or f"Learning-rate range test (frozen depth {result.frozen_depth})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.85)
    return fig
