"""Sweeps and the on-disk run store."""
from __future__ import annotations

import multiprocessing
import os
import threading

import pytest
import torch

import ftlab
import ftlab.sweeps
from conftest import make_image_task, make_tiny_resnet
from ftlab.store import RunStore, describe_key

GRID = {"frozen_depth": [2, 5], "lr": [1e-3, 1e-2]}


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "runs")


@pytest.fixture
def source_setup():
    model = make_tiny_resnet()
    old_head = ftlab.models.replace_head(model, 4)
    return model, ftlab.Source(make_image_task(seed=7), old_head)


def test_sweep_gives_one_tidy_row_per_run(store, source_setup, image_task):
    model, source = source_setup
    frame = ftlab.sweep(model, image_task, grid=GRID, settings={"epochs": 2}, source=source, store=store,
                        progress=False)
    assert len(frame) == 4
    assert sorted(zip(frame.frozen_depth, frame.lr)) == sorted((d, lr) for d in (2, 5) for lr in (1e-3, 1e-2))
    for column in ("best_val_acc", "test_acc", "forgetting", "epochs_run", "seconds", "trainable_params"):
        assert column in frame
    # a linear probe trains only the head, and cannot forget through the untouched backbone
    probe = frame[frame.frozen_depth == 5]
    assert (probe.trainable_params == sum(p.numel() for p in model.fc.parameters())).all()
    assert (probe.forgetting == 0).all()
    assert (frame.epochs_run == 2).all() and not frame.from_store.any()


def test_every_run_starts_from_the_same_weights(store, image_task):
    model = make_tiny_resnet()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    first = ftlab.sweep(model, image_task, grid={"lr": [1e-2, 1e-3]}, settings={"epochs": 1}, store=None,
                        progress=False)
    alone = ftlab.sweep(make_tiny_resnet(), image_task, grid={"lr": [1e-3]}, settings={"epochs": 1}, store=None,
                        progress=False)
    # the 1e-3 run did not inherit the 1e-2 run's weights
    assert first.iloc[1].val_acc == alone.iloc[0].val_acc
    assert first.iloc[1].test_acc == alone.iloc[0].test_acc
    assert all(torch.equal(start[k], v) for k, v in model.state_dict().items())  # put back at the end


def test_a_rerun_reads_every_run_from_the_store(store, source_setup, image_task, monkeypatch):
    model, source = source_setup
    first = ftlab.sweep(model, image_task, grid=GRID, settings={"epochs": 2}, source=source, store=store,
                        progress=False)

    def no_training(*args, **kwargs):
        raise AssertionError("fit was called for a run that is in the store")

    monkeypatch.setattr(ftlab.sweeps, "fit", no_training)
    again = ftlab.sweep(model, image_task, grid=GRID, settings={"epochs": 2}, source=source,
                        store=RunStore(store.root), progress=False)  # a new store object: as after a restart
    assert again.from_store.all()
    columns = [c for c in first.columns if c != "from_store"]
    assert again[columns].equals(first[columns])


def test_any_change_to_the_description_is_a_new_run(store, image_task):
    model = make_tiny_resnet()
    ftlab.sweep(model, image_task, grid={"lr": [1e-3]}, settings={"epochs": 1}, store=store, progress=False)
    changes = [dict(settings={"epochs": 1, "seed": 1}), dict(settings={"epochs": 2}),
               dict(settings={"epochs": 1, "weight_decay": 0.0})]
    for change in changes:
        frame = ftlab.sweep(model, image_task, grid={"lr": [1e-3]}, store=store, progress=False, **change)
        assert not frame.from_store.any(), change
    other_data = make_image_task(seed=3)
    assert not ftlab.sweep(model, other_data, grid={"lr": [1e-3]}, settings={"epochs": 1}, store=store,
                           progress=False).from_store.any()
    with torch.no_grad():
        model.fc.weight += 0.01  # other starting weights
    assert not ftlab.sweep(model, image_task, grid={"lr": [1e-3]}, settings={"epochs": 1}, store=store,
                           progress=False).from_store.any()


def test_interrupted_runs_are_not_stored(store, image_task):
    model = make_tiny_resnet()

    def interrupt(history):
        if history.epochs_run == 1:
            raise KeyboardInterrupt

    result = ftlab.sweeps.run(model, image_task, settings={"lr": 1e-3, "epochs": 3}, store=store,
                              callbacks=[interrupt])
    assert result.history.interrupted and len(store) == 0


@pytest.mark.parametrize("kwargs, message", [
    ({"grid": {}}, "at least one setting"),
    ({"grid": {"lrr": [1e-3]}, "settings": {"epochs": 1}}, "valid settings"),
    ({"grid": {"lr": [1e-3]}}, "needs epochs"),
    ({"grid": {"lr": 1e-3}, "settings": {"epochs": 1}}, "non-empty list"),
    ({"grid": {"lr": [1e-3]}, "settings": {"lr": 1e-3, "epochs": 1}}, "both grid and settings"),
    ({"grid": {"frozen_depth": [0, 9]}, "settings": {"lr": 1e-3, "epochs": 1}}, r"outside 0\.\.5"),
])
def test_bad_sweeps_fail_before_any_run(store, image_task, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ftlab.sweep(make_tiny_resnet(), image_task, store=store, progress=False, **kwargs)
    assert len(store) == 0


def _write_many(root: str, key: str, marker: int) -> None:
    store = RunStore(root)
    for i in range(200):
        store.put(key, {"writer": marker, "i": i, "payload": "x" * 5000})


def test_two_processes_writing_one_key_never_leave_a_broken_record(tmp_path):
    key = describe_key({"run": 1})
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_many, args=(str(tmp_path), key, marker)) for marker in (1, 2)]
    for writer in writers:
        writer.start()
    store, seen = RunStore(tmp_path), 0
    while any(w.is_alive() for w in writers):  # read while they write: always a whole record or none
        record = store.get(key)
        if record is not None:
            assert record["payload"] == "x" * 5000
            seen += 1
    for writer in writers:
        writer.join()
        assert writer.exitcode == 0
    assert store.get(key)["i"] == 199 and len(store) == 1
    assert not list(tmp_path.glob("*/*.tmp"))  # no temporary files left behind


def test_threads_writing_different_keys_all_land(tmp_path):
    store = RunStore(tmp_path)
    threads = [threading.Thread(target=store.put, args=(describe_key({"n": n}), {"n": n})) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store) == 20
    assert all(store.get(describe_key({"n": n})) == {"n": n} for n in range(20))


def test_records_follow_the_umask_so_a_shared_cache_is_readable_by_all(tmp_path):
    old = os.umask(0o022)  # the usual umask; tempfile's private 0600 would ignore it
    try:
        store = RunStore(tmp_path)
        store.put(describe_key({"n": 1}), {"n": 1})
    finally:
        os.umask(old)
    (record,) = tmp_path.glob("*/*.json")
    assert record.stat().st_mode & 0o777 == 0o644


def test_the_key_ignores_key_order_but_not_values():
    assert describe_key({"a": 1, "b": 2}) == describe_key({"b": 2, "a": 1})
    assert describe_key({"a": 1}) != describe_key({"a": 2})
