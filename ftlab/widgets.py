"""The fine-tuning dashboard: sliders for learning rate, frozen depth and early stopping, a Run and
a Stop button, live curves, a table of this session's runs, and an overlay to compare them.

    board = ftlab.widgets.dashboard(model, task, source=ftlab.Source(fashion, source_head))
    board                                          # the last line of a cell shows the controls
    result = board.run(lr=1e-3, frozen_depth=3)    # the same without clicking: returns a RunResult
    board.suggest()                                # the "suggest" button: lr_find sets the lr slider

The dashboard only wires controls to ftlab's functions: `ftlab.sweeps.run` trains (or reads a run
already finished back from the run store), `ftlab.lr_finder.lr_find` suggests a learning rate,
`ftlab.plots` draws, `ftlab.freezing.blocks` names the blocks. Every error ends up as a message in
the dashboard, not as a traceback lost in the server's log.

Where training runs (`mode`):
  "thread"    (the default outside Colab) a background thread, so the kernel still hears the Stop
              button while it trains.
  "callback"  (the default on Colab) inside the Run button's callback: Colab does not show widget
              changes made from a background thread (colabtools #3373), but it does show those made
              while a callback runs. Stopping is then the notebook's own interrupt (Colab's stop
              button raises KeyboardInterrupt in the callback; fit keeps the best epoch's weights).
Either way the dashboard changes only widget state (`Output.outputs`, `.value`), never prints from a
thread, so nothing is lost with ipykernel 6 or 7 (7 no longer routes threads' output to a cell).
Only core ipywidgets (7.7 and 8, one code path) and matplotlib: JupyterLab, classic Notebook, Colab.
"""
from __future__ import annotations

import html
import math
import sys
import threading
import traceback
from typing import Callable, Sequence

import ipywidgets as w
import pandas as pd
from torch import nn

from . import lr_finder, plots, sweeps
from .freezing import blocks
from .history import History

__all__ = ["dashboard", "Dashboard", "default_mode", "frozen_label", "run_label", "MODES"]

LR_RANGE = (1e-5, 1e-1)  # the learning-rate slider's ends (log scale)
MAX_EPOCHS, MAX_PATIENCE = 50, 10
DEFAULTS = {"lr": 1e-3, "frozen_depth": 0, "patience": None, "epochs": 10, "l2sp": 0.0, "rehearsal": 0.0}
# the progress bar's colour for each History.outcome: green only when the run ended on its own terms
BAR_STYLES = {"finished": "success", "stopped early": "success", "interrupted": "warning", "diverged": "danger"}
LR_FIND_OPTIONS = ("batch_size", "weight_decay", "seed", "device", "max_length")  # fixed settings lr_find shares
MODES = ("thread", "callback")  # where a run trains: a background thread, or the Run button's callback
NO_PATIENCE = 0  # the early-stopping menu's value for "off": a None value would leave the menu blank
METRICS = {"validation accuracy": "val_acc", "validation loss": "val_loss", "train accuracy": "train_acc",
           "train loss": "train_loss"}


class _Unchanged:
    def __repr__(self) -> str:
        return "unchanged"


unchanged = _Unchanged()  # Dashboard.run's default: leave that control as it is


def default_mode() -> str:
    """"callback" on Colab (it does not show widget changes made from a background thread), else "thread"."""
    return "callback" if "google.colab" in sys.modules else "thread"


def frozen_label(names: Sequence[str], depth: int) -> str:
    """What a frozen depth means for these blocks, in words.

    >>> frozen_label(["stem", "layer1", "layer2", "layer3", "layer4"], 3)
    'frozen: stem, layer1, layer2 · training: layer3, layer4 and the head'
    """
    if depth <= 0:
        return "frozen: nothing (full fine-tuning) · training: every block and the head"
    if depth >= len(names):
        return "frozen: whole backbone (linear probe) · training: the head only"
    return f"frozen: {', '.join(names[:depth])} · training: {', '.join(names[depth:])} and the head"


