"""The dashboard without a browser (ftlab/widgets.py): set controls, click, and check what ftlab was
asked to do and what the dashboard shows. Spies wrap the real functions, so every run is real.

Runs are near-probes of the tiny ResNet (frozen depth 4 or 5) on the 64-image toy task: each
takes well under a second. The real-browser check is tests/test_browser.py.
"""
from __future__ import annotations

import sys
import threading

import pytest
import torch

import ftlab
from ftlab import sweeps, widgets
from ftlab.store import RunStore
from ftlab.widgets import dashboard, frozen_label

from conftest import make_image_task, make_tiny_resnet

RESNET_BLOCKS = ["stem", "layer1", "layer2", "layer3", "layer4"]


@pytest.fixture(autouse=True)
def quick_and_private(ftlab_home):
    """One torch thread (tiny models) and a private run store for every test."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def escaped(monkeypatch):
    """Exceptions that escaped a background thread (there should be none)."""
    caught = []
    monkeypatch.setattr(threading, "excepthook", caught.append)
    return caught


@pytest.fixture
def run_spy(monkeypatch):
    """Wraps ftlab.sweeps.run: records each call's keyword arguments and the model's weights then."""
    calls, real = [], sweeps.run

    def spy(model, task, **kwargs):
        calls.append({**kwargs, "model": model, "weights": snapshot(model)})
        return real(model, task, **kwargs)

    monkeypatch.setattr(sweeps, "run", spy)
    return calls


@pytest.fixture
def fit_spy(monkeypatch):
    calls, real = [], sweeps.fit

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(sweeps, "fit", spy)
    return calls


def snapshot(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def shown(output) -> str:
    """Everything an Output widget shows, as text (HTML and plain text; images as their MIME type)."""
    parts = []
    for entry in output.outputs:
        data = entry.get("data", {})
        parts.append(data.get("text/html", "") + data.get("text/plain", "") + " ".join(data))
    return "\n".join(parts)


def make_source():
    model = make_tiny_resnet()
    old_head = ftlab.models.replace_head(model, 4)
    return model, ftlab.Source(make_image_task(seed=7), old_head, name="toy source")


# --- the controls -------------------------------------------------------------------------------


@pytest.mark.parametrize("depth, expected", [
    (0, "frozen: nothing (full fine-tuning)"),
    (1, "frozen: stem · training: layer1, layer2, layer3, layer4 and the head"),
    (3, "frozen: stem, layer1, layer2 · training: layer3, layer4 and the head"),
    (5, "frozen: whole backbone (linear probe)"),
])
def test_the_depth_label_names_the_frozen_blocks(depth, expected, image_task):
    assert expected in frozen_label(RESNET_BLOCKS, depth)
    board = dashboard(make_tiny_resnet(), image_task)
    board.depth_slider.value = depth  # the observer rewrites the label
    assert expected.split(" · ")[0] in board.depth_label.value
    assert board.depth_slider.max == len(RESNET_BLOCKS)


def test_mitigations_are_enabled_only_with_a_source(image_task):
    plain = dashboard(make_tiny_resnet(), image_task)
    assert plain.l2sp_slider.disabled and plain.rehearsal_slider.disabled
    model, source = make_source()
    with_source = dashboard(model, image_task, source=source)
    assert not with_source.l2sp_slider.disabled and not with_source.rehearsal_slider.disabled
    assert "source_acc" in dict(with_source.compare_metric.options).values()


def test_first_values_come_from_settings_and_bad_ones_fail_at_once(image_task):
    board = dashboard(make_tiny_resnet(), image_task,
                      settings={"lr": 3e-4, "frozen_depth": 2, "patience": 3, "epochs": 7, "batch_size": 16})
    assert board._values() == {"lr": 3e-4, "frozen_depth": 2, "patience": 3, "epochs": 7, "l2sp": 0.0,
                               "rehearsal": 0.0}
    assert board.fixed == {"batch_size": 16}
    with pytest.raises(ValueError, match="unknown setting"):
        dashboard(make_tiny_resnet(), image_task, settings={"learning_rate": 1e-3})
    with pytest.raises(ValueError, match="frozen depth must be a whole number from 0"):
        dashboard(make_tiny_resnet(), image_task, settings={"frozen_depth": 9})


# --- running ------------------------------------------------------------------------------------


def test_run_button_calls_sweeps_run_with_the_controls(image_task, run_spy, escaped):
    model = make_tiny_resnet()
    start = snapshot(model)
    board = dashboard(model, image_task)
    board.lr_slider.value = 1e-2
    board.depth_slider.value = 4
    board.patience_menu.value = 2
    board.epochs_slider.value = 1
    board.run_button.click()
    result = board.wait()

    assert len(run_spy) == 1
    call = run_spy[0]
    assert call["model"] is model and same_weights(call["weights"], start)
    assert {k: call["settings"][k] for k in ("lr", "frozen_depth", "patience", "epochs", "l2sp", "rehearsal")} == \
        {"lr": 0.01, "frozen_depth": 4, "patience": 2, "epochs": 1, "l2sp": 0.0, "rehearsal": 0.0}
    assert isinstance(call["stop_event"], threading.Event) and call["source"] is None
    assert result is board.runs[-1] and not result.from_store and result.history.epochs_run == 1
    assert "image/png" in shown(board.output)  # the live curves
    assert "#1" in shown(board.table) and "finished (1 epoch)" in shown(board.table)  # History.ending
    assert board.progress.value == 1 and "done" in board.status.value and board.progress.bar_style == "success"
    assert not board.run_button.disabled and board.stop_button.disabled
    assert board.last_error is None and not escaped


def test_every_run_starts_from_the_starting_weights(image_task, run_spy):
    model = make_tiny_resnet()
    start = snapshot(model)
    board = dashboard(model, image_task)
    board.run(lr=1e-2, frozen_depth=3, epochs=1)
    assert not same_weights(snapshot(model), start)  # the model holds what the run trained
    board.run(lr=1e-3, frozen_depth=4, epochs=1)
    assert [same_weights(call["weights"], start) for call in run_spy] == [True, True]


def test_headless_run_sets_the_controls(image_task):
    model, source = make_source()
    board = dashboard(model, image_task, source=source)
    result = board.run(lr=2e-3, frozen_depth=5, patience=None, epochs=1, l2sp=0.1, rehearsal=0.25)
    assert board._values() == {"lr": 2e-3, "frozen_depth": 5, "patience": None, "epochs": 1, "l2sp": 0.1,
                               "rehearsal": 0.25}
    assert result.row["l2sp"] == 0.1 and result.row["rehearsal"] == 0.25 and "forgetting" in result.row
    assert "forgetting" in shown(board.table)


def test_stop_ends_the_run_cleanly_with_the_best_weights(image_task, escaped):
    model = make_tiny_resnet()
    best = {}

    def press_stop_after_epoch_1(history):  # runs in the training thread, as a click would arrive
        if history.best_epoch == history.epochs_run:
            best["weights"] = snapshot(model)
        if history.epochs_run == 1:
            board.stop_button.click()

    board = dashboard(model, image_task, callbacks=[press_stop_after_epoch_1])
    result = board.run(lr=1e-2, frozen_depth=3, epochs=6)
    history = result.history
    assert history.interrupted and history.epochs_run == 1 and history.restored_best
    assert same_weights(snapshot(model), best["weights"])  # fit put the best epoch's weights back
    assert "stopped by you" in board.status.value and "interrupted (epoch 1)" in shown(board.table)
    assert board.progress.bar_style == "warning"  # not green: the run did not end on its own
    assert not board.running and not board.run_button.disabled and not escaped
    board.callbacks.clear()
    assert not board.run(epochs=1).from_store  # an interrupted run is not kept in the run store


def test_the_same_settings_come_back_from_the_store(image_task, tmp_path, fit_spy):
    board = dashboard(make_tiny_resnet(), image_task, store=RunStore(tmp_path / "runs"))
    first = board.run(lr=1e-3, frozen_depth=4, epochs=1)
    board.output.outputs = ()
    second = board.run(lr=1e-3, frozen_depth=4, epochs=1)
    assert not first.from_store and second.from_store
    assert len(fit_spy) == 1  # the second did not train
    assert second.history.rows == first.history.rows
    assert "from the run store" in board.status.value and "from the run store" in shown(board.table)
    assert "image/png" in shown(board.output)  # its curves are shown at once


@pytest.mark.parametrize("values, message", [
    ({"epochs": 0}, "epochs must be a whole number from 1 to 50, got 0"),
    ({"lr": 0.5}, "learning rate must be between 1e-05 and 0.1"),
    ({"frozen_depth": 6}, "frozen depth must be a whole number from 0 (nothing frozen) to 5"),
    ({"patience": 0}, "patience must be None (no early stopping)"),
    ({"l2sp": 0.1}, "source=ftlab.Source(old_task, old_head)"),
])
def test_bad_values_are_reported_in_the_output_area(values, message, image_task, run_spy):
    board = dashboard(make_tiny_resnet(), image_task)
    assert board.run(**values) is None  # no exception escapes
    assert message in shown(board.output) and message in board.last_error
    assert "error" in board.status.value and not run_spy and not board.runs


def test_an_exception_in_the_training_thread_is_shown(image_task, monkeypatch, escaped):
    def broken(*args, **kwargs):
        raise RuntimeError("the GPU caught fire")

    monkeypatch.setattr(sweeps, "run", broken)
    board = dashboard(make_tiny_resnet(), image_task)
    board.run_button.click()
    assert board.wait() is None
    assert "RuntimeError: the GPU caught fire" in shown(board.output)
    assert "Traceback" in shown(board.output)  # folded away, for the instructor
    assert not board.run_button.disabled and board.stop_button.disabled and not escaped


def test_an_exception_in_a_callback_is_shown(image_task, escaped):
    def broken_plot(history):
        if history.epochs_run == 1:
            raise ValueError("the plot broke")

    board = dashboard(make_tiny_resnet(), image_task, callbacks=[broken_plot])
    assert board.run(frozen_depth=4, epochs=2) is None
    assert "ValueError: the plot broke" in shown(board.output) and not board.runs and not escaped


def test_a_second_run_waits_for_the_first(image_task):
    answers = []

    def try_again(history):
        if history.epochs_run == 1 and not answers:
            answers.append(board.run(epochs=1))

    board = dashboard(make_tiny_resnet(), image_task, callbacks=[try_again])
    assert board.run(frozen_depth=4, epochs=2) is not None
    assert answers == [None] and len(board.runs) == 1


# --- comparing ----------------------------------------------------------------------------------


def test_compare_overlays_the_selected_runs(image_task, monkeypatch):
    drawn = []
    real = ftlab.plots.plot_histories
    monkeypatch.setattr(ftlab.plots, "plot_histories", lambda histories, **kw: drawn.append(histories)
                        or real(histories, **kw))
    board = dashboard(make_tiny_resnet(), image_task)
    board.run(lr=1e-3, frozen_depth=4, epochs=1)
    board.run(lr=1e-2, frozen_depth=4, epochs=1)
    board.run(lr=1e-2, frozen_depth=5, epochs=1)
    assert board.compare_select.value == (1, 2)  # the newest two, ready to compare
    board.compare_select.value = (0, 1)
    board.compare_metric.value = "val_loss"
    board.compare_button.click()
    assert list(drawn[-1]) == ["#1 lr 0.001, depth 4, no early stop, 1 epoch",
                               "#2 lr 0.01, depth 4, no early stop, 1 epoch"]
    assert [h.config["lr"] for h in drawn[-1].values()] == [1e-3, 1e-2]
    assert "image/png" in shown(board.compare_output)

    board.compare_select.value = (2,)
    board.compare_button.click()
    assert "select two or more runs" in shown(board.compare_output)


def test_the_dashboard_displays_itself(image_task, monkeypatch):
    board = dashboard(make_tiny_resnet(), image_task)
    displayed = []
    monkeypatch.setattr("IPython.display.display", lambda obj: displayed.append(obj))
    board._ipython_display_()
    assert displayed == [board.widget]
    assert "Dashboard(ResNet on toy-images, 0 runs)" == repr(board)
    assert widgets.run_label(3, {"lr": 1e-3, "frozen_depth": 2, "patience": 3, "epochs": 5, "l2sp": 0.1,
                                 "rehearsal": 0}) == "#3 lr 0.001, depth 2, patience 3, 5 epochs, L2-SP 0.1"


# --- the progress bar tells how a run ended ---------------------------------------------------


@pytest.mark.parametrize("flags, style", [
    ({}, "success"), ({"stopped_early": True}, "success"), ({"interrupted": True}, "warning"),
    ({"diverged": True}, "danger"), ({"diverged": True, "interrupted": False, "stopped_early": True}, "danger"),
])
def test_the_bar_is_green_only_when_the_run_ended_on_its_own(flags, style, image_task):
    board = dashboard(make_tiny_resnet(), image_task)
    history = ftlab.History(rows=[{"epoch": 0}, {"epoch": 1}, {"epoch": 2}], best_epoch=1, **flags)
    row = {"val_acc": 0.5, "test_acc": 0.5, "patience": 1}
    board._show_result(sweeps.RunResult(row, history, from_store=False))
    assert board.progress.bar_style == style


# --- the "suggest" button: the learning-rate finder ---------------------------------------------


@pytest.fixture
def find_spy(monkeypatch):
    """Wraps ftlab.lr_finder.lr_find: records each call's arguments and the weights it was given."""
    calls, real = [], ftlab.lr_finder.lr_find

    def spy(model, task, **kwargs):
        calls.append({**kwargs, "model": model, "weights": snapshot(model),
                      "flags": [p.requires_grad for p in model.parameters()]})
        calls[-1]["result"] = real(model, task, **kwargs)
        return calls[-1]["result"]

    monkeypatch.setattr(ftlab.lr_finder, "lr_find", spy)
    return calls


