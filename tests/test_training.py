"""fit, evaluate and History (ftlab/training.py, ftlab/history.py).

Most runs are linear probes or near-probes of the tiny ResNet (frozen_depth 4 or 5) on 16-32 toy
images, so the whole file runs in seconds; the weights are checked bit for bit against snapshots
taken by a callback after every epoch.
"""
from __future__ import annotations

import copy
import math
import threading
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import ftlab
from ftlab.history import History
from ftlab.optim import make_optimizer
from ftlab.training import resolve_device

from conftest import make_image_task, make_text_task, make_tiny_bert, make_tiny_resnet

COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
METRICS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr"]  # all but the wall time


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    current = model.state_dict()
    return current.keys() == state.keys() and all(torch.equal(current[k], state[k]) for k in state)


class Snapshots:
    """A callback: the model's weights after each epoch (a closure over the model: fit's callbacks
    receive only the History). The first snapshot of an epoch is kept, because fit calls the
    callbacks once more after an early end, when the best weights have already been restored."""

    def __init__(self, model: nn.Module):
        self.model, self.states = model, {}

    def __call__(self, history: History) -> None:
        self.states.setdefault(history.epochs_run, snapshot(self.model))


def probe(task, **options) -> tuple[nn.Module, History]:
    """A quick run of the tiny ResNet (defaults: a linear probe, 2 epochs)."""
    model = make_tiny_resnet()
    settings = dict(lr=1e-2, epochs=2, frozen_depth=5, batch_size=8, progress=False) | options
    return model, ftlab.fit(model, task, **settings)


# --- devices ---------------------------------------------------------------------------------


def test_resolve_device_auto_picks_the_cpu_without_an_accelerator():
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    expected = "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    assert resolve_device("auto") == torch.device(expected)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("device", ["bogus", "gpu", "cuda:x"])
def test_resolve_device_rejects_unknown_devices(device):
    with pytest.raises(ValueError, match="'auto'"):
        resolve_device(device)


# --- History ---------------------------------------------------------------------------------


def test_fit_returns_a_history_with_an_epoch_zero_row_and_its_config():
    task = make_image_task(n=16)
    _, history = probe(task, lr=3e-3, epochs=2, seed=7, patience=None, optimizer="sgd")
    frame = history.to_frame()
    assert set(COLUMNS) <= set(frame.columns)
    assert list(frame["epoch"]) == [0, 1, 2]
    assert frame.loc[0, "seconds"] == 0.0 and (frame["seconds"].iloc[1:] > 0).all()
    assert frame[["train_acc", "val_acc"]].apply(lambda c: c.between(0, 1)).all().all()
    assert (frame["lr"] == 3e-3).all()
    config = history.config
    assert (config["lr"], config["head_lr"], config["epochs"], config["frozen_depth"]) == (3e-3, 3e-3, 2, 5)
    assert (config["seed"], config["optimizer"], config["batch_size"], config["patience"]) == (7, "sgd", 8, None)
    assert config["task"] == task.config and config["weights"] == "tiny-test" and config["model"] == "ResNet"
    assert history.epochs_run == 2 and not history.stopped_early and not history.interrupted
    assert history.best_epoch == int(frame["val_loss"].idxmin())
    assert history.summary["train_examples"] == 16
    assert history.summary["trainable_parameters"] == 512 * 4 + 4  # the linear probe: fc only


def test_epoch_zero_is_the_untrained_model():
    task = make_image_task(n=16)
    model = make_tiny_resnet()
    untrained = ftlab.evaluate(model, task.val)
    history = ftlab.fit(model, task, lr=1e-2, epochs=1, frozen_depth=4, batch_size=8, progress=False)
    assert history.rows[0]["val_loss"] == pytest.approx(untrained["loss"], abs=1e-5)
    assert history.rows[0]["val_acc"] == untrained["accuracy"]


def test_history_save_load_round_trips(tmp_path):
    _, history = probe(make_image_task(n=16), epochs=2)
    path = tmp_path / "run.json"
    history.save(path)
    loaded = History.load(path)
    pd.testing.assert_frame_equal(loaded.to_frame(), history.to_frame())
    assert loaded.best_epoch == history.best_epoch
    assert loaded.config == history.config
    assert loaded.best() == history.best()


def test_history_save_writes_non_finite_values_as_null(tmp_path):
    history = History(config={"lr": 1.0}, rows=[{"epoch": 0, "val_loss": float("nan")}], best_epoch=0)
    path = tmp_path / "nan.json"
    history.save(path)
    assert "NaN" not in path.read_text()
    assert History.load(path).rows[0]["val_loss"] is None


