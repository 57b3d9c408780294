"""Bad input gets a clear error (ftlab/checks.py and the public functions that use it), and the two
side effects that used to be hidden: the frozen-prefix cache shared between threads, and
prepare_colab's working directory.

Every message has one shape, "<function>: <argument> must be <what is valid>, got <argument>=...";
the tables below give a bad value and what the message must say about it.
"""
from __future__ import annotations

import copy
import json
import os
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

import ftlab
from ftlab import checks, grading
from ftlab.datasets import load
from ftlab.features import cache_info, clear_cache, encode, prefix_features
from ftlab.history import History

from conftest import make_image_task, make_tiny_resnet

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def digits_sizes():
    """The oracle for the sizes a message must state: the splits of the whole dataset."""
    task = load("digits")
    return {"n_train": len(task.train), "n_val": len(task.val), "n_test": len(task.test)}


def _says(error, *parts: str) -> None:
    message = str(error.value)
    for part in parts:
        assert part in message, f"{part!r} is not in the message: {message}"


# --- the checkers --------------------------------------------------------------------------------

@pytest.mark.parametrize("value, low, high, kind", [
    (12.5, 0, 10, TypeError), ("3", 0, 10, TypeError), (True, 0, 10, TypeError), (None, 0, 10, TypeError),
    (3.0, 0, 10, TypeError), (-1, 0, 10, ValueError), (11, 0, 10, ValueError), (0, 1, None, ValueError),
])
def test_require_int_refuses_and_says_the_range(value, low, high, kind):
    with pytest.raises(kind) as error:
        checks.require_int("n", value, where="f", low=low, high=high)
    span = f"{low}..{high}" if high is not None else f">= {low}"
    _says(error, "f: n must be an integer", span, f"got n={value!r}")


@pytest.mark.parametrize("value, low, high", [(0, 0, 10), (10, 0, 10), (5, None, None), (7, 7, None)])
def test_require_int_returns_valid_values_as_int(value, low, high):
    import numpy as np

    for given in (value, np.int64(value)):
        result = checks.require_int("n", given, where="f", low=low, high=high)
        assert result == value and type(result) is int


def test_describe_is_one_short_line():
    assert checks.describe(12.5) == "12.5" and checks.describe("a") == "'a'"
    assert checks.describe(make_tiny_resnet()) == "a ResNet"  # not its many-line repr
    long = checks.describe(list(range(1000)))
    assert len(long) <= 80 and "\n" not in long
    assert checks.describe(pd.DataFrame({"a": [1]})) == "a DataFrame"


# --- ftlab.datasets.load -------------------------------------------------------------------------

@pytest.mark.parametrize("argument, value, kind", [
    ("n_train", 12.5, TypeError), ("n_train", "100", TypeError), ("n_train", True, TypeError),
    ("n_train", -1, ValueError), ("n_train", 0, ValueError), ("n_train", 10**6, ValueError),
    ("n_val", 2.5, TypeError), ("n_val", -5, ValueError), ("n_val", 10**6, ValueError),
    ("n_test", [100], TypeError), ("n_test", 9, ValueError), ("n_test", 10**6, ValueError),
])
def test_load_counts_say_what_is_valid_and_the_split_size(argument, value, kind, digits_sizes):
    with pytest.raises(kind) as error:
        load("digits", **{argument: value})
    size = digits_sizes[argument]
    _says(error, f"load: {argument} must be an integer in 10..{size}", f"{size} examples", f"got {argument}=")


def test_load_counts_use_the_kept_classes(digits_sizes):
    two = load("digits", classes=["3", "5"])
    with pytest.raises(ValueError) as error:
        load("digits", classes=["3", "5"], n_train=1)
    _says(error, f"2..{len(two.train)}", "got n_train=1")


@pytest.mark.parametrize("value, kind", [(-1, ValueError), (1.5, TypeError), ("0", TypeError), (None, TypeError)])
def test_load_seed(value, kind):
    with pytest.raises(kind) as error:
        load("digits", seed=value)
    _says(error, "load: seed must be an integer >= 0", f"got seed={value!r}")


@pytest.mark.parametrize("value, kind", [("mnist", ValueError), ("Digits", ValueError), (3, TypeError),
                                         (None, TypeError)])
def test_load_name_lists_the_datasets(value, kind):
    with pytest.raises(kind) as error:
        load(value)
    _says(error, "load: name must be one of", *(repr(name) for name in ftlab.datasets.NAMES), f"got name={value!r}")