def test_suggest_runs_lr_find_at_the_depth_shown_and_sets_the_slider(image_task, find_spy, escaped):
    model = make_tiny_resnet()
    start, start_flags = snapshot(model), [p.requires_grad for p in model.parameters()]
    board = dashboard(model, image_task, settings={"batch_size": 16})
    board.run(lr=1e-2, frozen_depth=3, epochs=1)  # the model now holds what that run trained
    trained, trained_flags = snapshot(model), [p.requires_grad for p in model.parameters()]
    board.depth_slider.value = 2
    board.lr_slider.value = 1e-5
    board.suggest_button.click()
    board.wait()

    (call,) = find_spy
    assert call["model"] is model and call["frozen_depth"] == 2 and call["batch_size"] == 16
    assert same_weights(call["weights"], start) and call["flags"] == start_flags  # as every run starts
    result = board.last_suggestion
    assert result is call["result"] and result.frozen_depth == 2
    expected = min(max(result.suggestion, widgets.LR_RANGE[0]), widgets.LR_RANGE[1])
    assert board.lr_slider.value == pytest.approx(expected) and board.lr_slider.value != 1e-5
    assert f"{result.suggestion:.1e}" in shown(board.output) and "valley" in shown(board.output)
    assert "image/png" in shown(board.output)  # the range test's plot
    assert f"{expected:.1e}" in board.status.value
    assert same_weights(snapshot(model), trained)  # the trained weights are back
    assert [p.requires_grad for p in model.parameters()] == trained_flags
    assert not board.run_button.disabled and not board.suggest_button.disabled and not escaped
    assert board.last_error is None
    # and the next run uses the suggestion
    assert board.run(epochs=1).row["lr"] == float(f"{expected:.2g}")


