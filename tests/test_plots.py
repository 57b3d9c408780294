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


# --- how a run ended: History.outcome, written once ---------------------------------------------


@pytest.mark.parametrize("flags, outcome, ending", [
    ({}, "finished", "finished (4 epochs)"),
    ({"stopped_early": True}, "stopped early", "stopped early (epoch 4)"),
    ({"interrupted": True}, "interrupted", "interrupted (epoch 4)"),
    ({"diverged": True}, "diverged", "diverged (epoch 4)"),
    ({"diverged": True, "interrupted": True, "stopped_early": True}, "diverged", "diverged (epoch 4)"),
    ({"interrupted": True, "stopped_early": True}, "interrupted", "interrupted (epoch 4)"),
])
def test_history_says_how_the_run_ended_and_the_plot_uses_it(flags, outcome, ending):
    history = _history(stopped=False)
    for name, value in flags.items():
        setattr(history, name, value)
    assert history.outcome == outcome and history.ending == ending
    assert (history.stop_epoch is None) == (outcome == "finished")
    marks = _vlines(plot_history(history).axes[0])
    if outcome == "finished":
        assert not any("epoch 4" in label for label in marks)
    else:
        assert marks[ending] == 4


# --- gradual unfreezing: the frozen depth of each epoch -----------------------------------------


def _unfreezing_history(depths) -> History:
    history = _history(stopped=False, source=False)
    for row, depth in zip(history.rows, depths):
        row["frozen_depth"] = depth
    return history


def test_history_plot_shows_a_changing_frozen_depth_as_steps():
    fig = plot_history(_unfreezing_history([5, 5, 3, 3, 1]))
    assert len(fig.axes) == 3  # loss, accuracy, and the loss plot's right-hand axis
    depth_ax = fig.axes[2]
    (line,) = depth_ax.get_lines()
    assert line.get_label() == "frozen depth (right axis)" and line.get_drawstyle() == "steps-pre"
    assert list(line.get_xdata()) == [0, 1, 2, 3, 4] and list(line.get_ydata()) == [5, 5, 3, 3, 1]
    assert depth_ax.get_ylabel() == "frozen depth (blocks)"
    assert [t for t in depth_ax.get_yticks()] == [1, 2, 3, 4, 5]
    legend = [t.get_text() for t in depth_ax.get_legend().get_texts()]
    assert "frozen depth (right axis)" in legend and "train" in legend  # one legend for both axes
    assert "frozen depth 5→3→1" in fig._suptitle.get_text()


@pytest.mark.parametrize("depths", [[3, 3, 3, 3, 3], None])
def test_history_plot_with_a_constant_or_no_frozen_depth_is_unchanged(depths):
    history = _unfreezing_history(depths) if depths else _history(stopped=False, source=False)
    fig = plot_history(history)
    assert len(fig.axes) == 2
    assert fig._suptitle.get_text() == "lr 0.001, frozen depth 3, patience 2"


# --- the sweep heatmap: darker = more, for every value -------------------------------------------


def _luminance(rgba) -> float:
    r, g, b = rgba[:3]
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


@pytest.mark.parametrize("value, reading", [("val_acc", "darker is better"), ("test_acc", "darker is better"),
                                            ("forgetting", "darker forgets more")])
def test_sweep_heatmap_draws_more_darker_and_says_so(value, reading):
    frame = _frame()
    fig = plot_sweep(frame, value=value)
    ax, colour_bar = fig.axes[0], fig.axes[1]
    mesh = ax.collections[0]
    cells = mesh.get_array().ravel()
    colours = mesh.get_facecolors()
    darkest, lightest = int(cells.argmax()), int(cells.argmin())
    assert cells[darkest] > cells[lightest]
    assert _luminance(colours[darkest]) < _luminance(colours[lightest])  # more is darker
    assert reading in colour_bar.get_ylabel() and colour_bar.get_ylabel().startswith(
        {"val_acc": "validation accuracy (%)", "test_acc": "test accuracy (%)", "forgetting": "forgetting"}[value])


def test_the_lessons_titles_still_work():
    frame = _frame()
    fig = plot_sweep(frame, x="frozen_depth", y="lr", value="forgetting",
                     title="Forgetting (points): darker forgets more")
    assert fig.axes[0].get_title() == "Forgetting (points): darker forgets more"


# --- the learning-rate finder's plot ------------------------------------------------------------


def _finder_result(**changes):
    from ftlab.lr_finder import LRFinderResult

    lrs = tuple(1e-7 * 10 ** (i / 4) for i in range(30))
    losses = tuple([2.0] * 10 + [2.0 - 0.15 * i for i in range(1, 12)] + [0.4 + 0.6 * i for i in range(9)])
    fields = {"lrs": lrs, "losses": losses, "raw_losses": tuple(v + 0.05 for v in losses),
              "suggestion": lrs[15], "frozen_depth": 3, "diverged": True, **changes}
    return LRFinderResult(**fields)


def test_lr_find_plot_marks_the_suggestion_on_a_log_axis():
    result = _finder_result()
    fig = ftlab.plot_lr_find(result)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and "learning rate" in ax.get_xlabel()
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["smoothed loss"].get_ydata()) == list(result.losses)
    assert list(lines["loss of each mini-batch"].get_ydata()) == list(result.raw_losses)
    mark = lines[f"suggestion (valley rule): {result.suggestion:.1e}"]
    assert mark.get_xdata()[0] == result.suggestion and mark.get_ydata()[0] == pytest.approx(result.losses[15])
    assert any(label.startswith("loss exploded") for label in lines)
    assert ax.get_ylim()[1] < max(result.losses)  # the blow-up is cut so the fall stays readable
    assert "frozen depth 3" in ax.get_title()


def test_lr_find_plot_without_a_suggestion_marks_nothing():
    fig = ftlab.plot_lr_find(_finder_result(suggestion=float("nan"), diverged=False))
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert not any(label.startswith(("suggestion", "loss exploded")) for label in labels)
    with pytest.raises(ValueError, match="no steps"):
        ftlab.plot_lr_find(_finder_result(lrs=(), losses=(), raw_losses=()))


def test_lr_find_plot_of_a_real_range_test(tiny_resnet, image_task):
    result = ftlab.lr_find(tiny_resnet, image_task, frozen_depth=4, num_steps=30, device="cpu", progress=False)
    line = next(l for l in ftlab.plot_lr_find(result).axes[0].get_lines() if l.get_label() == "smoothed loss")
    assert list(line.get_xdata()) == list(result.lrs)