def run_label(number: int, settings: dict) -> str:
    """A run's name in the table, the compare list and plot legends: '#2 lr 0.001, depth 3, ...'."""
    parts = [f"#{number} lr {settings['lr']:g}", f"depth {settings['frozen_depth']}",
             f"patience {settings['patience']}" if settings.get("patience") else "no early stop",
             f"{settings['epochs']} epoch{'s' * (settings['epochs'] != 1)}"]
    parts += [f"L2-SP {settings['l2sp']:g}"] if settings.get("l2sp") else []
    parts += [f"rehearsal {settings['rehearsal']:g}"] if settings.get("rehearsal") else []
    return ", ".join(parts)


def _display_data(obj) -> dict:
    """One Output-widget entry for a Figure, a DataFrame or an HTML string.

    Replacing `Output.outputs` with it is `clear_output(wait=True)` + `display(obj)` in one step:
    no flicker, and it works from the training thread and without a kernel (headless tests)."""
    from matplotlib.figure import Figure

    if isinstance(obj, Figure):
        import base64

        from IPython.core.pylabtools import print_figure  # what Jupyter's inline backend uses

        png = base64.b64encode(print_figure(obj, "png")).decode("ascii")
        return {"output_type": "display_data", "metadata": {},
                "data": {"image/png": png, "text/plain": repr(obj)}}
    if isinstance(obj, pd.DataFrame):
        return {"output_type": "display_data", "metadata": {},
                "data": {"text/html": obj.to_html(index=False, na_rep=""), "text/plain": obj.to_string(index=False)}}
    return {"output_type": "display_data", "metadata": {}, "data": {"text/html": str(obj), "text/plain": str(obj)}}


def _error_box(text: str, *, title: str = "Could not run", details: str = "") -> str:
    """An error message for an output area (HTML); `details` (e.g. a traceback) folds away."""
    more = (f"<details><summary>details for the instructor</summary><pre style='font-size:11px'>"
            f"{html.escape(details)}</pre></details>") if details else ""
    return (f"<div class='ftlab-error' style='border-left:4px solid #b00020;padding:6px 10px;"
            f"background:#fbeff1'><b>{title}:</b> {html.escape(text)}{more}</div>")