@pytest.mark.parametrize("suggestion, slider", [(5.0, 0.1), (1e-9, 1e-5)])
def test_a_suggestion_outside_the_slider_is_clipped_to_its_range(suggestion, slider, image_task, monkeypatch):
    fake = ftlab.lr_finder.LRFinderResult(lrs=(1e-9, suggestion, 10.0), losses=(2.0, 1.0, 3.0),
                                          raw_losses=(2.0, 1.0, 3.0), suggestion=suggestion)
    monkeypatch.setattr(ftlab.lr_finder, "lr_find", lambda model, task, **kw: fake)
    board = dashboard(make_tiny_resnet(), image_task)
    assert board.suggest() is fake
    assert board.lr_slider.value == pytest.approx(slider)
    assert "the slider stops at" in shown(board.output)


def test_no_suggestion_and_errors_are_shown_in_the_output_area(image_task, monkeypatch, escaped):
    flat = ftlab.lr_finder.LRFinderResult(lrs=(1e-7, 1e-3, 10.0), losses=(1.0, 1.0, 1.0),
                                          raw_losses=(1.0, 1.0, 1.0), suggestion=float("nan"),
                                          note="the smoothed loss never fell")
    monkeypatch.setattr(ftlab.lr_finder, "lr_find", lambda model, task, **kw: flat)
    board = dashboard(make_tiny_resnet(), image_task)
    before = board.lr_slider.value
    board.suggest()
    assert board.lr_slider.value == before and "never fell" in shown(board.output)
    assert "never fell" in board.last_error

    def broken(model, task, **kw):
        raise RuntimeError("the range test broke")

    monkeypatch.setattr(ftlab.lr_finder, "lr_find", broken)
    assert board.suggest() is None
    assert "RuntimeError: the range test broke" in shown(board.output) and "error" in board.status.value
    assert not board.suggest_button.disabled and not board.run_button.disabled and not escaped


