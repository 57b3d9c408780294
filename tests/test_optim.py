"""Layer-wise learning rates, warm-up schedules, gradual unfreezing, fine_tune and FitSettings
(ftlab/optim.py, ftlab/settings.py, and how ftlab/training.py uses them)."""
from __future__ import annotations

import math

import pytest
import torch

import ftlab
from ftlab.optim import block_learning_rates, make_optimizer, make_scheduler, schedule_factor
from ftlab.settings import FitSettings

from conftest import make_image_task, make_tiny_resnet

pytestmark = pytest.mark.usefixtures("one_thread")

RESNET_BLOCKS = ["stem", "layer1", "layer2", "layer3", "layer4"]


# --- layer-wise learning rates ----------------------------------------------------------------


def test_decay_multiplies_once_per_block_down_from_the_top(tiny_resnet):
    rates = block_learning_rates(tiny_resnet, lr=1e-3, lr_decay=0.5)
    assert list(rates) == [*RESNET_BLOCKS, "head"]
    for i, name in enumerate(RESNET_BLOCKS):
        assert rates[name] == pytest.approx(1e-3 * 0.5 ** (4 - i)), name
    assert rates["head"] == 1e-3


def test_explicit_rates_win_and_unknown_blocks_are_named(tiny_resnet):
    rates = block_learning_rates(tiny_resnet, lr=1e-3, lr_decay=0.5, block_lrs={"stem": 7e-5, "head": 2e-2})
    assert rates["stem"] == 7e-5 and rates["head"] == 2e-2 and rates["layer4"] == 1e-3
    with pytest.raises(ValueError, match=r"unknown blocks \['layer9'\].*'stem'"):
        block_learning_rates(tiny_resnet, lr=1e-3, block_lrs={"layer9": 1e-3})
    with pytest.raises(ValueError, match="lr_decay must be a factor in"):
        block_learning_rates(tiny_resnet, lr=1e-3, lr_decay=1.5)


def test_the_optimizer_groups_are_what_the_summary_says(tiny_resnet):
    ftlab.freeze(tiny_resnet, 2)
    options = dict(lr=1e-3, head_lr=1e-2, lr_decay=0.3)
    optimizer = make_optimizer(tiny_resnet, **options)
    summary = ftlab.trainable_summary(tiny_resnet, **options)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    for name, block in ftlab.blocks(tiny_resnet):
        for p in block.parameters():
            if p.requires_grad:
                assert group_of[id(p)]["lr"] == pytest.approx(summary.loc[name, "lr"]), name
                assert name in group_of[id(p)]["blocks"]
            else:
                assert id(p) not in group_of and summary.loc[name, "lr"] == 0.0
    for p in tiny_resnet.fc.parameters():
        assert group_of[id(p)]["lr"] == summary.loc["head (fc)", "lr"] == 1e-2
    assert "lr" not in ftlab.trainable_summary(tiny_resnet).columns  # the default table is unchanged


def test_layer_wise_rates_reach_training():
    """A tiny decay leaves the lowest trainable block almost still while the top one moves."""
    model = make_tiny_resnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ftlab.fit(model, make_image_task(n=16), lr=1e-2, lr_decay=1e-6, epochs=1, frozen_depth=3, batch_size=8,
              progress=False)
    after = model.state_dict()
    change = {block: max((after[k] - before[k]).abs().max().item() for k in after
                         if k.startswith(block) and after[k].is_floating_point() and "running" not in k)
              for block in ("layer3", "layer4")}
    assert change["layer4"] > 1e-4 and change["layer3"] < 1e-7


# --- schedules -------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule,warmup_steps", [("cosine", 0), ("cosine", 5), ("constant", 4)])
def test_torch_schedulers_follow_the_reference_formula(schedule, warmup_steps):
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    scheduler = make_scheduler(optimizer, schedule=schedule, warmup_steps=warmup_steps, total_steps=20)
    for step in range(20):
        expected = 0.1 * schedule_factor(step, schedule=schedule, warmup_steps=warmup_steps, total_steps=20)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, abs=1e-9), step
        optimizer.step()
        scheduler.step()


