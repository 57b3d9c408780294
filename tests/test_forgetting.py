"""Forgetting tracking, its mitigations (L2-SP, rehearsal) and the overfitting gap."""
from __future__ import annotations

import copy

import pytest
import torch

import ftlab
from conftest import make_image_task, make_text_task, make_tiny_bert, make_tiny_resnet
from ftlab.history import History
from ftlab.mitigations import RehearsalSampler, anchor_weights, l2sp_penalty


@pytest.fixture
def setup():
    """A tiny 'pretrained' model: trained on a source task, then given a new head for a target."""
    source_task = make_image_task(n=64, seed=10)
    model = make_tiny_resnet(num_classes=4)
    ftlab.fit(model, source_task, lr=3e-3, epochs=3, progress=False)
    old_head = ftlab.models.replace_head(model, 4)
    return model, old_head, source_task, make_image_task(n=64, seed=20)


def _fit(model, head, source_task, target, **settings):
    return ftlab.fit(model, target, progress=False, source=ftlab.Source(source_task, head),
                     **{"lr": 3e-3, "epochs": 3, **settings})


def test_source_accuracy_is_tracked_from_epoch_0(setup):
    model, head, source_task, target = setup
    before = ftlab.evaluate(model, source_task.test, head=head)  # the source model, as it was
    history = _fit(model, head, source_task, target, frozen_depth=0)
    frame = history.to_frame()
    assert {"source_acc", "source_loss"} <= set(frame.columns)
    assert frame.epoch.tolist() == [0, 1, 2, 3]
    assert frame.source_acc.iloc[0] == pytest.approx(before["accuracy"])
    assert frame.source_loss.iloc[0] == pytest.approx(before["loss"], rel=1e-5)
    after = ftlab.evaluate(model, source_task.test, head=head)
    assert frame.source_acc.iloc[-1] == pytest.approx(after["accuracy"])


def test_forgetting_is_exactly_zero_when_the_backbone_is_frozen(setup):
    model, head, source_task, target = setup
    history = _fit(model, head, source_task, target, frozen_depth=len(ftlab.blocks(model)), lr=1e-1)
    assert ftlab.forgetting(history) == 0.0
    assert history.to_frame().source_acc.nunique() == 1
    assert history.to_frame().source_loss.nunique() == 1


def test_forgetting_is_positive_when_full_fine_tuning_at_a_high_rate(setup):
    model, head, source_task, target = setup
    history = _fit(model, head, source_task, target, frozen_depth=0, lr=3e-2, epochs=4)
    frame = history.to_frame()
    assert ftlab.forgetting(history) == pytest.approx(100 * (frame.source_acc.iloc[0] - frame.source_acc.iloc[-1]))
    assert ftlab.forgetting(history) > 0


def test_forgetting_uses_the_restored_epoch():
    rows = [{"epoch": e, "train_loss": 1.0, "train_acc": 0.5, "val_loss": v, "val_acc": 0.5, "lr": 1e-3,
             "seconds": 0.0, "source_acc": s} for e, v, s in [(0, 2.0, 0.9), (1, 1.0, 0.8), (2, 1.5, 0.5)]]
    restored = History(rows=rows, best_epoch=1, restored_best=True)
    last = History(rows=rows, best_epoch=1, restored_best=False)
    assert ftlab.forgetting(restored) == pytest.approx(10.0)
    assert ftlab.forgetting(last) == pytest.approx(40.0)


def test_forgetting_without_a_source_says_how_to_track_one(image_task, tiny_resnet):
    history = ftlab.fit(tiny_resnet, image_task, lr=1e-3, epochs=1, progress=False)
    with pytest.raises(ValueError, match="source=ftlab.Source"):
        ftlab.forgetting(history)


def test_the_source_head_is_not_trained(setup):
    model, head, source_task, target = setup
    before = copy.deepcopy(head.state_dict())
    _fit(model, head, source_task, target, frozen_depth=0, rehearsal=0.5)
    assert all(torch.equal(before[k], v) for k, v in head.state_dict().items())


def test_the_current_head_as_source_is_refused(setup):
    model, _, source_task, target = setup
    with pytest.raises(ValueError, match="replace the head first"):
        _fit(model, ftlab.models.head_of(model), source_task, target)


@pytest.mark.parametrize("mitigation", [{"l2sp": 0.0}, {"rehearsal": 0.0}])
def test_a_mitigation_at_zero_equals_plain_fine_tuning(setup, mitigation):
    model, head, source_task, target = setup
    plain_model, plain_head = copy.deepcopy(model), copy.deepcopy(head)
    plain = _fit(plain_model, plain_head, source_task, target, frozen_depth=2)
    mitigated = _fit(model, head, source_task, target, frozen_depth=2, **mitigation)
    assert plain.to_frame().drop(columns="seconds").equals(mitigated.to_frame().drop(columns="seconds"))
    for (name, a), (_, b) in zip(plain_model.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), name


