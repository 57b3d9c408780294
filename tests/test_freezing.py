"""Blocks, freezing and the BatchNorm trap (ftlab/freezing.py, ftlab/families.py).

The oracle throughout is an invariant: a frozen block is frozen for real, so after training every
parameter *and* buffer of it is bit-identical to before, while everything after it has moved.
"""
from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import ftlab
from ftlab.families import FAMILIES, Family, register_family
from ftlab.freezing import train_mode

from conftest import make_image_task, make_text_task, make_tiny_bert, make_tiny_resnet

RESNET_BLOCKS = ["stem", "layer1", "layer2", "layer3", "layer4"]
# built once: freeze() fully resets requires_grad, so hypothesis examples can share it
SHARED_RESNET = make_tiny_resnet()


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def states(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer (running_mean, running_var, num_batches_tracked), copied."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def flags(model: nn.Module) -> dict[str, bool]:
    return {name: p.requires_grad for name, p in model.named_parameters()}


def block_flags(model: nn.Module) -> list[set[bool]]:
    """For each block, the set of requires_grad values of its parameters."""
    return [{p.requires_grad for p in block.parameters()} for _, block in ftlab.blocks(model)]


def head_trainable(model: nn.Module) -> bool:
    return all(p.requires_grad for _, m in ftlab.freezing.head_modules(model) for p in m.parameters())


# --- blocks ----------------------------------------------------------------------------------


def test_resnet_blocks_are_stem_then_the_four_stages(tiny_resnet):
    named = ftlab.blocks(tiny_resnet)
    assert [name for name, _ in named] == RESNET_BLOCKS
    modules = dict(named)
    assert modules["layer1"] is tiny_resnet.layer1 and modules["layer4"] is tiny_resnet.layer4
    assert modules["stem"][0] is tiny_resnet.conv1 and modules["stem"][1] is tiny_resnet.bn1


def test_tiny_bert_blocks_are_embeddings_then_each_layer_then_the_pooler(tiny_bert):
    named = ftlab.blocks(tiny_bert)
    num_layers = tiny_bert.config.num_hidden_layers
    assert [name for name, _ in named] == ["embeddings"] + [f"layer.{i}" for i in range(num_layers)] + ["pooler"]
    assert len(named) == num_layers + 2
    assert named[0][1] is tiny_bert.bert.embeddings and named[-2][1] is tiny_bert.bert.encoder.layer[-1]
    assert named[-1][1] is tiny_bert.bert.pooler  # [CLS] -> dense + tanh: pretrained, so a block, not the head


def test_real_minilm_has_eight_blocks_with_cls_pooling_and_seven_with_mean_pooling():
    model = ftlab.models.bert(num_classes=2)
    assert [name for name, _ in ftlab.blocks(model)] == ["embeddings"] + [f"layer.{i}" for i in range(6)] + ["pooler"]
    mean = ftlab.models.bert(num_classes=2, pooling="mean")
    assert [name for name, _ in ftlab.blocks(mean)] == ["embeddings"] + [f"layer.{i}" for i in range(6)]


@pytest.mark.parametrize("make", [make_tiny_resnet, make_tiny_bert], ids=["resnet", "bert"])
def test_every_parameter_belongs_to_exactly_one_block_or_the_head(make):
    model = make()
    owners = [id(p) for _, block in ftlab.blocks(model) for p in block.parameters()]
    owners += [id(p) for _, m in ftlab.freezing.head_modules(model) for p in m.parameters()]
    assert sorted(owners) == sorted(id(p) for p in model.parameters())


def test_unknown_model_raises_typeerror_naming_families_and_register_family():
    with pytest.raises(TypeError) as error:
        ftlab.blocks(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)))
    message = str(error.value)
    assert "Sequential" in message
    assert "torchvision-resnet" in message and "bert" in message
    assert "register_family" in message


