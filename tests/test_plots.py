"""Plots: they build from small histories and frames, and draw what they promise (checked on the
artists: lines, markers, labels), not just 'no exception'."""
from __future__ import annotations

import matplotlib
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure

import ftlab
from ftlab.history import History
from ftlab.plots import pareto_front, plot_confusion, plot_histories, plot_history, plot_sweep, plot_tradeoff

matplotlib.use("Agg")


def _history(best: int = 2, stopped: bool = True, source: bool = True) -> History:
    rows = []
    for epoch, (train, val) in enumerate([(2.3, 2.3), (1.0, 1.2), (0.5, 0.9), (0.2, 1.1), (0.1, 1.4)]):
        row = {"epoch": epoch, "train_loss": train, "train_acc": 1 - train / 3, "val_loss": val,
               "val_acc": 1 - val / 3, "lr": 1e-3, "seconds": 0.1}
        if source:
            row.update(source_acc=0.9 - 0.1 * epoch, source_loss=0.3 + 0.1 * epoch)
        rows.append(row)
    return History(config={"lr": 1e-3, "frozen_depth": 3, "patience": 2}, rows=rows, best_epoch=best,
                   stopped_early=stopped, restored_best=stopped)


def _vlines(ax) -> dict[str, float]:
    return {line.get_label(): line.get_xdata()[0] for line in ax.get_lines()
            if len(set(line.get_xdata())) == 1 and len(line.get_xdata()) == 2}


def test_history_plot_marks_best_and_stop_epochs_and_shades_the_gap():
    fig = plot_history(_history())
    assert isinstance(fig, Figure)
    loss_ax, acc_ax = fig.axes[:2]
    for ax in (loss_ax, acc_ax):
        marks = _vlines(ax)
        assert marks["best epoch (2), restored"] == 2
        assert marks["stopped early (epoch 4)"] == 4
        assert ax.get_xlabel() == "epoch" and ax.get_ylabel()
    assert any(isinstance(c, PolyCollection) for c in loss_ax.collections)  # the overfitting gap
    labels = [line.get_label() for line in acc_ax.get_lines()]
    assert any(label.startswith("source task (forgetting +20.0 pts)") for label in labels)
    assert fig._suptitle.get_text() == "lr 0.001, frozen depth 3, patience 2"


def test_history_plot_without_source_or_stop_has_no_such_marks():
    fig = plot_history(_history(stopped=False, source=False))
    acc_ax = fig.axes[1]
    assert not any("source" in line.get_label() for line in acc_ax.get_lines())
    assert not any("stopped" in label for label in _vlines(acc_ax))
    assert "best epoch (2)" in _vlines(acc_ax)


def test_history_plot_of_a_real_run(tiny_resnet, image_task):
    history = ftlab.fit(tiny_resnet, image_task, lr=1e-3, epochs=2, progress=False)
    fig = plot_history(history)
    train_line = next(line for line in fig.axes[0].get_lines() if line.get_label() == "train")
    assert list(train_line.get_ydata()) == pytest.approx(history.to_frame().train_loss.tolist())


def test_empty_history_is_refused():
    with pytest.raises(ValueError, match="no epochs"):
        plot_history(History())


def test_overlay_draws_one_line_per_run():
    fig = plot_histories({"a": _history(), "b": _history(best=1)}, metric="val_loss")
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["a", "b"]


def _frame() -> pd.DataFrame:
    return pd.DataFrame({"frozen_depth": [0, 0, 5, 5], "lr": [1e-3, 1e-2, 1e-3, 1e-2],
                         "val_acc": [0.9, 0.7, 0.6, 0.65], "test_acc": [0.91, 0.72, 0.6, 0.66],
                         "forgetting": [30.0, 60.0, 0.0, 0.0], "l2sp": 0.0, "rehearsal": 0.0, "patience": None})


def test_sweep_heatmap_shows_every_cell_in_percent():
    fig = plot_sweep(_frame(), x="frozen_depth", y="lr", value="val_acc")
    ax = fig.axes[0]
    assert sorted(t.get_text() for t in ax.texts) == sorted(["90.0", "70.0", "60.0", "65.0"])
    assert ax.get_xlabel().startswith("frozen depth") and ax.get_ylabel() == "learning rate"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0.01", "0.001"]  # larger rates on top


def test_sweep_heatmap_names_a_missing_column():
    with pytest.raises(ValueError, match="no column 'forgetting'"):
        plot_sweep(_frame().drop(columns="forgetting"), value="forgetting")


def test_pareto_front_keeps_only_undominated_runs():
    front = pareto_front(_frame())
    # (0 forgetting, 66%) and (30, 91%) are undominated; (0, 60%) and (60, 72%) are beaten
    assert sorted(zip(front.forgetting, front.test_acc)) == [(0.0, 0.66), (30.0, 0.91)]


def test_tradeoff_plot_draws_points_and_the_front():
    fig = plot_tradeoff(_frame())
    ax = fig.axes[0]
    front_line = next(line for line in ax.get_lines() if line.get_label() == "Pareto front")
    assert list(front_line.get_xdata()) == [0.0, 30.0]
    assert sum(len(c.get_offsets()) for c in ax.collections) == 4
    assert len(ax.texts) == 2  # the runs on the front are named
    with pytest.raises(ValueError, match="source="):
        plot_tradeoff(_frame().drop(columns="forgetting"))


def test_confusion_plot_rows_sum_to_100_percent(tiny_resnet, image_task):
    fig = plot_confusion(tiny_resnet, image_task.test, classes=image_task.classes)
    ax = fig.axes[0]
    values = [float(t.get_text()) for t in ax.texts]
    assert len(values) == 16
    rows = [sum(values[i * 4:(i + 1) * 4]) for i in range(4)]
    assert all(abs(r - 100) <= 2 for r in rows)  # rounded per cell
    assert [t.get_text() for t in ax.get_xticklabels()] == list(image_task.classes)