def test_l2sp_keeps_weights_closer_to_where_they_started(setup):
    model, head, source_task, target = setup
    start = {k: v.clone() for k, v in model.state_dict().items()}
    plain_model = copy.deepcopy(model)
    _fit(plain_model, copy.deepcopy(head), source_task, target, frozen_depth=0, lr=1e-2)
    _fit(model, head, source_task, target, frozen_depth=0, lr=1e-2, l2sp=10.0)

    def drift(m):
        return sum(((m.state_dict()[k].float() - start[k].float()) ** 2).sum().item()
                   for k in start if k.startswith("layer") and k.endswith("weight"))

    assert drift(model) < 0.5 * drift(plain_model)


def test_l2sp_penalty_is_half_strength_times_squared_distance():
    layer = torch.nn.Linear(3, 2)
    anchors = anchor_weights(layer)
    with torch.no_grad():
        layer.weight += 1.0  # 6 entries moved by 1
    assert l2sp_penalty(layer, anchors, 0.5).item() == pytest.approx(0.5 * 0.5 * 6)
    assert l2sp_penalty(layer, anchors, 0.0).item() == 0.0


def test_l2sp_leaves_out_the_new_head(tiny_resnet):
    head_ids = {id(p) for p in tiny_resnet.fc.parameters()}
    anchors = anchor_weights(tiny_resnet, exclude=head_ids)
    assert not any(name.startswith("fc.") for name in anchors)
    assert any(name.startswith("layer4") for name in anchors)


def test_rehearsal_changes_training_and_reduces_forgetting(setup):
    model, head, source_task, target = setup
    plain_model, plain_head = copy.deepcopy(model), copy.deepcopy(head)
    plain = _fit(plain_model, plain_head, source_task, target, frozen_depth=0, lr=2e-2, epochs=4)
    replayed = _fit(model, head, source_task, target, frozen_depth=0, lr=2e-2, epochs=4, rehearsal=1.0)
    assert replayed.to_frame().train_loss.iloc[1] != plain.to_frame().train_loss.iloc[1]
    assert ftlab.forgetting(replayed) <= ftlab.forgetting(plain)


def test_rehearsal_sampler_cycles_through_every_source_example():
    sampler = RehearsalSampler(10, 0.5, torch.Generator().manual_seed(0))
    seen = torch.cat([sampler.take(4) for _ in range(5)])  # 2 per batch, 10 in all
    assert sorted(seen.tolist()) == list(range(10))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        RehearsalSampler(10, 1.5, torch.Generator())


@pytest.mark.parametrize("bad, message", [({"rehearsal": 0.5, "source": None}, "pass source="),
                                          ({"l2sp": -1.0}, "l2sp must be"),
                                          ({"rehearsal": 2.0}, "rehearsal must be")])
def test_bad_mitigation_settings_fail_before_training(setup, bad, message):
    model, head, source_task, target = setup
    before = copy.deepcopy(model.state_dict())
    settings = {"source": ftlab.Source(source_task, head), **bad}
    with pytest.raises(ValueError, match=message):
        ftlab.fit(model, target, lr=1e-3, epochs=1, progress=False, **settings)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_overfitting_gap_per_epoch(image_task, tiny_resnet):
    history = ftlab.fit(tiny_resnet, image_task, lr=1e-3, epochs=3, progress=False)
    gap = ftlab.overfitting_gap(history)
    frame = history.to_frame()
    assert gap.epoch.tolist() == [0, 1, 2, 3]
    assert gap.loss_gap.tolist() == pytest.approx((frame.val_loss - frame.train_loss).tolist())
    assert gap.acc_gap.tolist() == pytest.approx((100 * (frame.train_acc - frame.val_acc)).tolist())


# --- BERT: forgetting through task A's whole head (pooler and classifier) ----------------------


@pytest.fixture
def bert_setup():
    """A tiny BERT trained on text task A with nothing frozen (so its pooler learned A too), then
    given a fresh head for task B; returns (model, A's head, task A, task B)."""
    task_a, task_b = make_text_task(n=48, seed=10), make_text_task(n=48, seed=20)
    model = make_tiny_bert()
    ftlab.fit(model, task_a, lr=3e-3, epochs=3, frozen_depth=0, batch_size=8, progress=False)
    head_a = ftlab.models.replace_head(model, 3)
    return model, head_a, task_a, task_b