def test_constant_without_warm_up_needs_no_scheduler():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    assert make_scheduler(optimizer, schedule="constant", warmup_steps=0, total_steps=10) is None


def test_fit_records_the_warm_up_in_the_lr_column():
    # 16 examples, batch 8: 2 steps per epoch, 8 in all; warm-up 0.5 = 4 steps, then cosine
    _, history = _probe(schedule="cosine", warmup=0.5, epochs=4)
    lrs = list(history.to_frame()["lr"])
    expected = [1e-2] + [1e-2 * schedule_factor(2 * e, schedule="cosine", warmup_steps=4, total_steps=8)
                         for e in range(1, 5)]
    assert lrs == pytest.approx(expected, abs=1e-12)
    assert lrs[1] < lrs[2] and lrs[2] == pytest.approx(1e-2) and lrs[2] > lrs[3] > lrs[4]  # rises, then falls


def _probe(**options):
    model = make_tiny_resnet()
    settings = dict(lr=1e-2, epochs=2, frozen_depth=4, batch_size=8, progress=False) | options
    return model, ftlab.fit(model, make_image_task(n=16), **settings)


# --- gradual unfreezing and fine_tune --------------------------------------------------------


def test_gradual_unfreezing_follows_its_schedule_and_is_recorded():
    model = make_tiny_resnet()
    seen = []

    def record(history):  # fit calls this after every epoch: which blocks train now?
        seen.append(ftlab.frozen_depth(model))

    history = ftlab.fit(model, make_image_task(n=16), lr=1e-2, epochs=5, frozen_depth=5, unfreeze_every=2,
                        unfreeze_to=2, batch_size=8, progress=False, callbacks=[record])
    depths = list(history.to_frame()["frozen_depth"])
    assert depths == [5, 5, 5, 4, 4, 3]  # epoch 0, then one block more every 2 epochs
    assert seen == depths
    assert [ftlab.training.unfreeze_schedule(e, start=5, every=2, to=2) for e in range(1, 9)] == [5, 5, 4, 4, 3, 3, 2, 2]


def test_blocks_unfrozen_later_train_from_then_on():
    model = make_tiny_resnet()
    states = []
    ftlab.fit(model, make_image_task(n=16), lr=1e-2, epochs=2, frozen_depth=5, unfreeze_every=1, batch_size=8,
              progress=False, callbacks=[lambda h: states.append({k: v.clone() for k, v in model.state_dict().items()})])
    start, after_1, after_2 = states
    layer4 = [k for k in start if k.startswith("layer4") and "conv" in k]
    assert all(torch.equal(start[k], after_1[k]) for k in layer4)  # epoch 1: the head only
    assert any(not torch.equal(after_1[k], after_2[k]) for k in layer4)  # epoch 2: layer4 trains too
    assert all(torch.equal(start[k], after_2[k]) for k in start if k.startswith("layer3"))


def test_unfreezing_cannot_freeze_more():
    with pytest.raises(ValueError, match="only unfreezes"):
        _probe(frozen_depth=2, unfreeze_every=1, unfreeze_to=4)


def test_fine_tune_trains_the_head_first_then_everything_at_spread_rates():
    model = make_tiny_resnet()
    history = ftlab.fine_tune(model, make_image_task(n=16), lr=1e-2, epochs=2, frozen_epochs=1, batch_size=8,
                              progress=False)
    frame = history.to_frame()
    assert list(frame["epoch"]) == [0, 1, 2, 3] and list(frame["frozen_depth"]) == [5, 5, 0, 0]
    probe_phase, full_phase = history.config["phases"]
    assert probe_phase["frozen_depth"] == 5 and probe_phase["lr"] == 1e-2
    assert full_phase["frozen_depth"] == 0 and full_phase["lr"] == 5e-3
    rates = block_learning_rates(model, lr=5e-3, lr_decay=full_phase["lr_decay"])
    assert rates["stem"] == pytest.approx(5e-3 / 100) and rates["layer4"] == pytest.approx(5e-3)
    assert ftlab.frozen_depth(model) == 0


