"""The learning-rate finder (ftlab/lr_finder.py) on the tiny ResNet and the tiny BERT: the model is
left bit for bit as it was, the rates rise exponentially, the test stops when the loss explodes,
the suggestion lies where the loss falls, and the frozen prefix runs once."""
from __future__ import annotations

import math

import pytest
import torch

import ftlab
from ftlab import lr_finder
from ftlab.features import clear_cache
from ftlab.lr_finder import LRFinderResult, lr_find, valley

from conftest import make_image_task, make_text_task, make_tiny_bert, make_tiny_resnet

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = {"resnet": (make_tiny_resnet, lambda: make_image_task()),
         "bert": (make_tiny_bert, lambda: make_text_task())}


def _model_and_task(kind: str):
    make_model, make_task = CASES[kind]
    return make_model(), make_task()


def _everything(model) -> dict:
    """All that lr_find must leave as it found: tensors, flags, modes, gradients, RNG."""
    return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "requires_grad": [p.requires_grad for p in model.parameters()],
            "training": [m.training for m in model.modules()],
            "grads": [None if p.grad is None else (id(p.grad), p.grad.clone()) for p in model.parameters()],
            "rng": torch.get_rng_state()}


def _assert_same(before: dict, after: dict) -> None:
    assert before["state"].keys() == after["state"].keys()
    changed = [k for k in before["state"] if not torch.equal(before["state"][k], after["state"][k])]
    assert not changed, f"tensors changed: {changed[:5]}"
    for k in before["state"]:
        assert before["state"][k].dtype == after["state"][k].dtype
    assert before["requires_grad"] == after["requires_grad"]
    assert before["training"] == after["training"]
    for b, a in zip(before["grads"], after["grads"]):
        assert (b is None) == (a is None)
        if b is not None:
            assert b[0] == a[0] and torch.equal(b[1], a[1])  # the same gradient tensor, untouched
    assert torch.equal(before["rng"], after["rng"])


# --- the model is left as it was ----------------------------------------------------------------


@pytest.mark.parametrize("kind, depth", [("resnet", 0), ("resnet", 3), ("bert", 0), ("bert", 2)])
def test_the_model_is_restored_bit_for_bit(kind, depth):
    model, task = _model_and_task(kind)
    ftlab.freeze(model, 1)  # an unusual starting point: one block frozen, a mix of modes, one gradient
    model.train()
    ftlab.blocks(model)[-1][1].eval()
    first = next(p for p in model.parameters() if p.requires_grad)
    first.grad = torch.full_like(first, 0.5)
    before = _everything(model)
    moved = []  # the test really trains: the weights it sees at the end are not the starting ones
    hook = ftlab.models.head_of(model).register_forward_hook(
        lambda module, args, out: moved.append(module.weight.detach().clone()))

    result = lr_find(model, task, frozen_depth=depth, num_steps=30, device="cpu", progress=False)
    hook.remove()

    assert not torch.equal(moved[0], moved[-1])
    _assert_same(before, _everything(model))
    assert result.frozen_depth == depth
    assert all(p.grad is None for p in model.parameters() if p is not first)


def test_batchnorm_statistics_and_counters_come_back():
    model, task = _model_and_task("resnet")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    seen = []
    hook = model.bn1.register_forward_hook(lambda m, a, o: seen.append(int(m.num_batches_tracked)))
    lr_find(model, task, frozen_depth=0, num_steps=10, device="cpu", progress=False)
    hook.remove()
    assert seen[-1] > seen[0]  # BatchNorm trained during the test (depth 0, train mode) ...
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # ... and is back as it was


