"""The ML assertions that graded lessons' tests use (ftlab/grading.py).

Each assertion passes on a right input and fails, with its specific message and hint, on a wrong
one. Models are the tiny ResNet from conftest; the training runs are one or two epochs on 64 toy
images, so the file runs in seconds.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import ftlab
from ftlab import grading
from ftlab.history import History

from conftest import make_image_task, make_tiny_resnet


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: handing work between threads costs more than it saves on a busy 2-core box."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def fails(assertion, *args, **kwargs) -> str:
    """The message of the AssertionError that `assertion(*args)` must raise."""
    with pytest.raises(AssertionError) as info:
        assertion(*args, **kwargs)
    return str(info.value)


def history(val_losses, source_accs=None, best_epoch=None, restored=False) -> History:
    rows = []
    for epoch, loss in enumerate(val_losses):
        row = {"epoch": epoch, "train_loss": loss, "train_acc": 0.5, "val_loss": loss, "val_acc": 0.5}
        if source_accs is not None:
            row["source_acc"] = source_accs[epoch]
        rows.append(row)
    best = best_epoch if best_epoch is not None else min(range(len(val_losses)), key=val_losses.__getitem__)
    return History(config={"device": "cpu"}, rows=rows, best_epoch=best, restored_best=restored)


# --- placeholders and wrong types: a message, never a crash inside the test ----------------------

def test_answered_tells_placeholders_from_answers():
    assert grading.answered(1, "x", 0.0)
    assert not grading.answered(...)
    assert not grading.answered(1, None)


@pytest.mark.parametrize("assertion, args", [
    (grading.assert_head_size, (..., 3)),
    (grading.assert_frozen_blocks, (..., 3)),
    (grading.assert_accuracy_between, (..., 0.1, 0.9)),
    (grading.assert_in_band, (..., 1.0, 0.1)),
    (grading.assert_best_epoch_before_last, (...,)),
    (grading.assert_forgetting_below, (..., 5)),
])
def test_an_unfilled_answer_is_named_as_such(assertion, args):
    assert "still `...`" in fails(assertion, *args)


def test_a_wrong_type_is_named():
    assert "should be a network" in fails(grading.assert_head_size, "resnet", 3)
    assert "should be a number" in fails(grading.assert_accuracy_between, "0.8", 0, 1)
    assert "History that ftlab.fit returns" in fails(grading.assert_best_epoch_before_last, {"rows": []})
    assert "ends without `return`" in fails(grading.assert_frozen_blocks, None, 2)
    assert "ftlab does not know the blocks" in fails(grading.assert_frozen_blocks, torch.nn.Linear(2, 2), 1)


# --- the head ---------------------------------------------------------------------------------

def test_head_size(tiny_resnet):
    grading.assert_head_size(tiny_resnet, 4)
    message = fails(grading.assert_head_size, tiny_resnet, 7)
    assert "the head has 4 outputs, but the task has 7 classes" in message
    assert "replace_head(model, 7)" in message
    ftlab.models.replace_head(tiny_resnet, 7)
    grading.assert_head_size(tiny_resnet, 7)


def test_head_that_is_not_linear(tiny_resnet):
    tiny_resnet.fc = torch.nn.Sequential(torch.nn.Linear(512, 4))
    assert "should be an nn.Linear" in fails(grading.assert_head_size, tiny_resnet, 4)


# --- frozen blocks ----------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [0, 1, 3, 5])
def test_frozen_blocks_pass_at_the_depth_set(tiny_resnet, depth):
    ftlab.freeze(tiny_resnet, depth)
    grading.assert_frozen_blocks(tiny_resnet, depth)


def test_too_few_frozen_names_the_first_trainable_block(tiny_resnet):
    ftlab.freeze(tiny_resnet, 2)
    message = fails(grading.assert_frozen_blocks, tiny_resnet, 3)
    assert "block 'layer2' (block 3) is trainable, but it should be frozen" in message
    assert "ftlab.freeze(model, 3)" in message


def test_too_many_frozen_names_the_block_that_should_train(tiny_resnet):
    ftlab.freeze(tiny_resnet, 5)
    message = fails(grading.assert_frozen_blocks, tiny_resnet, 4)
    assert "block 'layer4' (block 5) is frozen, but it should train" in message


def test_a_partly_frozen_block_is_reported(tiny_resnet):
    ftlab.freeze(tiny_resnet, 0)
    tiny_resnet.layer1[0].conv1.weight.requires_grad_(False)
    message = fails(grading.assert_frozen_blocks, tiny_resnet, 0)
    assert "'layer1'" in message and "partly frozen (1 of" in message
    message = fails(grading.assert_frozen_blocks, tiny_resnet, 2)
    assert "'stem'" in message  # the stem comes first: it should be frozen and is not


def test_a_frozen_head_is_reported(tiny_resnet):
    ftlab.freeze(tiny_resnet, 5)
    tiny_resnet.fc.requires_grad_(False)
    assert "the head (fc) is frozen, but it must always train" in fails(grading.assert_frozen_blocks, tiny_resnet, 5)


# --- weights and BatchNorm statistics unchanged -------------------------------------------------

@pytest.fixture(scope="module")
def trained_at_depth_3():
    """A tiny ResNet trained for one epoch with the first three blocks frozen, and its snapshot."""
    model, task = make_tiny_resnet(), make_image_task()
    before = grading.snapshot(model)
    ftlab.fit(model, task, lr=1e-2, epochs=1, frozen_depth=3, progress=False, device="cpu")
    return model, before


def test_snapshot_copies_every_tensor(tiny_resnet):
    snap = grading.snapshot(tiny_resnet)
    assert set(tiny_resnet.state_dict()) <= set(snap.tensors)  # (and the non-persistent preprocessing buffers)
    assert list(snap.blocks) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert "conv1.weight" in snap.blocks["stem"] and "bn1.running_mean" in snap.blocks["stem"]
    assert repr(snap).startswith("Snapshot(")
    with torch.no_grad():
        tiny_resnet.conv1.weight.add_(1.0)
    assert not torch.equal(snap.tensors["conv1.weight"], tiny_resnet.conv1.weight)  # a copy, not a view


def test_frozen_blocks_are_unchanged_after_training(trained_at_depth_3):
    model, before = trained_at_depth_3
    grading.assert_unchanged_since(model, before, blocks=3)
    grading.assert_unchanged_since(model, before, blocks=["stem", "layer2"])
    grading.assert_batchnorm_unchanged(model, before, blocks=3)


def test_a_block_that_trained_is_named(trained_at_depth_3):
    model, before = trained_at_depth_3
    message = fails(grading.assert_unchanged_since, model, before, blocks=4)
    assert "block 'layer3' changed during training" in message
    assert "largest change" in message and "layer3." in message
    assert "'layer3' moved" in fails(grading.assert_batchnorm_unchanged, model, before, blocks=["layer3"])


def test_changes_table(trained_at_depth_3):
    model, before = trained_at_depth_3
    changes = grading.changed_since(model, before)
    assert [row.unchanged for row in changes.rows] == [True, True, True, False, False]
    assert changes["layer4"].changed > 0 and changes["stem"].largest == 0
    assert "layer4" in repr(changes) and "<table>" in changes._repr_html_()
    stats = grading.changed_since(model, before, batchnorm=True)
    assert stats.kind == "BatchNorm statistics" and stats["layer1"].unchanged and not stats["layer3"].unchanged


def test_batchnorm_trap_is_caught(tiny_resnet, image_task):
    """requires_grad=False alone leaves BatchNorm in train mode: weights stay, statistics drift."""
    before = grading.snapshot(tiny_resnet)
    for p in tiny_resnet.layer1.parameters():
        p.requires_grad_(False)
    tiny_resnet.train()
    with torch.no_grad():
        tiny_resnet(tiny_resnet.preprocess(image_task.train.images[:16]))
    grading.assert_unchanged_since(tiny_resnet, before, blocks=["layer1"])
    message = fails(grading.assert_batchnorm_unchanged, tiny_resnet, before, blocks=["layer1"])
    assert "statistics of block 'layer1' moved" in message and "eval mode" in message


def test_blocks_argument_is_checked(tiny_resnet):
    snap = grading.snapshot(tiny_resnet)
    with pytest.raises(ValueError, match="this model has 5 blocks"):
        grading.assert_unchanged_since(tiny_resnet, snap, blocks=6)
    with pytest.raises(ValueError, match="unknown block"):
        grading.assert_unchanged_since(tiny_resnet, snap, blocks=["layer9"])


def test_snapshot_of_another_model_is_explained(tiny_resnet):
    from torchvision.models.resnet import BasicBlock, ResNet

    other = ResNet(BasicBlock, [2, 1, 1, 1])  # layer1.1.* does not exist in the tiny model
    snap = grading.snapshot(tiny_resnet)
    assert "is not in the snapshot" in fails(grading.assert_unchanged_since, other, snap, blocks=["layer1"])


# --- values to report ---------------------------------------------------------------------------

def test_accuracy_between():
    grading.assert_accuracy_between(0.75, 0.6, 0.9)
    grading.assert_accuracy_between(torch.tensor(0.6), 0.6, 0.9)  # bounds included; 0-d tensors too
    assert "0.500, below the expected range 0.60 to 0.90" in fails(grading.assert_accuracy_between, 0.5, 0.6, 0.9)
    assert "above the expected range" in fails(grading.assert_accuracy_between, 0.95, 0.6, 0.9)
    assert "looks like a percentage" in fails(grading.assert_accuracy_between, 75.0, 0.6, 0.9)
    assert "a fraction between 0 and 1" in fails(grading.assert_accuracy_between, -0.1, 0.0, 0.9)
    assert "probe accuracy is" in fails(grading.assert_accuracy_between, 0.1, 0.6, 0.9, name="probe accuracy")
    assert "finite" in fails(grading.assert_accuracy_between, float("nan"), 0.6, 0.9)


def test_in_band():
    grading.assert_in_band(3, 3.2, 0.5)
    message = fails(grading.assert_in_band, 4.0, 3.0, 0.5, name="the best block")
    assert "the best block is 4, outside the expected band 3 ± 0.5" in message


# --- histories ------------------------------------------------------------------------------------

def test_best_epoch_before_last():
    grading.assert_best_epoch_before_last(history([1.0, 0.5, 0.7]))
    message = fails(grading.assert_best_epoch_before_last, history([1.0, 0.7, 0.5]))
    assert "the best epoch is the last one (epoch 2)" in message and "more epochs" in message


def test_forgetting_below():
    grading.assert_forgetting_below(history([1, 1], source_accs=[0.9, 0.88]), 5)
    message = fails(grading.assert_forgetting_below, history([1, 1], source_accs=[0.9, 0.7]), 5)
    assert "forgetting is 20.0 points (source accuracy 90.0% before fine-tuning, 70.0% after)" in message
    assert "freeze more blocks" in message
    assert "did not track a source task" in fails(grading.assert_forgetting_below, history([1, 1]), 5)


def test_restored_best_on_a_real_run():
    """fit with patience restores the best epoch; re-evaluating agrees with the recorded val loss
    (here through the frozen-prefix cache during training and the full network afterwards)."""
    model, task = make_tiny_resnet(), make_image_task()
    run = ftlab.fit(model, task, lr=3e-2, epochs=3, frozen_depth=4, patience=1, progress=False, device="cpu")
    grading.assert_restored_best(model, run, task.val)


def test_restored_best_tells_last_weights_from_best(tiny_resnet, image_task):
    loss = ftlab.evaluate(tiny_resnet, image_task.val, device="cpu")["loss"]
    grading.assert_restored_best(tiny_resnet, history([loss + 1, loss, loss + 0.5]), image_task.val)
    holds_last = history([loss + 1, loss - 0.3, loss])  # best epoch 1, the model is epoch 2's
    message = fails(grading.assert_restored_best, tiny_resnet, holds_last, image_task.val)
    assert "holds the last epoch's weights (epoch 2" in message and "patience" in message
    neither = history([loss + 1, loss - 0.3, loss + 0.2])
    assert "does not hold the best epoch's weights" in fails(grading.assert_restored_best, tiny_resnet, neither,
                                                             image_task.val)


# --- public tests as files, for Colab --------------------------------------------------------

def test_write_public_tests(tmp_path):
    exception_test = 'from otter.test_files import test_case\nOK_FORMAT = False\nname = "q1"\n'
    notebook = {"cells": [], "metadata": {"otter": {"OK_FORMAT": False, "tests": {
        "q1": exception_test, "q2": {"name": "q2", "points": 1, "suites": []}}}}}
    path = tmp_path / "lesson.ipynb"
    path.write_text(json.dumps(notebook))
    written = grading.write_public_tests(path, tmp_path / "tests")
    assert [p.name for p in written] == ["q1.py", "q2.py"]
    assert (tmp_path / "tests" / "q1.py").read_text() == exception_test
    namespace = {}
    exec((tmp_path / "tests" / "q2.py").read_text(), namespace)
    assert namespace["OK_FORMAT"] is True and namespace["test"]["name"] == "q2"


def test_prepare_colab_puts_notebook_and_tests_in_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # restored after the test, whatever prepare_colab does
    repo = tmp_path / "clone"
    (repo / "notebooks").mkdir(parents=True)
    notebook = {"cells": [], "metadata": {"otter": {"OK_FORMAT": False, "tests": {"q1": "name = 'q1'\n"}}}}
    (repo / "notebooks" / "01_lesson.ipynb").write_text(json.dumps(notebook))
    folder = grading.prepare_colab("01_lesson", repo=repo, workdir=tmp_path / "work", fetch=False)
    assert folder == tmp_path / "work" and Path.cwd() == tmp_path  # no hidden change of directory
    assert grading.prepare_colab("01_lesson", repo=repo, workdir=tmp_path / "work", fetch=False,
                                 chdir=True) == Path.cwd() == folder  # only when asked
    assert (folder / "01_lesson.ipynb").exists() and (folder / "tests" / "q1.py").read_text() == "name = 'q1'\n"
    with pytest.raises(FileNotFoundError, match="is .* a clone of the course repository"):
        grading.prepare_colab("02_missing", repo=repo, workdir=tmp_path / "other", fetch=False)