# --- one settings type -----------------------------------------------------------------------


def test_settings_are_checked_in_one_place_and_every_problem_is_named():
    with pytest.raises(ValueError) as error:
        FitSettings(lr=-1, epochs=0, warmup=1.5, lr_decay=0)
    message = str(error.value)
    for words in ("lr must be a positive number", "epochs must be a positive integer", "warmup must be a fraction",
                  "lr_decay must be None or a factor"):
        assert words in message


def test_fit_sweeps_and_settings_share_one_list_of_names():
    import inspect

    from ftlab.settings import SETTING_NAMES

    plumbing = {"model", "task", "source", "cache_frozen", "progress", "callbacks", "stop_event", "eval_batch_size"}
    assert set(inspect.signature(ftlab.fit).parameters) - plumbing == set(SETTING_NAMES)
    assert set(ftlab.sweeps.SETTINGS) == set(SETTING_NAMES)


def test_sweep_accepts_a_generator(tiny_resnet, tmp_path):
    frame = ftlab.sweep(tiny_resnet, make_image_task(n=16), grid={"lr": (x for x in [1e-3, 3e-3])},
                        settings={"epochs": 1, "frozen_depth": 5, "batch_size": 8},
                        store=ftlab.RunStore(tmp_path), progress=False)
    assert list(frame["lr"]) == [1e-3, 3e-3]


def test_fit_refuses_what_is_not_a_task(tiny_resnet):
    with pytest.raises(TypeError, match="task must be a ftlab Task"):
        ftlab.fit(tiny_resnet, [1, 2, 3], lr=1e-3, epochs=1)


def test_evaluate_leaves_the_model_where_it_was(tiny_resnet, image_task):
    tiny_resnet.train()
    ftlab.evaluate(tiny_resnet, image_task.val, device="cpu")
    assert tiny_resnet.training and next(tiny_resnet.parameters()).device.type == "cpu"
    assert math.isfinite(ftlab.evaluate(tiny_resnet, image_task.val)["loss"])


# --- augmentation in fit ----------------------------------------------------------------------


class RecordingShift:
    """A pipeline that shifts each image by one pixel and remembers what it was given."""

    def __init__(self):
        self.seen = []

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        self.seen.append(image.clone())
        return torch.roll(image, shifts=1, dims=-1)


def test_augmentation_touches_training_batches_only():
    task = make_image_task(n=16)
    pipeline = RecordingShift()
    _, history = _probe(augment=pipeline, frozen_depth=3, epochs=2)
    assert len(pipeline.seen) == 2 * 16  # every training example once per epoch, nothing else
    train = {tuple(img.flatten().tolist()) for img in task.train.images}
    assert all(tuple(img.flatten().tolist()) in train for img in pipeline.seen)
    assert history.summary["cached_prefix"] is False
    assert "augmentation" in history.summary["cache"] and "augmentation" in history.summary_line()
    _, plain = _probe(frozen_depth=3, epochs=2)
    # epoch 0 and every validation score are of un-augmented data: epoch 0 is identical
    assert history.rows[0] == plain.rows[0]
    assert history.rows[1]["train_loss"] != plain.rows[1]["train_loss"]


def test_augmentation_is_deterministic_per_seed():
    runs = [_probe(augment="light", frozen_depth=3, seed=seed)[1].to_frame().drop(columns="seconds")
            for seed in (0, 0, 1)]
    assert runs[0].equals(runs[1])
    assert not runs[0].equals(runs[2])


def test_augmentation_is_refused_for_text():
    from conftest import make_text_task, make_tiny_bert

    with pytest.raises(ValueError, match="augment applies to images only"):
        ftlab.fit(make_tiny_bert(), make_text_task(), lr=1e-3, epochs=1, augment="light", progress=False)