class Dashboard:
    """Controls, live curves and a table of runs for fine-tuning `model` on `task`.

    Each run starts from the weights the model had when the dashboard was made. Settings already
    run are read back from the run store at once (`store`: True = the default store, a RunStore,
    or None for none). `settings` fixes fit's other arguments (e.g. {"batch_size": 64}) and may
    give the controls' first values (lr, frozen_depth, patience, epochs, l2sp, rehearsal).
    `callbacks` are called with the History after every epoch, after the dashboard's own.
    `mode`: "thread" or "callback" (see the module's docstring); None picks default_mode().
    """

    def __init__(self, model: nn.Module, task, *, source=None, settings: dict | None = None,
                 store=True, callbacks: Sequence[Callable[[History], None]] = (), mode: str | None = None):
        mode = default_mode() if mode is None else mode
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES} (or None for the default here, {default_mode()!r}), "
                             f"got {mode!r}")
        self.mode = mode
        settings = dict(settings or {})
        unknown = sorted(set(settings) - set(sweeps.SETTINGS))
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown}; valid settings are {sorted(sweeps.SETTINGS)}")
        self.model, self.task, self.source, self.store = model, task, source, store
        self.callbacks = list(callbacks)
        self.block_names = [name for name, _ in blocks(model)]
        first = {**DEFAULTS, **{k: v for k, v in settings.items() if k in DEFAULTS}}
        self._check(first)  # bad first values fail here, before anything is shown
        self.fixed = {k: v for k, v in settings.items() if k not in DEFAULTS}
        self.runs: list[sweeps.RunResult] = []
        self.last_error: str | None = None
        # the starting weights and freezing flags every run begins from (as sweeps.sweep does)
        self._start_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._start_flags = [p.requires_grad for p in model.parameters()]
        self._thread: threading.Thread | None = None
        self._busy = False  # callback mode: a run or a suggestion is going on in this very call stack
        self._stop_event = threading.Event()
        self._result: sweeps.RunResult | None = None
        self.last_suggestion: lr_finder.LRFinderResult | None = None
        self._build(first)

    # --- the controls -------------------------------------------------------------------------

    def _build(self, first: dict) -> None:
        style, wide = {"description_width": "8.5em"}, w.Layout(width="30em")

        def hint(text: str) -> w.HTML:
            return w.HTML(f"<span style='color:#666;font-size:12px'>{text}</span>")

        self.lr_slider = w.FloatLogSlider(value=first["lr"], base=10, min=math.log10(LR_RANGE[0]),
                                          max=math.log10(LR_RANGE[1]), step=0.1, readout_format=".1e",
                                          description="learning rate", style=style, layout=wide)
        self.depth_slider = w.IntSlider(value=first["frozen_depth"], min=0, max=len(self.block_names),
                                        description="frozen depth", style=style, layout=wide)
        self.depth_label = w.HTML()
        self.patience_menu = w.Dropdown(  # NO_PATIENCE = no early stopping, else the patience in epochs
            options=[("off", NO_PATIENCE)] + [(f"after {n} epoch{'s' * (n > 1)} without improvement", n)
                                              for n in range(1, MAX_PATIENCE + 1)],
            value=_menu_patience(first["patience"]), description="early stopping", style=style, layout=wide)
        self.epochs_slider = w.IntSlider(value=first["epochs"], min=1, max=MAX_EPOCHS, description="epochs",
                                         style=style, layout=wide)
        self.l2sp_slider = w.FloatSlider(value=first["l2sp"], min=0, max=1, step=0.01, readout_format=".2f",
                                         description="L2-SP strength", style=style, layout=wide)
        self.rehearsal_slider = w.FloatSlider(value=first["rehearsal"], min=0, max=1, step=0.05,
                                              readout_format=".2f", description="rehearsal", style=style,
                                              layout=wide)
        no_source = self.source is None
        self.l2sp_slider.disabled = self.rehearsal_slider.disabled = no_source
        need = " (needs a source task: dashboard(..., source=ftlab.Source(old_task, old_head)))" if no_source else ""
        self.suggest_button = w.Button(description="suggest", icon="search", layout=w.Layout(width="8em"),
                                       tooltip="run the learning-rate range test (ftlab.lr_find) at this frozen "
                                               "depth and set the slider to its suggestion")
        self.run_button = w.Button(description="Run", button_style="primary", icon="play",
                                   tooltip="train with these settings (or show them from the run store)")
        self.stop_button = w.Button(description="Stop", button_style="warning", icon="stop", disabled=True,
                                    tooltip="end the run after this batch; the best epoch's weights are kept")
        # callback mode: the kernel is busy in the Run callback, so a Stop click would only arrive
        # after the run; the notebook's interrupt is what stops it (fit keeps the best weights)
        self.stop_hint = hint("to stop a run: the notebook's stop button (interrupt the kernel); "
                              "the best epoch's weights are kept")
        if self.mode == "callback":
            self.stop_button.layout.display = "none"
        else:
            self.stop_hint.layout.display = "none"
        self.progress = w.IntProgress(value=0, min=0, max=first["epochs"], description="epoch 0",
                                      style={"description_width": "5em"}, layout=w.Layout(width="22em"))
        self.status = w.HTML("ready: choose settings and press <b>Run</b>")
        self.output = w.Output(layout=w.Layout(min_height="60px"))  # live curves and error messages
        self.log = w.Output()  # callback mode: what is printed or warned while a run goes on
        self.table = w.Output()  # this session's runs
        self.compare_select = w.SelectMultiple(options=[], rows=5, layout=w.Layout(width="34em"))
        metrics = dict(METRICS, **({"source accuracy (forgetting)": "source_acc"} if self.source else {}))
        self.compare_metric = w.Dropdown(options=list(metrics.items()), value="val_acc", description="plot",
                                         style={"description_width": "3em"}, layout=w.Layout(width="20em"))
        self.compare_button = w.Button(description="Compare", icon="line-chart",
                                       tooltip="overlay the selected runs on one plot")
        self.compare_output = w.Output()

        for widget, name in [(self.suggest_button, "suggest"), (self.run_button, "run"), (self.stop_button, "stop"),
                             (self.output, "curves"), (self.log, "log"), (self.stop_hint, "stop-hint"),
                             (self.depth_slider, "depth"), (self.depth_label, "depth-label"),
                             (self.table, "runs"), (self.status, "status"), (self.compare_button, "compare"),
                             (self.compare_output, "overlay")]:
            widget.add_class(f"ftlab-{name}")
        self.run_button.on_click(lambda _: self._start(self._values()))
        self.stop_button.on_click(lambda _: self.stop())
        self.suggest_button.on_click(lambda _: self._start_suggest())
        self.compare_button.on_click(lambda _: self.compare(list(self.compare_select.value),
                                                            metric=self.compare_metric.value))
        self.depth_slider.observe(lambda _: self._show_depth(), names="value")
        self.epochs_slider.observe(lambda change: setattr(self.progress, "max", change["new"]), names="value")
        self._show_depth()

        title = getattr(self.task, "name", "the task")
        weights = getattr(self.model, "weights_name", None)
        about = (f"<b>{type(self.model).__name__}</b>" + (f" (weights: {html.escape(str(weights))})" if weights else "")
                 + f" fine-tuned on <b>{html.escape(str(title))}</b>"
                 + (f" · forgetting measured on <b>{html.escape(self.source.name)}</b>" if self.source else ""))
        settings = w.VBox([
            w.HBox([self.lr_slider, self.suggest_button,
                    hint("step size of each update: too high diverges, too low learns slowly")]),
            w.HBox([self.depth_slider, self.depth_label]),
            w.HBox([self.patience_menu,
                    hint("stop when the validation loss stops falling, and keep the best epoch's weights")]),
            w.HBox([self.epochs_slider, hint("passes over the training set (at most)")]),
            w.HBox([self.l2sp_slider, hint("pull the body back toward its pretrained weights (0 = off)" + need)]),
            w.HBox([self.rehearsal_slider, hint("share of each batch replayed from the source task (0 = off)" + need)]),
        ])
        self.widget = w.VBox([
            w.HTML(f"<h3 style='margin:4px 0'>Fine-tuning dashboard</h3><div>{about}</div>"),
            settings,
            w.HBox([self.run_button, self.stop_button, self.progress, self.stop_hint],
                   layout=w.Layout(align_items="center")),
            self.status,
            self.output,
            self.log,
            w.HTML("<h4 style='margin:8px 0 2px'>Runs in this session</h4>"),
            self.table,
            w.HTML("<h4 style='margin:8px 0 2px'>Compare runs</h4><span style='color:#666;font-size:12px'>"
                   "select two or more (Ctrl- or Shift-click), then Compare</span>"),
            w.HBox([self.compare_select, w.VBox([self.compare_metric, self.compare_button])]),
            self.compare_output,
        ])
        self.widget.add_class("ftlab-dashboard")

    def _show_depth(self) -> None:
        text = frozen_label(self.block_names, self.depth_slider.value)
        frozen, _, training = text.partition(" · ")
        self.depth_label.value = f"<b>{html.escape(frozen)}</b> · {html.escape(training)}"

    def _values(self) -> dict:
        """The settings the controls show (rounded to what the readouts display)."""
        return {"lr": float(f"{self.lr_slider.value:.2g}"), "frozen_depth": self.depth_slider.value,
                "patience": self.patience_menu.value or None,  # NO_PATIENCE: no early stopping
                "epochs": self.epochs_slider.value, "l2sp": round(self.l2sp_slider.value, 4),
                "rehearsal": round(self.rehearsal_slider.value, 4)}

    def _check(self, values: dict) -> None:
        """Raise ValueError naming every value outside what the controls allow, and what is valid."""
        def whole(v, low, high):
            return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high

        def number(v, low, high):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and low <= v <= high

        n, problems = len(self.block_names), []
        if not number(values["lr"], *LR_RANGE):
            problems.append(f"learning rate must be between {LR_RANGE[0]:g} and {LR_RANGE[1]:g}, got {values['lr']!r}")
        if not whole(values["frozen_depth"], 0, n):
            problems.append(f"frozen depth must be a whole number from 0 (nothing frozen) to {n} "
                            f"(whole backbone), got {values['frozen_depth']!r}")
        if not whole(values["epochs"], 1, MAX_EPOCHS):
            problems.append(f"epochs must be a whole number from 1 to {MAX_EPOCHS}, got {values['epochs']!r}")
        if values["patience"] is not None and not whole(values["patience"], 1, MAX_PATIENCE):
            problems.append(f"patience must be None (no early stopping) or a whole number from 1 to "
                            f"{MAX_PATIENCE}, got {values['patience']!r}")
        for name, label in (("l2sp", "L2-SP strength"), ("rehearsal", "rehearsal fraction")):
            if not number(values[name], 0, 1):
                problems.append(f"{label} must be between 0 (off) and 1, got {values[name]!r}")
            elif values[name] and self.source is None:
                problems.append(f"{label} protects a source task, and this dashboard has none: make it with "
                                f"dashboard(model, task, source=ftlab.Source(old_task, old_head))")
        if problems:
            raise ValueError("; ".join(problems))

    # --- running ------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._busy or (self._thread is not None and self._thread.is_alive())

    def run(self, *, lr=unchanged, frozen_depth=unchanged, patience=unchanged, epochs=unchanged,
            l2sp=unchanged, rehearsal=unchanged) -> sweeps.RunResult | None:
        """Set the controls, run, wait for the end, and return the RunResult (None after an error,
        whose message is in the output area and in `last_error`). patience=None: no early stopping."""
        given = {"lr": lr, "frozen_depth": frozen_depth, "patience": patience, "epochs": epochs,
                 "l2sp": l2sp, "rehearsal": rehearsal}
        values = {**self._values(), **{k: v for k, v in given.items() if v is not unchanged}}
        try:
            if self.running:
                raise ValueError("a run is still going: wait for it to finish or press Stop")
            self._check(values)
        except ValueError as error:
            self._show_error(str(error))
            return None
        self.lr_slider.value, self.depth_slider.value = values["lr"], values["frozen_depth"]
        self.patience_menu.value = _menu_patience(values["patience"])
        self.epochs_slider.value = values["epochs"]
        self.l2sp_slider.value, self.rehearsal_slider.value = values["l2sp"], values["rehearsal"]
        if not self._start(values):
            return None
        return self.wait()

    def wait(self, timeout: float | None = None) -> sweeps.RunResult | None:
        """Block until the current run (e.g. one started by clicking Run) ends; return its RunResult,
        or None after an error or while it is still going after `timeout` seconds. (In callback
        mode a run has ended when the click or `run` returns.)"""
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return None if self.running else self._result

    def stop(self) -> None:
        """End the current run after its current batch; fit keeps the best epoch's weights.
        (In callback mode a click cannot arrive while a run goes on: interrupt the kernel instead;
        a `callbacks` function may still call this.)"""
        if self.running:
            self._stop_event.set()
            self.status.value = "stopping after this batch..."

    def _can_start(self, values: dict) -> bool:
        """True when the values are valid and nothing runs; else False, with the reason shown."""
        try:
            self._check(values)
            if self.running:
                raise ValueError("a run is still going: wait for it to finish or press Stop")
        except ValueError as error:
            self._show_error(str(error))
            return False
        return True

    def _start(self, values: dict) -> bool:
        """Check the values and start a run in the background; False (and a message) if it cannot."""
        if not self._can_start(values):
            return False
        self.last_error, self._result = None, None
        self._stop_event = threading.Event()
        self.run_button.disabled, self.stop_button.disabled = True, False
        self.suggest_button.disabled = True
        self.progress.max, self.progress.value, self.progress.bar_style = values["epochs"], 0, ""
        self.progress.description = "epoch 0"
        self.status.value = ("starting: encoding the data" + (", running the frozen blocks once"
                                                              if values["frozen_depth"] else "") + "...")
        self._launch(self._train, values, name="ftlab-dashboard")
        return True

    def _launch(self, target: Callable, argument, *, name: str) -> None:
        """Run `target(argument)` where this dashboard's mode says: a background thread, or right
        here (callback mode: the caller is the Run button's callback or a cell, so every widget
        change is sent while it runs; what it prints is caught in `log` rather than lost)."""
        if self.mode == "thread":
            self._thread = threading.Thread(target=target, args=(argument,), name=name, daemon=True)
            self._thread.start()
            return
        self._thread = None
        self._busy = True
        self.log.outputs = ()
        try:
            with self.log:
                target(argument)
        finally:
            self._busy = False

    def _train(self, values: dict) -> None:
        """The background thread: one ftlab.sweeps.run from the starting weights."""
        try:
            self.model.load_state_dict(self._start_state)
            for p, flag in zip(self.model.parameters(), self._start_flags):
                p.requires_grad_(flag)
            result = sweeps.run(self.model, self.task, settings={**self.fixed, **values}, source=self.source,
                                store=self.store, callbacks=[self._on_epoch, *self.callbacks],
                                stop_event=self._stop_event)
            self.runs.append(result)
            self._result = result
            self._show_runs()
            self._show_result(result)
        except Exception as error:  # anything at all: show it here rather than in the server's log
            self._show_error(f"{type(error).__name__}: {error}", details=traceback.format_exc())
        except KeyboardInterrupt:  # the notebook's interrupt outside fit's epochs (fit handles its own)
            self._show_stopped("before the run could be measured: nothing was trained or kept")
        finally:
            self.run_button.disabled, self.stop_button.disabled = False, True
            self.suggest_button.disabled = False

    # --- suggesting a learning rate -----------------------------------------------------------

    def suggest(self) -> lr_finder.LRFinderResult | None:
        """What the "suggest" button does, waiting for the end: the learning-rate range test
        (ftlab.lr_find) at the frozen depth the slider shows, from the starting weights every run
        starts from; the slider is set to the suggestion (clipped to its range). Returns the result,
        or None after an error (shown in the output area). The model is left as it was."""
        if not self._start_suggest():
            return None
        self.wait()
        return self.last_suggestion

    def _start_suggest(self) -> bool:
        values = self._values()
        if not self._can_start(values):
            return False
        self.last_error, self.last_suggestion = None, None
        self.run_button.disabled = self.suggest_button.disabled = True
        self.status.value = (f"suggesting a learning rate: range test at frozen depth {values['frozen_depth']} "
                             f"(the loss at rates rising from 1e-7 until it explodes)...")
        self._launch(self._find_lr, values["frozen_depth"], name="ftlab-dashboard-lr-find")
        return True

    def _find_lr(self, depth: int) -> None:
        """The background thread: lr_find from the starting weights; then the model as it was."""
        model = self.model
        current = {k: v.detach().clone() for k, v in model.state_dict().items()}  # e.g. the last run's
        flags = [p.requires_grad for p in model.parameters()]
        try:
            model.load_state_dict(self._start_state)
            for p, flag in zip(model.parameters(), self._start_flags):
                p.requires_grad_(flag)
            options = {k: self.fixed[k] for k in LR_FIND_OPTIONS if k in self.fixed}
            result = lr_finder.lr_find(model, self.task, frozen_depth=depth, progress=False, **options)
            self.last_suggestion = result
            self._show_suggestion(result)
        except Exception as error:  # as for runs: the message goes to the output area
            self._show_error(f"{type(error).__name__}: {error}", details=traceback.format_exc())
        except KeyboardInterrupt:
            self._show_stopped("during the range test: no suggestion, the slider is as it was")
        finally:
            model.load_state_dict(current)
            for p, flag in zip(model.parameters(), flags):
                p.requires_grad_(flag)
            self.run_button.disabled = self.suggest_button.disabled = False

    def _show_suggestion(self, result: lr_finder.LRFinderResult) -> None:
        figure = plots.plot_lr_find(result)
        if not math.isfinite(result.suggestion):
            self.last_error = result.note
            self.output.outputs = (_display_data(_error_box(result.note, title="No suggestion")),
                                   _display_data(figure))
            self.status.value = "<b style='color:#b00020'>no suggestion</b>: see the message below"
            return
        clipped = min(max(result.suggestion, LR_RANGE[0]), LR_RANGE[1])
        self.lr_slider.value = clipped
        where = (f"; the slider stops at {clipped:.0e}, so it is set there" if clipped != result.suggestion else "")
        text = (f"suggested learning rate <b>{result.suggestion:.1e}</b> at frozen depth {result.frozen_depth} "
                f"({result.rule} rule: {lr_finder.WHY}){where}. Press <b>Run</b> to train with it.")
        self.output.outputs = (_display_data(f"<div class='ftlab-suggestion'>{text}</div>"), _display_data(figure))
        self.status.value = (f"<b>learning rate set to {clipped:.1e}</b> (range test, {result.rule} rule)"
                             + html.escape(where))

    def _on_epoch(self, history: History) -> None:
        """fit's callback (in the training thread): progress, status and the curves so far."""
        row = history.rows[-1]
        epochs = history.config.get("epochs", self.progress.max)
        self.progress.value, self.progress.description = history.epochs_run, f"epoch {history.epochs_run}"
        when = "before training" if row["epoch"] == 0 else f"epoch {row['epoch']} of {epochs}"
        self.status.value = (f"training: {when} · validation accuracy {row['val_acc']:.1%} · "
                             f"validation loss {row['val_loss']:.3f}")
        self.output.outputs = (_display_data(plots.plot_history(history)),)

    def _show_result(self, result: sweeps.RunResult) -> None:
        history, row = result.history, result.row
        outcome, n, best = history.outcome, history.epochs_run, history.best_epoch
        explained = {  # what each outcome means here, in the dashboard's words
            "interrupted": f"stopped by you at epoch {n}; best epoch {best}'s weights kept "
                           f"(not saved to the run store)",
            "diverged": f"diverged: {history.message}",
            "stopped early": f"stopped early at epoch {n}: no lower validation loss for {row['patience']} epochs; "
                             f"best epoch {best}'s weights restored",
            "finished": f"done: {n} epochs, best epoch {best}"}
        how = ("from the run store (ran before with these settings; no training)" if result.from_store
               else explained[outcome])
        scores = f"validation accuracy {row['val_acc']:.1%} · test accuracy {row['test_acc']:.1%}"
        if "forgetting" in row:
            scores += f" · forgetting {row['forgetting']:+.1f} points"
        self.progress.bar_style = BAR_STYLES[outcome]
        self.status.value = f"<b>{html.escape(how)}</b> · {scores}"

    def _show_runs(self) -> None:
        """The runs table and the compare list, newest last; the last two runs selected."""
        labels = [run_label(i, r.row) for i, r in enumerate(self.runs, 1)]
        frame = pd.DataFrame([_table_row(i, r, mitigations=self.source is not None)
                              for i, r in enumerate(self.runs, 1)])
        self.table.outputs = (_display_data(frame),)
        self.compare_select.options = [(label, i) for i, label in enumerate(labels)]
        self.compare_select.value = tuple(range(len(labels)))[-2:]

    def compare(self, runs: Sequence[int] | None = None, *, metric: str = "val_acc"):
        """Overlay runs (indices into `runs`; default: the last two) with ftlab.plots.plot_histories.
        Returns the Figure, or None after an error (shown in the compare area)."""
        chosen = list(runs) if runs is not None else list(range(len(self.runs)))[-2:]
        try:
            if len(chosen) < 2:
                raise ValueError("select two or more runs to compare (Ctrl- or Shift-click in the list)")
            bad = [i for i in chosen if not (isinstance(i, int) and 0 <= i < len(self.runs))]
            if bad:
                raise ValueError(f"no runs {bad}: this session has runs 0..{len(self.runs) - 1}")
            figure = plots.plot_histories({run_label(i + 1, self.runs[i].row): self.runs[i].history
                                           for i in chosen}, metric=metric)
        except Exception as error:
            self.compare_output.outputs = (_display_data(_error_box(f"{type(error).__name__}: {error}",
                                                                      title="Could not compare")),)
            self.last_error = str(error)
            return None
        self.compare_output.outputs = (_display_data(figure),)
        return figure

    def _show_stopped(self, when: str) -> None:
        self.status.value = f"<b>stopped by you</b> {html.escape(when)}"
        self.progress.bar_style = BAR_STYLES["interrupted"]

    def _show_error(self, text: str, details: str = "") -> None:
        self.last_error = text
        self.output.outputs = (_display_data(_error_box(text, details=details)),)
        self.status.value = "<b style='color:#b00020'>error</b>: see the message below"
        self.progress.bar_style = "danger"

    # --- showing the dashboard ----------------------------------------------------------------

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def __repr__(self) -> str:
        return (f"Dashboard({type(self.model).__name__} on {getattr(self.task, 'name', 'a task')}, "
                f"{len(self.runs)} runs{', running' if self.running else ''}"
                f"{', runs in the Run callback' if self.mode == 'callback' else ''})")