# --- where a run trains: a thread, or the Run button's callback (Colab) -------------------------


@pytest.fixture
def widget_changes(monkeypatch):
    """Every widget trait change, with the thread it was made from (ipywidgets 7 and 8 send each one
    through Widget.notify_change)."""
    import ipywidgets

    changes, real = [], ipywidgets.Widget.notify_change

    def spy(self, change):
        changes.append((threading.current_thread(), type(self).__name__, change["name"]))
        return real(self, change)

    monkeypatch.setattr(ipywidgets.Widget, "notify_change", spy)
    return changes


def test_callback_mode_changes_widgets_only_from_the_main_thread(image_task, widget_changes, escaped):
    board = dashboard(make_tiny_resnet(), image_task, mode="callback", settings={"batch_size": 16})
    widget_changes.clear()
    board.depth_slider.value, board.epochs_slider.value = 4, 2
    board.run_button.click()  # returns when the run is over: it trained inside the click
    assert board.runs and board.runs[-1].history.epochs_run == 2 and not board.running
    board.suggest_button.click()
    assert board.last_suggestion is not None
    changed = {(kind, name) for _, kind, name in widget_changes}
    assert {("IntProgress", "value"), ("Output", "outputs"), ("HTML", "value"), ("Button", "disabled"),
            ("FloatLogSlider", "value")} <= changed  # the spy saw the run's and the suggestion's updates
    assert {thread for thread, _, _ in widget_changes} == {threading.main_thread()}
    assert not escaped