class TinyMLP(nn.Module):
    """An architecture ftlab has never heard of: two hidden layers and a head."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 8))
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        return self.out(self.layers(x))


@pytest.fixture
def mlp_family():
    family = Family("test-mlp", lambda m: isinstance(m, TinyMLP),
                    lambda m: [("layers.0", m.layers[0]), ("layers.1", m.layers[1])], head="out")
    register_family(family)
    try:
        yield family
    finally:
        FAMILIES.remove(family)


def test_registered_family_gets_blocks_freeze_and_summary(mlp_family):
    model = TinyMLP()
    assert [name for name, _ in ftlab.blocks(model)] == ["layers.0", "layers.1"]
    ftlab.freeze(model, 1)
    assert not any(p.requires_grad for p in model.layers[0].parameters())
    assert all(p.requires_grad for p in model.layers[1].parameters())
    assert all(p.requires_grad for p in model.out.parameters())
    assert ftlab.frozen_depth(model) == 1
    summary = ftlab.trainable_summary(model)
    assert list(summary.index) == ["layers.0", "layers.1", "head (out)", "total"]
    assert list(summary["frozen"])[:3] == [True, False, False]
    assert ftlab.models.head_of(model) is model.out


def test_registered_family_is_removed_again():
    # the fixture above cleaned up: an unknown architecture is unknown again
    with pytest.raises(TypeError):
        ftlab.blocks(TinyMLP())


# --- freeze ----------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(depth=st.integers(0, len(RESNET_BLOCKS)))
def test_freeze_freezes_exactly_the_first_depth_blocks(depth):
    model = ftlab.freeze(SHARED_RESNET, depth)
    assert model is SHARED_RESNET
    assert block_flags(model) == [{False}] * depth + [{True}] * (len(RESNET_BLOCKS) - depth)
    assert head_trainable(model)
    assert ftlab.frozen_depth(model) == depth


@settings(max_examples=20, deadline=None)
@given(depths=st.lists(st.integers(0, len(RESNET_BLOCKS)), min_size=1, max_size=5))
def test_repeated_freeze_sets_the_new_depth(depths):
    for depth in depths:
        ftlab.freeze(SHARED_RESNET, depth)
    fresh = ftlab.freeze(copy.deepcopy(SHARED_RESNET), 0)
    ftlab.freeze(fresh, depths[-1])
    assert flags(SHARED_RESNET) == flags(fresh)  # history of calls does not matter, only the last
    assert ftlab.frozen_depth(SHARED_RESNET) == depths[-1]


def test_freeze_four_then_one_leaves_only_the_stem_frozen(tiny_resnet):
    ftlab.freeze(tiny_resnet, 4)
    ftlab.freeze(tiny_resnet, 1)
    assert block_flags(tiny_resnet) == [{False}, {True}, {True}, {True}, {True}]


def test_freeze_zero_freezes_nothing_and_undoes_a_freeze(tiny_resnet):
    ftlab.freeze(tiny_resnet, 0)
    assert all(p.requires_grad for p in tiny_resnet.parameters())
    ftlab.freeze(tiny_resnet, 5)
    assert sum(p.requires_grad for p in tiny_resnet.parameters()) == 2  # fc.weight, fc.bias
    ftlab.freeze(tiny_resnet, 0)
    assert all(p.requires_grad for p in tiny_resnet.parameters())
    assert ftlab.frozen_depth(tiny_resnet) == 0


def test_full_depth_freezes_the_backbone_but_not_the_head(tiny_resnet):
    ftlab.freeze(tiny_resnet, len(ftlab.blocks(tiny_resnet)))
    trainable = {name for name, p in tiny_resnet.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}


def test_freeze_bert_keeps_pooler_and_classifier_trainable(tiny_bert):
    ftlab.freeze(tiny_bert, 3)
    trainable = {name.rpartition(".")[0] for name, p in tiny_bert.named_parameters() if p.requires_grad}
    assert trainable == {"bert.pooler.dense", "classifier"}
    assert ftlab.frozen_depth(tiny_bert) == 3


@pytest.mark.parametrize("depth", [-1, 6, 100, 2.0, "2", None, True])
def test_freeze_rejects_bad_depths_naming_the_range(tiny_resnet, depth):
    before = flags(tiny_resnet)
    with pytest.raises(ValueError, match=r"0\.\.5"):
        ftlab.freeze(tiny_resnet, depth)
    assert flags(tiny_resnet) == before


# --- trainable_summary -----------------------------------------------------------------------


@settings(max_examples=12, deadline=None)
@given(depth=st.integers(0, len(RESNET_BLOCKS)))
def test_trainable_summary_counts_and_flags(depth):
    model = ftlab.freeze(SHARED_RESNET, depth)
    summary = ftlab.trainable_summary(model)
    assert list(summary.index) == RESNET_BLOCKS + ["head (fc)", "total"]
    for name, block in ftlab.blocks(model):
        assert summary.loc[name, "parameters"] == sum(p.numel() for p in block.parameters())
        assert summary.loc[name, "trainable"] == sum(p.numel() for p in block.parameters() if p.requires_grad)
    assert summary.loc["head (fc)", "parameters"] == sum(p.numel() for p in model.fc.parameters())
    assert summary.loc["head (fc)", "trainable"] == summary.loc["head (fc)", "parameters"]
    assert summary.loc["total", "parameters"] == sum(p.numel() for p in model.parameters())
    assert summary.loc["total", "trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert summary.loc["total", "parameters"] == summary["parameters"].iloc[:-1].sum()
    assert list(summary["frozen"].iloc[:5]) == [i < depth for i in range(5)]
    assert not summary.loc["head (fc)", "frozen"]
    assert list(summary["batchnorm"].iloc[:5]) == [
        "statistics fixed" if i < depth else "statistics update" for i in range(5)]


def test_trainable_summary_of_bert_has_no_batchnorm(tiny_bert):
    summary = ftlab.trainable_summary(ftlab.freeze(tiny_bert, 1))
    assert list(summary.index) == ["embeddings", "layer.0", "layer.1", "pooler", "head (classifier)", "total"]
    assert list(summary["frozen"].iloc[:5]) == [True, False, False, False, False]
    assert set(summary["batchnorm"].iloc[:5]) == {"-"}
    head_params = sum(p.numel() for p in tiny_bert.classifier.parameters())  # the linear classifier alone
    assert summary.loc["head (classifier)", "parameters"] == head_params
    assert summary.loc["pooler", "parameters"] == sum(p.numel() for p in tiny_bert.bert.pooler.parameters())


# --- the BatchNorm trap ----------------------------------------------------------------------


def test_the_batchnorm_trap_is_real_and_train_mode_avoids_it(tiny_resnet):
    ftlab.freeze(tiny_resnet, 5)
    images = torch.rand(8, 3, 16, 16)
    before = states(tiny_resnet)

    tiny_resnet.train()  # the trap: requires_grad=False alone, BatchNorm still in training mode
    tiny_resnet(images)
    assert not torch.equal(tiny_resnet.bn1.running_mean, before["bn1.running_mean"])
    assert tiny_resnet.bn1.num_batches_tracked.item() == before["bn1.num_batches_tracked"].item() + 1

    tiny_resnet.load_state_dict(before)
    train_mode(tiny_resnet)
    tiny_resnet(images)
    after = states(tiny_resnet)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert tiny_resnet.fc.training  # the head still trains


def test_train_mode_puts_frozen_blocks_in_eval_and_the_rest_in_train(tiny_bert):
    ftlab.freeze(tiny_bert, 2)
    train_mode(tiny_bert)
    named = dict(ftlab.blocks(tiny_bert))
    for name in ("embeddings", "layer.0"):
        assert not any(m.training for m in named[name].modules()), name
    assert all(m.training for m in named["layer.1"].modules())
    assert tiny_bert.classifier.training and tiny_bert.bert.pooler.training


def test_frozen_bert_blocks_run_without_dropout_in_train_mode(tiny_bert):
    ids = torch.randint(1000, 2000, (4, 10))
    ftlab.freeze(tiny_bert, 1)
    train_mode(tiny_bert)
    frozen = tiny_bert.bert.embeddings
    assert torch.equal(frozen(input_ids=ids), frozen(input_ids=ids))  # no dropout: deterministic
    ftlab.freeze(tiny_bert, 0)
    train_mode(tiny_bert)
    assert not torch.equal(frozen(input_ids=ids), frozen(input_ids=ids))  # dropout on when it trains


def assert_frozen_prefix_untouched(before: dict, model: nn.Module, depth: int) -> None:
    named = ftlab.blocks(model)
    block_of = {}  # state_dict key -> block index, via the tensors' identity
    for i, (_, block) in enumerate(named):
        for key, tensor in block.state_dict(keep_vars=True).items():
            block_of[id(tensor)] = i
    after = model.state_dict(keep_vars=True)
    changed = {i: False for i in range(len(named))}
    for key, tensor in after.items():
        i = block_of.get(id(tensor))
        if i is None:
            continue
        same = torch.equal(tensor.detach(), before[key])
        if i < depth:
            assert same, f"{key} of frozen block {named[i][0]} changed"
        elif isinstance(tensor, nn.Parameter) and not same:
            changed[i] = True
    for i in range(depth, len(named)):
        assert changed[i], f"no parameter of trainable block {named[i][0]} changed"


@pytest.mark.parametrize("depth,cache", [(0, False), (2, False), (5, False), (2, True)])
def test_fit_leaves_frozen_resnet_blocks_bit_identical(depth, cache):
    model, task = make_tiny_resnet(), make_image_task(n=16)
    before = states(model)
    ftlab.fit(model, task, lr=1e-2, epochs=1, batch_size=8, frozen_depth=depth, cache_frozen=cache,
              progress=False)
    assert_frozen_prefix_untouched(before, model, depth)
    assert not torch.equal(model.fc.weight.detach(), before["fc.weight"])


def test_fit_leaves_frozen_bert_blocks_bit_identical():
    model, task = make_tiny_bert(), make_text_task(n=24)
    before = states(model)
    ftlab.fit(model, task, lr=1e-2, epochs=1, batch_size=8, frozen_depth=2, cache_frozen=False, progress=False)
    assert_frozen_prefix_untouched(before, model, 2)
    assert not torch.equal(model.classifier.weight.detach(), before["classifier.weight"])