def test_the_model_is_restored_after_an_error(monkeypatch):
    model, task = _model_and_task("resnet")
    before = _everything(model)

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr(lr_finder, "_range_test", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        lr_find(model, task, frozen_depth=4, device="cpu", progress=False)
    _assert_same(before, _everything(model))


# --- the curve ----------------------------------------------------------------------------------


def test_the_rates_rise_exponentially_from_start_to_end():
    model, task = _model_and_task("resnet")
    result = lr_find(model, task, frozen_depth=3, start_lr=1e-6, end_lr=1e-2, num_steps=41, device="cpu",
                     progress=False)
    assert not result.diverged and len(result.lrs) == 41
    assert result.lrs[0] == pytest.approx(1e-6) and result.lrs[-1] == pytest.approx(1e-2)
    ratios = [b / a for a, b in zip(result.lrs, result.lrs[1:])]
    assert all(r > 1 for r in ratios)
    assert ratios == pytest.approx([10 ** 0.1] * 40)  # 4 decades in 40 steps
    assert len(result.raw_losses) == len(result.losses) == 41


def test_the_smoothed_loss_is_fastais_bias_corrected_average():
    model, task = _model_and_task("resnet")
    result = lr_find(model, task, frozen_depth=4, num_steps=25, smoothing=0.9, device="cpu", progress=False)
    average, expected = 0.0, []
    for i, loss in enumerate(result.raw_losses):  # the reference: written out by hand
        average = 0.9 * average + 0.1 * loss
        expected.append(average / (1 - 0.9 ** (i + 1)))
    assert list(result.losses) == pytest.approx(expected, rel=1e-12)
    assert result.losses[0] == pytest.approx(result.raw_losses[0])


@pytest.mark.parametrize("kind", ["resnet", "bert"])
def test_it_stops_when_the_loss_explodes(kind):
    model, task = _model_and_task(kind)
    result = lr_find(model, task, frozen_depth=0, end_lr=1e6, num_steps=100, device="cpu", progress=False)
    assert result.diverged and len(result.lrs) < 100 and result.lrs[-1] < 1e6
    assert all(math.isfinite(v) for v in result.losses)  # a non-finite loss ends the test unrecorded
    assert max(result.losses) > min(result.losses)


@pytest.mark.parametrize("kind, depth", [("resnet", 0), ("resnet", 3), ("bert", 0), ("bert", 2)])
def test_the_suggestion_lies_where_the_loss_falls(kind, depth):
    model, task = _model_and_task(kind)
    result = lr_find(model, task, frozen_depth=depth, device="cpu", progress=False)
    assert result.rule == "valley" and math.isfinite(result.suggestion)
    i = result.lrs.index(result.suggestion)
    start = result.losses[0]
    assert result.losses[i] < start  # below where it started: the loss is falling there
    a_bit_right = min(i + 5, len(result.losses) - 1)  # 5 steps = 0.4 decades at the defaults
    assert result.losses[a_bit_right] <= start
    assert min(result.losses) < start  # it did learn somewhere
    assert result.lrs[0] < result.suggestion < result.lrs[-1]


# --- the frozen-prefix cache --------------------------------------------------------------------


@pytest.mark.parametrize("kind, depth, frozen, trained", [
    ("resnet", 3, ["conv1", "layer1", "layer2"], ["layer3", "layer4"]),
    ("bert", 2, ["bert.embeddings", "bert.encoder.layer.0"], ["bert.encoder.layer.1"]),
])
def test_the_frozen_blocks_run_once_through_the_cache(kind, depth, frozen, trained, monkeypatch):
    model, task = _model_and_task(kind)
    clear_cache()  # so the features are computed here, not served from an earlier test
    calls, real = [], lr_finder.prefix_features

    def spy(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(lr_finder, "prefix_features", spy)
    counts = {name: 0 for name in frozen + trained}
    hooks = [model.get_submodule(name).register_forward_hook(
        lambda m, a, o, name=name: counts.__setitem__(name, counts[name] + 1)) for name in counts]
    lr_find(model, task, frozen_depth=depth, num_steps=12, device="cpu", progress=False)
    for hook in hooks:
        hook.remove()
    assert calls == [depth]
    assert all(counts[name] == 1 for name in frozen), counts  # once: one batch of 256 holds the 64 examples
    assert all(counts[name] == 12 for name in trained), counts  # once per step


# --- the suggestion rule ------------------------------------------------------------------------


@pytest.mark.parametrize("losses, expected", [
    ([5, 4, 3, 2, 1, 2, 8], 2),                          # the fall is steps 0..4
    ([5, 5, 4, 3, 2, 1, 9], 3),                          # the docstring's: steps 1..5
    ([3, 3.01, 2.99, 3, 2.5, 2, 1.5, 1, 0.5, 0.4, 7], 6),  # plateau noise is flat: steps 3..9
    ([2, 1.9, 1], 1),
    ([3, 2.999, 2.998, 2.999], None),                    # fell by less than 1%: no valley
    ([1, 2, 3, 4], None),                                # never falls
    ([2, 1], None),                                      # too short
    ([], None),
])
def test_valley_is_the_middle_of_the_fall(losses, expected):
    assert valley(losses) == expected


def test_no_suggestion_when_the_loss_never_falls(monkeypatch):
    model, task = _model_and_task("resnet")
    monkeypatch.setattr(lr_finder, "valley", lambda losses: None)
    result = lr_find(model, task, frozen_depth=4, num_steps=5, device="cpu", progress=False)
    assert math.isnan(result.suggestion) and "never fell" in result.note


# --- arguments and the result -------------------------------------------------------------------


@pytest.mark.parametrize("options, message", [
    ({"start_lr": 1e-2, "end_lr": 1e-3}, r"start_lr \(0.01\) must be below end_lr \(0.001\)"),
    ({"start_lr": 1e-3, "end_lr": 1e-3}, "must be below end_lr"),
    ({"start_lr": 0}, "start_lr and end_lr must be positive"),
    ({"num_steps": 1}, "num_steps must be a whole number >= 2"),
    ({"num_steps": 10.5}, "num_steps must be a whole number >= 2"),
    ({"frozen_depth": 6}, r"frozen_depth must be None .* or an integer in 0\.\.5 \(blocks: 1=stem"),
    ({"frozen_depth": -1}, r"integer in 0\.\.5"),
    ({"smoothing": 1.0}, r"smoothing must be in \[0, 1\)"),
    ({"diverge_factor": 1}, "diverge_factor must be a number > 1"),
    ({"batch_size": 0}, "batch_size must be a positive whole number"),
])
def test_bad_arguments_say_what_is_valid(options, message):
    model, task = _model_and_task("resnet")
    before = _everything(model)
    with pytest.raises(ValueError, match=message):
        lr_find(model, task, progress=False, device="cpu", **options)
    _assert_same(before, _everything(model))


def test_a_head_of_the_wrong_size_is_refused():
    model = make_tiny_resnet(num_classes=7)
    with pytest.raises(ValueError, match=r"replace_head\(model, 4\)"):
        lr_find(model, make_image_task(), progress=False)


def test_the_result_says_what_it_found():
    result = LRFinderResult(lrs=(1e-7, 1e-4, 1e-1), losses=(2.0, 1.0, 9.0), raw_losses=(2.0, 0.9, 12.0),
                            suggestion=1e-4, frozen_depth=3, diverged=True)
    assert "suggestion 1.00e-04 by the valley rule" in repr(result) and "exploded" in repr(result)
    assert "1.00e-04" in result._repr_html_() and "valley" in result._repr_html_()
    with pytest.raises(AttributeError):
        result.suggestion = 1.0  # frozen
    empty = LRFinderResult(lrs=(), losses=(), raw_losses=(), suggestion=float("nan"), diverged=True)
    assert "no steps" in repr(empty) and "no steps" in empty._repr_html_()
    assert ftlab.lr_find is lr_find and "lr_finder" in dir(ftlab)