@pytest.mark.parametrize("value, kind, extra", [
    ("01", TypeError, ""), (5, TypeError, ""), ({"0": 1, "1": 2}, TypeError, ""),
    (["0"], ValueError, ""), (["0", "0"], ValueError, ""), (["0", 0], ValueError, ""),
    (["0", True], ValueError, "has no class True"), (["0", "x"], ValueError, "has no class 'x'"),
    ([10, 1], ValueError, "has no class 10"),
])
def test_load_classes_say_what_is_valid(value, kind, extra):
    with pytest.raises(kind) as error:
        load("digits", classes=value)
    _says(error, "load: classes must be a list of at least two distinct classes of digits", "'9'", "0..9",
          "got classes=", extra)


def test_load_accepts_numpy_integers_and_stores_plain_ints():
    import numpy as np

    task = load("digits", n_train=np.int64(20), seed=np.int32(1), classes=np.array([1, 2]))
    assert len(task.train) == 20 and task.classes == ("1", "2")
    json.dumps(task.config)  # plain ints: the run store writes it as JSON
    assert type(task.config["n_train"]) is int and type(task.config["seed"]) is int


# --- models: freeze, trainable_summary, replace_head, plot_confusion ------------------------------

NOT_MODELS = [[1, 2, 3], "resnet18", None, 42]


@pytest.mark.parametrize("call, where", [
    (lambda m: ftlab.freeze(m, 1), "freeze"),
    (lambda m: ftlab.trainable_summary(m), "trainable_summary"),
    (lambda m: ftlab.models.replace_head(m, 3), "replace_head"),
])
@pytest.mark.parametrize("value", NOT_MODELS)
def test_model_functions_refuse_non_models(call, where, value):
    with pytest.raises(TypeError) as error:
        call(value)
    _says(error, f"{where}: model must be a torch.nn.Module", "ftlab.models.resnet18", f"got model={value!r}")


def test_unknown_architecture_names_its_type_and_how_to_register_one():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with pytest.raises(TypeError) as error:
        ftlab.freeze(model, 1)
    _says(error, "freeze: model must be a model whose blocks ftlab knows", "Sequential", "register_family")
    assert all(p.requires_grad for p in model.parameters())  # nothing changed


# --- task and dataset arguments: fit, evaluate, plot_confusion ------------------------------------

@pytest.mark.parametrize("value, hint", [
    ([1, 2, 3], "single split"), (42, ""), (make_image_task().train, "task.train"), ({"train": []}, ""),
])
def test_require_task_says_how_to_get_one(value, hint):
    with pytest.raises(TypeError) as error:
        checks.require_task(value, "fit")
    _says(error, "fit: task must be a ftlab Task", "ftlab.datasets.load(", "got task=", hint)


def test_require_task_accepts_a_task():
    task = make_image_task()
    assert checks.require_task(task, "fit") is task


def test_fit_refuses_a_list_as_task():
    model = make_tiny_resnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TypeError) as error:
        ftlab.fit(model, [1, 2, 3], lr=1e-3, epochs=1, progress=False)
    _says(error, "fit: task must be a ftlab Task", "ftlab.datasets.load(")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("value, kind, hint", [
    (42, TypeError, ""), ("abc", TypeError, ""), ([1, 2, 3], TypeError, "not (input, label)"),
    ([(torch.zeros(1, 8, 8), 0.5)], TypeError, "not (input, label)"), ([], ValueError, "at least one"),
    (make_image_task(), TypeError, "task.test"),
])
def test_require_dataset_says_what_a_dataset_is(value, kind, hint):
    with pytest.raises(kind) as error:
        checks.require_dataset(value, "evaluate")
    _says(error, "evaluate: dataset must be a dataset of (input, label) pairs", "task.val or task.test",
          "got dataset=", hint)


def test_require_dataset_accepts_the_splits_and_plain_pairs():
    task = make_image_task()
    for dataset in (task.train, task.test, torch.utils.data.TensorDataset(torch.zeros(2, 1, 4, 4), torch.arange(2)),
                    [(torch.zeros(1, 4, 4), 1)]):
        assert checks.require_dataset(dataset, "evaluate") is dataset


@pytest.mark.parametrize("value", [42, [1, 2, 3], make_image_task()])
def test_evaluate_refuses_what_is_not_a_dataset(value):
    with pytest.raises(TypeError) as error:
        ftlab.evaluate(make_tiny_resnet(), value, device="cpu")
    _says(error, "evaluate: dataset must be", "task.test")