def test_the_thread_spy_sees_a_background_thread(image_task, widget_changes):
    """The control for the test above: in thread mode the same spy sees changes from elsewhere."""
    board = dashboard(make_tiny_resnet(), image_task, mode="thread")
    board.run(frozen_depth=4, epochs=1)
    others = {thread.name for thread, _, _ in widget_changes if thread is not threading.main_thread()}
    assert others == {"ftlab-dashboard"}


def test_callback_and_thread_modes_train_the_same_run(image_task):
    histories = []
    for mode in widgets.MODES:
        model = make_tiny_resnet()
        board = dashboard(model, image_task, mode=mode, store=None)
        board.lr_slider.value, board.depth_slider.value, board.epochs_slider.value = 1e-2, 3, 2
        board.run_button.click()
        histories.append((board.wait().history, snapshot(model)))
    (thread_history, thread_weights), (callback_history, callback_weights) = histories
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in thread_history.rows] == \
        [{k: v for k, v in r.items() if k not in drop} for r in callback_history.rows]
    assert same_weights(thread_weights, callback_weights)


def test_colab_gets_the_callback_mode(image_task, monkeypatch):
    import types

    assert dashboard(make_tiny_resnet(), image_task).mode == "thread"  # here: no google.colab
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    board = dashboard(make_tiny_resnet(), image_task)
    assert board.mode == widgets.default_mode() == "callback"
    assert board.stop_button.layout.display == "none"  # a click could not arrive during a run
    assert board.stop_hint.layout.display != "none" and "interrupt" in board.stop_hint.value
    assert "runs in the Run callback" in repr(board)
    assert dashboard(make_tiny_resnet(), image_task, mode="thread").stop_button.layout.display != "none"
    with pytest.raises(ValueError, match=r"mode must be one of \('thread', 'callback'\)"):
        dashboard(make_tiny_resnet(), image_task, mode="background")


def test_in_callback_mode_the_interrupt_stops_the_run_with_the_best_weights(image_task, escaped):
    """Colab's stop button raises KeyboardInterrupt in the running callback: here, at epoch 1."""
    model = make_tiny_resnet()
    best = {}

    def interrupt_after_epoch_1(history):
        if history.best_epoch == history.epochs_run:
            best["weights"] = snapshot(model)
        if history.epochs_run == 1 and not history.interrupted:
            raise KeyboardInterrupt

    board = dashboard(model, image_task, mode="callback", callbacks=[interrupt_after_epoch_1])
    board.lr_slider.value, board.depth_slider.value, board.epochs_slider.value = 1e-2, 3, 6
    board.run_button.click()  # no KeyboardInterrupt escapes the click
    history = board.wait().history
    assert history.interrupted and history.epochs_run == 1 and history.restored_best
    assert same_weights(snapshot(model), best["weights"])
    assert "stopped by you" in board.status.value and board.progress.bar_style == "warning"
    assert not board.running and not board.run_button.disabled and not escaped