def test_same_seed_same_run_other_seed_other_run():
    task = make_image_task(n=16)
    initial = make_tiny_resnet()
    runs = {}
    for name, seed in [("a", 3), ("b", 3), ("c", 4)]:
        runs[name] = ftlab.fit(copy.deepcopy(initial), task, lr=1e-2, epochs=2, frozen_depth=4, batch_size=4,
                               seed=seed, progress=False).to_frame()[METRICS]
    pd.testing.assert_frame_equal(runs["a"], runs["b"], check_exact=True)
    assert not np.allclose(runs["a"]["train_loss"].iloc[1:], runs["c"]["train_loss"].iloc[1:])


# --- early stopping and restoring the best weights -------------------------------------------


def test_early_stopping_stops_and_restores_the_best_epoch():
    # a linear probe at a high learning rate: the val loss bottoms out, then wobbles upward
    task = make_image_task(n=32)
    model = make_tiny_resnet()
    snapshots = Snapshots(model)
    history = ftlab.fit(model, task, lr=0.2, epochs=20, frozen_depth=5, batch_size=8, patience=2,
                        callbacks=[snapshots], progress=False)
    assert history.stopped_early and history.epochs_run < 20
    assert history.best_epoch > 0  # so that "restored" means more than "untouched"
    assert history.epochs_run == history.best_epoch + 2  # patience epochs without improvement
    assert history.restored_best and history.stop_epoch == history.epochs_run
    assert "early stopping" in history.message
    assert history.best()["val_loss"] == min(r["val_loss"] for r in history.rows)
    assert same_weights(model, snapshots.states[history.best_epoch])
    assert not same_weights(model, snapshots.states[history.epochs_run])
    assert ftlab.evaluate(model, task.val)["loss"] == pytest.approx(history.best()["val_loss"], abs=1e-5)


def test_without_patience_all_epochs_run_and_the_last_weights_stay():
    task = make_image_task(n=32)
    model = make_tiny_resnet()
    snapshots = Snapshots(model)
    history = ftlab.fit(model, task, lr=0.2, epochs=6, frozen_depth=5, batch_size=8, patience=None,
                        callbacks=[snapshots], progress=False)
    assert history.epochs_run == 6 and not history.stopped_early and not history.restored_best
    assert history.stop_epoch is None
    assert sorted(snapshots.states) == list(range(7))
    assert same_weights(model, snapshots.states[6])


def test_keyboard_interrupt_keeps_the_history_and_the_best_weights(capsys):
    task = make_image_task(n=32)
    model = make_tiny_resnet()
    snapshots = Snapshots(model)
    raised = []

    def interrupt_after_epoch_two(history):
        if history.epochs_run == 2 and not raised:  # like pressing the stop button once
            raised.append(True)
            raise KeyboardInterrupt

    history = ftlab.fit(model, task, lr=0.2, epochs=10, frozen_depth=5, batch_size=4,
                        callbacks=[snapshots, interrupt_after_epoch_two], progress=False)
    assert isinstance(history, History)
    assert history.interrupted and not history.diverged and not history.stopped_early
    assert list(history.to_frame()["epoch"]) == [0, 1, 2]
    assert history.best_epoch != 2  # in this run epoch 2 was worse than an earlier one
    assert history.restored_best and same_weights(model, snapshots.states[history.best_epoch])
    assert not same_weights(model, snapshots.states[2])
    assert "interrupted" in capsys.readouterr().out


def test_stop_training_from_a_callback_ends_the_run_cleanly():
    task = make_image_task(n=32)
    model = make_tiny_resnet()
    snapshots = Snapshots(model)

    def stop_after_epoch_two(history):
        if history.epochs_run >= 2:
            raise ftlab.StopTraining("enough")

    history = ftlab.fit(model, task, lr=0.2, epochs=10, frozen_depth=5, batch_size=4,
                        callbacks=[snapshots, stop_after_epoch_two], progress=False)
    assert history.interrupted and history.epochs_run == 2 and history.message == "enough"
    assert same_weights(model, snapshots.states[history.best_epoch])


def test_stop_event_ends_the_run_cleanly():
    task = make_image_task(n=32)
    model = make_tiny_resnet()
    snapshots = Snapshots(model)
    stop = threading.Event()

    def request_stop(history):
        if history.epochs_run == 1:
            stop.set()

    history = ftlab.fit(model, task, lr=0.2, epochs=10, frozen_depth=5, batch_size=4, stop_event=stop,
                        callbacks=[snapshots, request_stop], progress=False)
    assert history.interrupted and history.epochs_run == 1
    assert same_weights(model, snapshots.states[history.best_epoch])