@pytest.mark.parametrize("model, dataset, says", [
    ("resnet", make_image_task(), "task.test"), ("resnet", [1, 2, 3], "(input, label)"),
    ([1, 2, 3], make_image_task().test, "model must be a torch.nn.Module"),
])
def test_plot_confusion_checks_before_evaluating(model, dataset, says):
    model = make_tiny_resnet() if model == "resnet" else model
    with pytest.raises(TypeError) as error:
        ftlab.plot_confusion(model, dataset, device="cpu")
    _says(error, "plot_confusion: ", says)


# --- plots and sweep -----------------------------------------------------------------------------

FRAME = pd.DataFrame({"frozen_depth": [0, 1], "lr": [1e-3, 1e-3], "val_acc": [0.5, 0.6], "test_acc": [0.5, 0.6],
                      "forgetting": [3.0, 1.0]})
HISTORY = History(config={"lr": 1e-3}, rows=[{"epoch": 0, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.0,
                                              "val_acc": 0.5, "lr": 1e-3}])


@pytest.mark.parametrize("plot, value, says", [
    (ftlab.plot_history, FRAME, "plot_sweep"), (ftlab.plot_history, [1, 2], ""),
    (ftlab.plot_history, HISTORY.rows, ""), (ftlab.plot_history, None, ""),
])
def test_plot_history_wants_a_history(plot, value, says):
    with pytest.raises(TypeError) as error:
        plot(value)
    _says(error, "plot_history: history must be a ftlab History", "ftlab.fit", "got history=", says)


@pytest.mark.parametrize("value, kind, says", [
    (HISTORY, TypeError, "histories must be a dict of label -> History"),
    ([HISTORY], TypeError, "histories must be a dict of label -> History"),
    ({}, ValueError, "at least one run"),
    ({"a": HISTORY, "b": FRAME}, TypeError, "histories['b'] must be a ftlab History"),
])
def test_plot_histories_wants_a_dict_of_histories(value, kind, says):
    with pytest.raises(kind) as error:
        ftlab.plot_histories(value)
    _says(error, "plot_histories: ", says)


@pytest.mark.parametrize("function", ["plot_sweep", "plot_tradeoff", "pareto_front"])
@pytest.mark.parametrize("value, says", [(HISTORY, "plot_history"), (FRAME.to_dict(), ""), ([1, 2], "")])
def test_frame_plots_want_a_dataframe(function, value, says):
    plot = getattr(ftlab.plots, function)
    with pytest.raises(TypeError) as error:
        plot(value)
    _says(error, f"{function}: frame must be a pandas DataFrame", "ftlab.sweep", "got frame=", says)


def test_the_frame_plots_still_draw_a_frame():
    for function in ("plot_sweep", "plot_tradeoff"):
        assert getattr(ftlab.plots, function)(FRAME) is not None
    assert list(ftlab.plots.pareto_front(FRAME).index) == [1]


@pytest.mark.parametrize("grid", [[("lr", 1e-3)], "lr", None, 1e-3])
def test_sweep_wants_a_dict_grid(grid):
    with pytest.raises((TypeError, ValueError)) as error:
        ftlab.sweep(make_tiny_resnet(), make_image_task(), grid=grid, settings={"epochs": 1}, store=False,
                    progress=False)
    _says(error, "grid must be a dict")


# --- the frozen-prefix cache, shared by threads ---------------------------------------------------

def test_prefix_cache_shared_by_threads_stays_consistent(monkeypatch):
    """The dashboard trains in a thread while the kernel may run too: both use one cache. Two threads
    fill, hit and (under a small memory budget) evict it, a third reads and clears it; no thread may
    see an error, and every result must equal the features computed alone."""
    task = make_image_task(n=32)
    models = [make_tiny_resnet(), make_tiny_resnet()]
    with torch.no_grad():  # a second set of weights: other keys, so entries compete for the budget
        for p in models[1].parameters():
            p.add_(0.01)
    data = encode(models[0], task.train)
    cpu = torch.device("cpu")
    clear_cache()
    expected = {(m, d): prefix_features(models[m], d, data, device=cpu).inputs["hidden"].clone()
                for m in (0, 1) for d in (1, 2, 3)}
    entry_mb = max(cache_info()["megabytes"] / 6, 1e-6)
    monkeypatch.setenv("FTLAB_CACHE_MB", str(3.5 * entry_mb))  # room for 3 of the 6: constant eviction
    clear_cache()

    errors, mismatches, stop = [], [], threading.Event()

    def hammer(m: int) -> None:
        own = copy.deepcopy(models[m])  # each thread its own model, as the dashboard's run has
        try:
            for i in range(24):
                d = 1 + i % 3
                got = prefix_features(own, d, data, device=cpu)
                if not torch.equal(got.inputs["hidden"], expected[(m, d)]):
                    mismatches.append((m, d, i))
        except Exception as error:  # noqa: BLE001 - any error is the failure we look for
            errors.append(error)

    def inspect() -> None:
        try:
            while not stop.is_set():
                info = cache_info()
                assert info["entries"] <= 6 and info["megabytes"] >= 0
                if info["entries"] > 3:
                    clear_cache()
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    workers = [threading.Thread(target=hammer, args=(m,)) for m in (0, 1, 0)]
    watcher = threading.Thread(target=inspect)
    watcher.start()
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=120)
    stop.set()
    watcher.join(timeout=30)
    assert not any(t.is_alive() for t in [*workers, watcher])
    assert errors == [] and mismatches == []
    assert cache_info()["entries"] <= 3  # the budget held once the threads were done