@pytest.mark.parametrize("button", ["run_button", "suggest_button"])
def test_an_interrupt_outside_the_epochs_is_shown_too(button, image_task, monkeypatch):
    """E.g. while the data is being encoded, before fit's own handler is in place."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweeps, "run", interrupted)
    monkeypatch.setattr(ftlab.lr_finder, "lr_find", interrupted)
    model = make_tiny_resnet()
    start = snapshot(model)
    board = dashboard(model, image_task, mode="callback")
    before = board.lr_slider.value
    getattr(board, button).click()
    assert "stopped by you" in board.status.value and board.progress.bar_style == "warning"
    assert board.wait() is None and not board.runs and board.lr_slider.value == before
    assert same_weights(snapshot(model), start)
    assert not board.running and not board.run_button.disabled and not board.suggest_button.disabled
    assert "Dashboard(ResNet on toy-images, 0 runs, runs in the Run callback)" == repr(board)


def test_a_second_run_is_refused_in_callback_mode_too(image_task):
    answers = []

    def try_again(history):
        if history.epochs_run == 1 and not answers:
            answers.append(board.run(epochs=1))

    board = dashboard(make_tiny_resnet(), image_task, mode="callback", callbacks=[try_again])
    assert board.run(frozen_depth=4, epochs=2) is not None
    assert answers == [None] and len(board.runs) == 1


# --- what the browser showed ------------------------------------------------------------------


def test_the_early_stopping_menu_shows_off_when_patience_is_left_out(image_task):
    """ipywidgets 7 and 8 both blank a Dropdown whose value is None: "off" must be a real option."""
    board = dashboard(make_tiny_resnet(), image_task, settings={"lr": 1e-3, "frozen_depth": 3, "epochs": 3})
    assert board.patience_menu.label == "off" and board._values()["patience"] is None
    board.patience_menu.label = "after 2 epochs without improvement"
    assert board._values()["patience"] == 2
    board.patience_menu.label = "off"  # choosing "off" again
    assert board.patience_menu.index == 0 and board.patience_menu.label == "off"
    assert board._values()["patience"] is None
    board.run(patience=3, frozen_depth=4, epochs=1)
    board.run(patience=None, epochs=1)
    assert board.patience_menu.label == "off" and board.runs[-1].row["patience"] is None
    assert dashboard(make_tiny_resnet(), image_task, settings={"patience": 4}).patience_menu.value == 4


def test_a_stored_run_does_not_list_training_seconds_as_its_own(image_task, tmp_path):
    board = dashboard(make_tiny_resnet(), image_task, store=RunStore(tmp_path / "runs"))
    first = board.run(lr=1e-3, frozen_depth=4, epochs=1)
    second = board.run(lr=1e-3, frozen_depth=4, epochs=1)
    assert second.from_store
    rows = [widgets._table_row(i, r, mitigations=False) for i, r in enumerate(board.runs, 1)]
    assert rows[0]["training seconds"] == f"{first.row['seconds']:.1f}"
    assert rows[1]["training seconds"] == f"0 (stored; trained in {first.row['seconds']:.1f})"


def test_the_controls_use_only_what_ipywidgets_7_and_8_both_have(image_task):
    """An option a version does not know is a warning from traitlets (and is silently dropped)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for mode in widgets.MODES:
            model, source = make_source()
            dashboard(model, image_task, source=source, mode=mode)


def test_thread_mode_prints_nothing_from_its_thread(image_task, capfd):
    """ipykernel 7 routes a thread's output to no cell: everything the dashboard says is widget state.
    (A diverged run's warning from fit is the one exception; the status says the same.)"""
    def stop_after_epoch_1(history):
        if history.epochs_run == 1:
            board.stop()

    board = dashboard(make_tiny_resnet(), image_task, mode="thread", callbacks=[stop_after_epoch_1])
    board.run(frozen_depth=4, epochs=3)
    assert board.runs[0].history.interrupted and "stopped by you" in board.status.value
    assert board.run(lr=0.5) is None and "learning rate must be between" in shown(board.output)  # refused
    board.callbacks.clear()
    board.run(frozen_depth=3, epochs=1)
    assert capfd.readouterr() == ("", "")