def _menu_patience(patience: int | None) -> int:
    """The early-stopping menu's value for a patience (None: no early stopping)."""
    return NO_PATIENCE if patience is None else patience


def _table_row(number: int, result: sweeps.RunResult, *, mitigations: bool) -> dict:
    """One run as the learner reads it in the table: settings, then results."""
    row = result.row
    shown = {"run": f"#{number}", "lr": f"{row['lr']:g}", "frozen depth": row["frozen_depth"],
             "early stopping": f"patience {row['patience']}" if row["patience"] else "off",
             "epochs": f"{row['epochs_run']} of {row['epochs']}"}
    if mitigations:
        shown["L2-SP"] = f"{row['l2sp']:g}" if row["l2sp"] else "off"
        shown["rehearsal"] = f"{row['rehearsal']:g}" if row["rehearsal"] else "off"
    shown.update({"best epoch": row["best_epoch"], "val acc": f"{row['val_acc']:.1%}",
                  "test acc": f"{row['test_acc']:.1%}"})
    if "forgetting" in row:
        shown["forgetting (points)"] = f"{row['forgetting']:+.1f}"
    # a stored run did not train now: its seconds are the original run's, said as such
    seconds = f"0 (stored; trained in {row['seconds']:.1f})" if result.from_store else f"{row['seconds']:.1f}"
    shown.update({"how it ended": _ending(result), "training seconds": seconds})
    return shown


def _ending(result: sweeps.RunResult) -> str:
    return "from the run store" if result.from_store else result.history.ending


def dashboard(model: nn.Module, task, *, source=None, settings: dict | None = None, store=True,
              callbacks: Sequence[Callable[[History], None]] = (), mode: str | None = None) -> Dashboard:
    """The fine-tuning dashboard for `model` on `task` (see Dashboard); display it in a notebook.

        board = ftlab.widgets.dashboard(model, task, source=ftlab.Source(fashion, source_head),
                                        settings={"lr": 1e-3, "frozen_depth": 3, "epochs": 10})
        board

    mode="callback" trains inside the Run button's callback (the default on Colab, where changes
    from a background thread are not shown); "thread" in a background thread with a Stop button.
    """
    return Dashboard(model, task, source=source, settings=settings, store=store, callbacks=callbacks, mode=mode)