# --- prepare_colab: the working directory changes only when asked --------------------------------

@pytest.fixture
def clone(tmp_path):
    repo = tmp_path / "clone"
    (repo / "notebooks").mkdir(parents=True)
    notebook = {"cells": [], "metadata": {"otter": {"OK_FORMAT": False, "tests": {"q1": "name = 'q1'\n"}}}}
    (repo / "notebooks" / "01_lesson.ipynb").write_text(json.dumps(notebook))
    return repo


def test_prepare_colab_leaves_the_working_directory_alone(tmp_path, clone, monkeypatch):
    here = tmp_path / "content"
    here.mkdir()
    monkeypatch.chdir(here)
    folder = grading.prepare_colab("01_lesson", repo=clone, fetch=False)
    # by default the files land where the lesson's next cell, otter.Notebook("01_lesson.ipynb"), looks
    assert folder == here and Path.cwd() == here
    assert (here / "01_lesson.ipynb").exists() and (here / "tests" / "q1.py").read_text() == "name = 'q1'\n"
    elsewhere = grading.prepare_colab("01_lesson", repo=clone, workdir=tmp_path / "work", fetch=False)
    assert elsewhere == tmp_path / "work" and Path.cwd() == here and (elsewhere / "tests" / "q1.py").exists()


def test_prepare_colab_changes_directory_when_asked(tmp_path, clone, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = grading.prepare_colab("01_lesson", repo=clone, workdir=tmp_path / "work", fetch=False, chdir=True)
    assert Path.cwd() == folder == tmp_path / "work"


def test_prepare_colab_inside_the_clone_keeps_the_notebook(clone, monkeypatch):
    monkeypatch.chdir(clone / "notebooks")  # the notebook is already here: nothing to copy onto itself
    before = (clone / "notebooks" / "01_lesson.ipynb").read_text()
    assert grading.prepare_colab("01_lesson", repo=clone, fetch=False) == clone / "notebooks"
    assert (clone / "notebooks" / "01_lesson.ipynb").read_text() == before
    assert os.getcwd() == str(clone / "notebooks")


# --- the floors: scripts/lowest_pins.py reads them from pyproject.toml -----------------------------

def _lowest_pins():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "lowest_pins.py"
    spec = importlib.util.spec_from_file_location("lowest_pins", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_direct_dependency_has_a_floor_that_is_pinned(capsys):
    pins = _lowest_pins()
    root = Path(__file__).resolve().parents[1]
    deps = pins.direct_dependencies(root / "pyproject.toml", ["course"])
    assert {"torch", "transformers", "peft", "numpy", "otter-grader", "ipywidgets"} <= set(deps)
    assert pins.main(["--extras", "course", "--unpinned", "torch,torchvision"]) == 0
    lines = capsys.readouterr().out.split()
    assert "torch>=2.3,<3" in lines and f"peft=={deps['peft']['floor']}" in lines
    assert len(lines) == len(deps)  # one line per package, even one named in two lists


def test_lowest_pins_takes_the_higher_floor_and_refuses_a_missing_one(tmp_path):
    pins = _lowest_pins()
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\ndependencies = ["ipywidgets>=8.0", "tqdm>=4.66"]\n'
                         '[project.optional-dependencies]\ncourse = ["ipywidgets>=8.1.5", "otter-grader>=6,<8"]\n')
    deps = pins.direct_dependencies(pyproject, ["course"])
    assert deps["ipywidgets"]["floor"] == "8.1.5" and deps["otter-grader"]["specs"] == [">=6", "<8"]
    assert pins.direct_dependencies(pyproject, [])["ipywidgets"]["floor"] == "8.0"
    pyproject.write_text('[project]\ndependencies = ["tqdm"]\n')
    with pytest.raises(SystemExit, match="'tqdm' has no floor"):
        pins.direct_dependencies(pyproject, [])