# --- divergence ------------------------------------------------------------------------------


@pytest.mark.parametrize("lr", [1e10, 1e20], ids=["val-loss-nan", "train-loss-nan"])
def test_divergence_is_reported_and_the_weights_restored(lr):
    task = make_image_task(n=16)
    model = make_tiny_resnet()
    initial = snapshot(model)
    with pytest.warns(UserWarning, match="learning rate"):
        history = ftlab.fit(model, task, lr=lr, epochs=3, frozen_depth=4, batch_size=8, optimizer="sgd",
                            progress=False)
    assert history.diverged and not history.interrupted and history.epochs_run < 3
    assert "diverged" in history.message
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())
    assert same_weights(model, initial)  # epoch 0 was the best: the pretrained weights are back


# --- invalid arguments fail before any training ----------------------------------------------


INVALID = [  # (fit options, words the error must contain)
    ({"lr": 0.0}, "lr must be a positive number"),
    ({"lr": -1e-3}, "lr must be a positive number"),
    ({"lr": float("nan")}, "lr must be a positive number"),
    ({"lr": float("inf")}, "lr must be a positive number"),
    ({"head_lr": float("nan")}, "head_lr"),
    ({"head_lr": float("inf")}, "head_lr"),
    ({"epochs": 0}, "epochs must be a positive integer"),
    ({"epochs": 2.5}, "epochs must be a positive integer"),
    ({"patience": 0}, "patience must be None"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"optimizer": "adam2"}, "'adamw' or 'sgd'"),
    ({"weight_decay": -0.1}, "weight_decay"),
    ({"schedule": "bogus"}, "'constant' or 'cosine'"),
    ({"frozen_depth": 6}, r"0\.\.5"),
]


@pytest.mark.parametrize("options,words", [
    pytest.param(options, words, id=",".join(f"{k}={v}" for k, v in options.items())) for options, words in INVALID])
def test_invalid_arguments_raise_before_training(tiny_resnet, options, words):
    task = make_image_task(n=16)
    before = snapshot(tiny_resnet)
    ticks = []
    settings = dict(lr=1e-2, epochs=1, batch_size=8, progress=False, callbacks=[ticks.append]) | options
    with pytest.raises(ValueError, match=words):
        ftlab.fit(tiny_resnet, task, **settings)
    assert ticks == []  # not even epoch 0 was measured
    assert same_weights(tiny_resnet, before)


def test_invalid_call_does_not_change_the_frozen_depth(tiny_resnet, image_task):
    # a rejected call must leave the model as it was, freezing included: otherwise the next
    # fit(model, task, lr=...) without frozen_depth silently trains at the depth of the failed call
    with pytest.raises(ValueError, match="lr"):
        ftlab.fit(tiny_resnet, image_task, lr=-1.0, epochs=1, frozen_depth=3, progress=False)
    assert ftlab.frozen_depth(tiny_resnet) == 0
    assert all(p.requires_grad for p in tiny_resnet.parameters())


def test_class_count_mismatch_names_replace_head(tiny_resnet):
    task = make_image_task(n=16, num_classes=2)  # the tiny ResNet has 4 outputs
    before = snapshot(tiny_resnet)
    with pytest.raises(ValueError, match=r"replace_head\(model, 2\)"):
        ftlab.fit(tiny_resnet, task, lr=1e-2, epochs=1, progress=False)
    assert same_weights(tiny_resnet, before)


def test_text_task_on_an_image_model_is_refused(tiny_resnet):
    before = snapshot(tiny_resnet)
    with pytest.raises(ValueError, match="no tokenizer"):
        ftlab.fit(tiny_resnet, make_text_task(n=12), lr=1e-2, epochs=1, progress=False)
    assert same_weights(tiny_resnet, before)


def test_image_task_on_a_text_model_is_refused(tiny_bert):
    before = snapshot(tiny_bert)
    with pytest.raises(ValueError, match="no image preprocessing"):
        ftlab.fit(tiny_bert, make_image_task(n=12, num_classes=3), lr=1e-2, epochs=1, progress=False)
    assert same_weights(tiny_bert, before)


# --- optimizers and discriminative learning rates ---------------------------------------------


def test_head_lr_trains_the_head_while_a_tiny_lr_leaves_the_body():
    model = make_tiny_resnet()
    before = snapshot(model)
    history = ftlab.fit(model, make_image_task(n=16), lr=1e-12, head_lr=1e-2, epochs=1, frozen_depth=3,
                        batch_size=8, progress=False)
    assert history.config["head_lr"] == 1e-2
    after = model.state_dict()
    head_change = (after["fc.weight"] - before["fc.weight"]).abs().max().item()
    body_change = max((after[k] - before[k]).abs().max().item()
                      for k, _ in model.named_parameters() if k.startswith(("layer3", "layer4")))
    assert head_change > 1e-3
    assert 0 < body_change < 1e-9  # the body did train, by a learning rate of 1e-12


