"""Bottleneck adapters (ftlab/adapters.py) on the tiny ResNet and tiny BERT. The oracles are
invariants: a fresh adapter is the identity, bit for bit; switched off, adapters give back the base
model bit for bit, after training too; the pretrained weights never move; the frozen-prefix cache
gives what the uncached path gives."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import ftlab
from ftlab.adapters import Adapter, WithAdapter, add_adapters, adapters_disabled
from ftlab.families import family_of
from ftlab.models import head_of, using_head

from conftest import make_image_task, make_text_task, make_tiny_bert, make_tiny_resnet


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads cost more than they save
    yield
    torch.set_num_threads(previous)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


MODELS = {"resnet": (make_tiny_resnet, make_image_task), "bert": (make_tiny_bert, make_text_task)}
PLACES = {"resnet": [None, ["stem"], ["layer3", "layer4"]], "bert": [None, ["embeddings"], ["layer.1"]]}
CASES = [(kind, after) for kind, places in PLACES.items() for after in places]


def inputs(model: nn.Module, task) -> dict:
    if task.modality == "image":
        return {"x": model.preprocess(task.test.images[:12])}
    return dict(model.tokenizer(list(task.test.texts[:12]), padding=True, return_tensors="pt"))


def outputs(model: nn.Module, batch: dict) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out = model(**batch)
    return out if isinstance(out, torch.Tensor) else out.logits


# --- the adapter ---------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 6, 5, 5), (2, 7, 6), (3, 6)])
def test_a_fresh_adapter_is_the_identity_and_learns(shape):
    torch.manual_seed(0)
    width = shape[1] if len(shape) == 4 else shape[-1]
    adapter = Adapter(width, 3)
    x = torch.randn(shape)
    assert torch.equal(adapter(x), x)
    adapter(x).pow(2).sum().backward()
    assert adapter.up.weight.grad.abs().sum() > 0  # the zero up-projection moves first
    nn.init.normal_(adapter.up.weight)
    assert adapter(x).shape == x.shape and not torch.equal(adapter(x), x)
    adapter.enabled = False
    assert torch.equal(adapter(x), x)


@pytest.mark.parametrize("bottleneck", [0, -1, 1.5, True])
def test_bad_bottleneck_raises(bottleneck):
    with pytest.raises(ValueError, match="bottleneck must be a positive integer"):
        Adapter(8, bottleneck)


# --- adapters in ftlab's models ------------------------------------------------------------------

@pytest.mark.parametrize("kind, after", CASES)
def test_add_adapters_starts_as_the_base_model_with_only_adapters_and_head_training(kind, after):
    make_model, make_task = MODELS[kind]
    model, task = make_model(), make_task()
    batch = inputs(model, task)
    before, total = outputs(model, batch), sum(p.numel() for p in model.parameters())
    assert add_adapters(model, bottleneck=4, after=after) is model
    assert type(model) is type(make_model()) and family_of(model).name == family_of(make_model()).name
    assert torch.equal(outputs(model, batch), before)
    # by default every block that transforms token or pixel features; BERT's pooler is not one of them
    chosen = after or [name for name, _ in ftlab.blocks(model) if name != "pooler"]
    for name, block in ftlab.blocks(model):  # each chosen block holds exactly one adapter
        assert sum(isinstance(m, Adapter) for m in block.modules()) == (name in chosen)
    adapters = [m for m in model.modules() if isinstance(m, Adapter)]
    adapter_params = sum(p.numel() for a in adapters for p in a.parameters())
    head = sum(p.numel() for p in head_of(model).parameters())
    summary = ftlab.trainable_summary(model)
    assert summary.loc["total", "parameters"] == total + adapter_params
    assert summary.loc["total", "trainable"] == adapter_params + head
    assert summary.drop(index="total")["trainable"].sum() == adapter_params + head
    assert ftlab.frozen_depth(model) == [n for n, _ in ftlab.blocks(model)].index(chosen[0])


def test_bad_places_and_a_second_add_adapters_raise():
    with pytest.raises(ValueError, match="stem, layer1, layer2, layer3, layer4"):
        add_adapters(make_tiny_resnet(), after=["layer5"])
    with pytest.raises(ValueError, match="after must name blocks"):
        add_adapters(make_tiny_resnet(), after=[])
    model = add_adapters(make_tiny_resnet())
    with pytest.raises(ValueError, match="already"):
        add_adapters(model)
    with pytest.raises(ValueError, match="no adapters"):
        with adapters_disabled(make_tiny_resnet()):
            pass


@pytest.mark.parametrize("kind", MODELS)
def test_after_fit_disabled_adapters_give_back_the_base_model_bit_for_bit(kind):
    make_model, make_task = MODELS[kind]
    model, task = make_model(), make_task()
    batch = inputs(model, task)
    base, base_head = outputs(model, batch), copy.deepcopy(head_of(model))
    add_adapters(model, bottleneck=4)
    start = snapshot(model)
    history = ftlab.fit(model, task, lr=2e-2, epochs=2, batch_size=16, progress=False, device="cpu")
    end = snapshot(model)
    moved = {k for k in start if not torch.equal(start[k], end[k])}
    head_path = family_of(model).head
    assert moved and all(".adapter." in k or k.startswith(head_path + ".") for k in moved)  # BatchNorm too
    assert any(".adapter.up." in k for k in moved)
    assert history.summary["trainable_parameters"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    with using_head(model, base_head):  # the head trained (it is the new task's): compare through the old one
        assert not torch.equal(outputs(model, batch), base)
        with adapters_disabled(model):
            assert torch.equal(outputs(model, batch), base)
        assert not torch.equal(outputs(model, batch), base)  # adapters are back on


def test_forgetting_with_adapters_disabled_is_exactly_zero():
    model, target, source_task = make_tiny_resnet(), make_image_task(seed=1), make_image_task(seed=7)
    source_head = ftlab.models.replace_head(model, target.num_classes)
    before = ftlab.evaluate(model, source_task.test, head=source_head, device="cpu")
    add_adapters(model, bottleneck=4, after=["layer2", "layer4"])
    history = ftlab.fit(model, target, lr=5e-2, epochs=2, progress=False, device="cpu",
                        source=ftlab.Source(source_task, source_head))
    assert history.summary["cached_prefix"]  # stem and layer1 hold no adapter: run once, cached
    assert history.rows[0]["source_acc"] == before["accuracy"]
    assert ftlab.evaluate(model, source_task.test, head=source_head, device="cpu")["loss"] != before["loss"]
    with adapters_disabled(model):
        after = ftlab.evaluate(model, source_task.test, head=source_head, device="cpu")
    assert after == before  # loss and accuracy, exactly
    assert 100 * (before["accuracy"] - after["accuracy"]) == 0


@pytest.mark.parametrize("kind, after", [("resnet", ["layer3", "layer4"]), ("bert", ["layer.1"])])
def test_fit_with_and_without_the_frozen_prefix_cache_agree(kind, after):
    make_model, make_task = MODELS[kind]
    task, runs = make_task(), []
    for cache in (True, False):
        model = add_adapters(make_model(), bottleneck=4, after=after)
        history = ftlab.fit(model, task, lr=2e-2, epochs=2, batch_size=16, progress=False, device="cpu",
                            cache_frozen=cache)
        runs.append((history, snapshot(model)))
    (cached, cached_state), (plain, plain_state) = runs
    assert cached.summary["cached_prefix"] and not plain.summary["cached_prefix"]
    for a, b in zip(cached.rows, plain.rows):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
        assert a["train_acc"] == b["train_acc"]
    for key in cached_state:
        torch.testing.assert_close(cached_state[key], plain_state[key], atol=1e-5, rtol=1e-4)


def test_bert_layers_returning_tuples_keep_their_extra_outputs():
    layer = WithAdapter(lambda hidden: (hidden, "attentions"), Adapter(4, 2))  # transformers 4's BertLayer
    x = torch.randn(2, 3, 4)
    out = layer(x)
    assert isinstance(out, tuple) and torch.equal(out[0], x) and out[1] == "attentions"


def test_sweep_over_lr_with_adapters():
    model, task = add_adapters(make_tiny_resnet(), bottleneck=4, after=["layer4"]), make_image_task()
    start = snapshot(model)
    frame = ftlab.sweep(model, task, grid={"lr": [1e-2, 5e-2]}, settings={"epochs": 1, "batch_size": 16},
                        store=None, progress=False)
    assert list(frame["lr"]) == [1e-2, 5e-2]
    assert (frame["trainable_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)).all()
    end = snapshot(model)
    assert all(torch.equal(start[k], end[k]) for k in start)


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_freeze_on_an_adapter_model_trains_only_adapters_after_depth(depth):
    model = add_adapters(make_tiny_bert(), bottleneck=4)
    ftlab.freeze(model, depth)
    for i, (name, block) in enumerate(ftlab.blocks(model)):
        for pname, p in block.named_parameters():
            expected = i >= depth and pname.startswith("adapter.")
            assert p.requires_grad == expected, (name, pname)
    assert all(p.requires_grad for p in model.classifier.parameters())
    assert not any(p.requires_grad for p in model.bert.pooler.parameters())