def test_replace_head_on_a_cls_bert_keeps_the_pooler_as_it_was(bert_setup):
    model, head_a, _, _ = bert_setup
    assert isinstance(head_a, ftlab.models.BertHead)
    assert head_a.classifier is not model.classifier and head_a.out_features == 3
    assert head_a.pooler is not model.bert.pooler  # a copy: the model's pooler trains on B
    for key, tensor in model.bert.pooler.state_dict().items():
        assert torch.equal(head_a.pooler.state_dict()[key], tensor)


def test_forgetting_is_measured_through_task_a_pooler_and_classifier(bert_setup):
    model, head_a, task_a, task_b = bert_setup
    history = ftlab.fit(model, task_b, lr=1e-2, epochs=2, frozen_depth=0, batch_size=8, progress=False,
                        source=ftlab.Source(task_a, head_a))
    assert not torch.equal(model.bert.pooler.dense.weight, head_a.pooler.dense.weight)  # the pooler trained on B
    oracle = copy.deepcopy(model)  # the fine-tuned body with A's whole head copied on by hand
    oracle.bert.pooler, oracle.classifier = copy.deepcopy(head_a.pooler), copy.deepcopy(head_a.classifier)
    expected = ftlab.evaluate(oracle, task_a.test, device="cpu")
    through_head = ftlab.evaluate(model, task_a.test, head=head_a, device="cpu", confusion=True)
    assert through_head["accuracy"] == expected["accuracy"]
    assert through_head["confusion"].shape == (3, 3)
    assert through_head["confusion"].trace() == round(expected["accuracy"] * expected["n"])
    assert through_head["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    last = history.to_frame().iloc[-1]
    assert last.source_acc == pytest.approx(expected["accuracy"])
    assert last.source_loss == pytest.approx(expected["loss"], rel=1e-5)
    new_pooler = ftlab.evaluate(model, task_a.test, head=head_a.classifier, device="cpu")  # the old way
    assert new_pooler["loss"] != pytest.approx(expected["loss"], rel=1e-3)


def test_using_a_bert_head_puts_back_both_parts_and_restores_both(bert_setup):
    model, head_a, task_a, _ = bert_setup
    pooler, classifier = model.bert.pooler, model.classifier
    with ftlab.models.using_head(model, head_a):
        assert model.bert.pooler is head_a.pooler and model.classifier is head_a.classifier
    assert model.bert.pooler is pooler and model.classifier is classifier
    with pytest.raises(RuntimeError), ftlab.models.using_head(model, head_a):
        raise RuntimeError("a failure inside")
    assert model.bert.pooler is pooler and model.classifier is classifier
    with ftlab.models.using_head(model, head_a.classifier):  # a plain Linear: the classifier alone
        assert model.bert.pooler is pooler and model.classifier is head_a.classifier
    assert ftlab.models.head_of(model) is classifier


def test_no_forgetting_when_only_the_pooler_and_classifier_train(bert_setup):
    """Depth 3 of 4 freezes embeddings and both layers; the pooler trains on B, A keeps its own."""
    model, head_a, task_a, task_b = bert_setup
    history = ftlab.fit(model, task_b, lr=5e-2, epochs=2, frozen_depth=3, batch_size=8, progress=False,
                        source=ftlab.Source(task_a, head_a))
    assert not torch.equal(model.bert.pooler.dense.weight, head_a.pooler.dense.weight)
    assert ftlab.forgetting(history) == 0.0
    assert history.to_frame().source_loss.nunique() == 1


def test_rehearsal_through_a_bert_head_leaves_that_head_as_it_was(bert_setup):
    model, head_a, task_a, task_b = bert_setup
    before = copy.deepcopy(head_a.state_dict())
    ftlab.fit(model, task_b, lr=1e-2, epochs=1, frozen_depth=0, batch_size=8, progress=False,
              source=ftlab.Source(task_a, head_a), rehearsal=0.5)
    assert set(before) == set(head_a.state_dict()) and any(k.startswith("pooler.") for k in before)
    assert all(torch.equal(before[k], v) for k, v in head_a.state_dict().items())


def test_mean_pooling_keeps_the_classifier_alone_as_the_old_head():
    model = make_tiny_bert(pooling="mean")
    old = model.classifier
    assert ftlab.models.replace_head(model, 5) is old  # nothing else reads the pooled vectors
    cls_head = ftlab.models.replace_head(make_tiny_bert(pooling="cls"), 5)
    with pytest.raises(ValueError, match="carries a pooler"), ftlab.models.using_head(model, cls_head):
        pass
    assert model.classifier.out_features == 5