def test_optimizer_groups_split_head_and_body_and_skip_decay_on_vectors(tiny_resnet):
    ftlab.freeze(tiny_resnet, 2)
    opt = make_optimizer(tiny_resnet, lr=1e-3, head_lr=5e-2, weight_decay=0.1)
    assert isinstance(opt, torch.optim.AdamW)
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    trainable = [(n, p) for n, p in tiny_resnet.named_parameters() if p.requires_grad]
    assert set(group_of) == {id(p) for _, p in trainable}  # frozen parameters are left out
    for name, p in trainable:
        group = group_of[id(p)]
        assert group["lr"] == (5e-2 if name.startswith("fc.") else 1e-3), name
        assert group["weight_decay"] == (0.1 if p.dim() >= 2 else 0.0), name
    assert group_of[id(tiny_resnet.fc.bias)]["weight_decay"] == 0.0
    assert group_of[id(tiny_resnet.layer4[0].bn1.weight)]["weight_decay"] == 0.0


def test_sgd_uses_momentum_and_trains():
    opt = make_optimizer(make_tiny_resnet(), name="sgd", lr=1e-2, weight_decay=0.0)
    assert isinstance(opt, torch.optim.SGD) and all(g["momentum"] == 0.9 for g in opt.param_groups)
    model, history = probe(make_image_task(n=16), optimizer="sgd", lr=0.05, epochs=3)
    frame = history.to_frame()
    assert history.config["optimizer"] == "sgd"
    assert frame["train_loss"].iloc[-1] < frame["train_loss"].iloc[1]


@pytest.mark.parametrize("depth", [4, 5])  # 5: a linear probe, where only the head has a learning rate
def test_cosine_schedule_decays_the_learning_rate(depth):
    _, history = probe(make_image_task(n=16), schedule="cosine", lr=1e-2, epochs=3, frozen_depth=depth)
    lrs = list(history.to_frame()["lr"])
    assert lrs[0] == 1e-2 and lrs[1] > lrs[2] > lrs[3] >= 0 and lrs[1] < 1e-2


# --- evaluate --------------------------------------------------------------------------------


def test_evaluate_returns_loss_accuracy_n_and_a_confusion_matrix(tiny_resnet, image_task):
    result = ftlab.evaluate(tiny_resnet, image_task.val, confusion=True)
    n = len(image_task.val)
    assert result["n"] == n and math.isfinite(result["loss"]) and 0 <= result["accuracy"] <= 1
    matrix = result["confusion"]
    assert isinstance(matrix, np.ndarray) and matrix.shape == (4, 4)
    assert matrix.sum() == n
    assert np.trace(matrix) / n == pytest.approx(result["accuracy"])
    assert list(matrix.sum(axis=1)) == list(np.bincount(image_task.val.labels.numpy(), minlength=4))
    # the reference: plain cross-entropy over the whole split
    with torch.no_grad():
        tiny_resnet.eval()
        logits = tiny_resnet(tiny_resnet.preprocess(image_task.val.images))
    expected = nn.functional.cross_entropy(logits, image_task.val.labels).item()
    assert result["loss"] == pytest.approx(expected, abs=1e-5)
    assert "confusion" not in ftlab.evaluate(tiny_resnet, image_task.val)


def test_evaluate_through_another_head(tiny_resnet, image_task):
    always_zero = nn.Linear(tiny_resnet.fc.in_features, 4)
    with torch.no_grad():
        always_zero.weight.zero_()
        always_zero.bias.copy_(torch.tensor([10.0, 0.0, 0.0, 0.0]))
    own_head = tiny_resnet.fc
    result = ftlab.evaluate(tiny_resnet, image_task.val, head=always_zero, confusion=True)
    labels = image_task.val.labels
    assert result["accuracy"] == pytest.approx((labels == 0).float().mean().item())
    assert result["confusion"][:, 1:].sum() == 0  # every prediction is class 0
    assert tiny_resnet.fc is own_head  # the model's own head is back afterwards


def test_evaluate_text_model(tiny_bert, text_task):
    result = ftlab.evaluate(tiny_bert, text_task.val, confusion=True)
    assert result["n"] == len(text_task.val) and result["confusion"].shape == (3, 3)
    assert result["confusion"].sum() == len(text_task.val)
