"""ftlab.block_shapes: each block's output shape, and which weights can ever meet real input."""
from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

import ftlab
from ftlab.families import _resnet_blocks
from ftlab.freezing import _reachable_weights, block_shapes, blocks, freeze, train_mode, trainable_summary
from ftlab.models import ImagePreprocess

from conftest import make_tiny_bert, make_tiny_resnet

pytestmark = pytest.mark.usefixtures("one_thread")


def _resnet18(size: int = 28) -> nn.Module:
    """torchvision's ResNet-18 as ftlab builds it (random weights: shapes do not depend on them)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    model.preprocess = ImagePreprocess(size, (0.286,) * 3, (0.353,) * 3)
    return model


def test_resnet18_at_28_pixels_ends_on_a_1x1_map():
    table = block_shapes(_resnet18())
    # 28 -> 14 (conv1, stride 2) -> 7 (maxpool) -> 7 (layer1) -> 4 -> 2 -> 1
    assert table["output"].tolist() == ["64 x 7 x 7", "64 x 7 x 7", "128 x 4 x 4", "256 x 2 x 2",
                                        "512 x 1 x 1", "10", ""]
    assert table.loc["stem", "kernels_see"] == "28x28"  # conv1's 7x7 kernels; its output is 14x14
    assert table.loc["layer2", "kernels_see"] == "7x7, 4x4"  # the first conv of a stage strides by 2
    assert table.loc["layer4", "kernels_see"] == "2x2, 1x1"
    assert table.loc["layer4", "note"].startswith(
        "3x3 kernels see a 1x1 map: only their centre weight meets real input")
    assert "2x2 map" in table.loc["layer3", "note"]
    assert table.loc["layer1", "note"] == table.loc["layer2", "note"] == ""


def test_the_stem_halves_28_to_14_before_the_maxpool():
    model = _resnet18()
    seen = []

    def record(module, args) -> None:
        seen.append(tuple(args[0].shape[-2:]))

    model.maxpool.register_forward_pre_hook(record)
    block_shapes(model)
    assert seen == [(14, 14)]


def test_layer4_at_28_pixels_counts_only_the_weights_that_meet_real_input():
    model = _resnet18()
    table = block_shapes(model)
    layer4 = model.layer4
    # by hand: the striding 3x3 conv over 2x2 reaches a 2x2 corner of its kernel (4 of 9 taps); the
    # three 3x3 convs over 1x1 only their centre; the 1x1 shortcut and the BatchNorms in full
    expected = (layer4[0].conv1.weight.numel() * 4 // 9
                + sum(conv.weight.numel() // 9 for conv in (layer4[0].conv2, layer4[1].conv1, layer4[1].conv2))
                + sum(p.numel() for p in layer4[0].downsample.parameters())
                + sum(p.numel() for m in layer4.modules() if isinstance(m, nn.BatchNorm2d) and m
                      is not layer4[0].downsample[1] for p in m.parameters()))
    assert table.loc["layer4", "effective"] == expected
    assert table.loc["layer4", "parameters"] == sum(p.numel() for p in layer4.parameters())
    assert table.loc["layer4", "effective"] < table.loc["layer4", "parameters"] / 5
    for name in ("stem", "layer1", "layer2", "layer3", "head (fc)"):  # maps of 2x2 and up: every tap can
        assert table.loc[name, "effective"] == table.loc[name, "parameters"]
    assert table.loc["total", "effective"] == table["effective"].iloc[:-1].sum()
    assert table.loc["total", "parameters"] == sum(p.numel() for p in model.parameters())


def _nonzero_gradients(model: nn.Module, size: int) -> dict[str, int]:
    """The oracle: which parameters get a gradient at all. With the ReLUs removed the network is
    affine in each weight, so a weight gets none exactly when it only ever multiplies zero padding."""
    model = copy.deepcopy(model).eval()
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.ReLU):
                setattr(module, name, nn.Identity())
    torch.manual_seed(1)
    logits = model(torch.randn(2, 3, size, size))
    (logits * torch.randn_like(logits)).sum().backward()
    counts = {}
    for name, block in [*_resnet_blocks(model), ("head (fc)", model.fc)]:
        counts[name] = sum(int((p.grad != 0).sum()) if p.dim() == 4 else p.numel() for p in block.parameters())
    return counts


@pytest.mark.parametrize("make, size", [(make_tiny_resnet, 16), (make_tiny_resnet, 9), (_resnet18, 28),
                                        (_resnet18, 40)])
def test_effective_counts_match_the_weights_that_get_a_gradient(make, size):
    model = make()
    table = block_shapes(model, input_size=size)
    expected = _nonzero_gradients(model, size)
    assert {name: table.loc[name, "effective"] for name in expected} == expected


@pytest.mark.parametrize("size, kernel, stride, padding, dilation", [
    (1, 3, 1, 1, 1), (2, 3, 1, 1, 1), (2, 3, 2, 1, 1), (1, 3, 2, 1, 1), (3, 5, 1, 2, 1), (2, 5, 1, 2, 1),
    (4, 3, 2, 1, 1), (1, 7, 2, 3, 1), (3, 3, 1, 2, 2), (5, 3, 1, "same", 1), (2, 4, 1, "same", 1),
    (3, 3, 1, "valid", 1), (4, 3, 2, 0, 1)])
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch's note on speed
def test_reachable_weights_of_one_conv_match_its_gradient(size, kernel, stride, padding, dilation):
    conv = nn.Conv2d(2, 3, kernel, stride=stride, padding=padding, dilation=dilation, bias=False)
    x = torch.randn(4, 2, size, size + 1, generator=torch.Generator().manual_seed(0))
    out = conv(x)
    (out * torch.randn_like(out)).sum().backward()
    assert _reachable_weights(conv, [(size, size + 1)]) == int((conv.weight.grad != 0).sum())


def test_non_zero_padding_modes_count_every_weight():
    conv = nn.Conv2d(2, 2, 3, padding=1, padding_mode="replicate")  # pads with copies of real pixels
    assert _reachable_weights(conv, [(1, 1)]) == conv.weight.numel()


@pytest.mark.parametrize("size", [9, 16, 28, 64])
def test_output_shapes_match_running_the_blocks_one_after_another(size):
    model = make_tiny_resnet()
    table = block_shapes(model, input_size=size)
    x = torch.zeros(1, 3, size, size)
    model.eval()
    with torch.no_grad():
        for name, block in _resnet_blocks(model):
            x = block(x)
            assert table.loc[name, "output"] == " x ".join(map(str, x.shape[1:]))


def test_the_tiny_resnet_uses_its_own_input_size():
    model = make_tiny_resnet()  # preprocess.size 16: 16 -> 8 -> 4 -> 4 -> 2 -> 1 -> 1
    table = block_shapes(model)
    assert table["output"].tolist()[:5] == ["64 x 4 x 4", "64 x 4 x 4", "128 x 2 x 2", "256 x 1 x 1",
                                            "512 x 1 x 1"]
    assert table.loc["head (fc)", "output"] == "4"
    assert "1x1 map" in table.loc["layer3", "note"] and "1x1 map" in table.loc["layer4", "note"]


def test_bert_rows_are_tokens_by_hidden_size():
    model = make_tiny_bert()  # max_length 32, hidden size 32, 2 layers, 3 classes
    table = block_shapes(model)
    names = [name for name, _ in blocks(model)]
    token_rows = [name for name in names if name == "embeddings" or name.startswith("layer.")]
    assert token_rows == ["embeddings", "layer.0", "layer.1"]
    assert table.loc[token_rows, "output"].tolist() == ["32 tokens x 32"] * 3
    for name in set(names) - set(token_rows):  # a pooler, where the family counts it as a block
        assert table.loc[name, "output"] == "32"
    assert table["output"].tolist()[-2:] == ["3", ""]  # the head's logits, and the total row
    assert block_shapes(model, input_size=10).loc["layer.1", "output"] == "10 tokens x 32"
    assert (table["effective"] == table["parameters"]).all()  # no convolutions: nothing is padding
    assert (table["kernels_see"].iloc[:-1] == "-").all()


@pytest.mark.parametrize("make", [make_tiny_resnet, make_tiny_bert])
def test_rows_line_up_with_trainable_summary(make):
    model = make()
    shapes, summary = block_shapes(model), trainable_summary(model)
    assert shapes.index.tolist() == summary.index.tolist()
    assert shapes["parameters"].tolist() == summary["parameters"].tolist()
    joined = summary.join(shapes[["output"]])
    assert joined.loc["layer1" if "layer1" in joined.index else "layer.0", "output"] != ""


@pytest.mark.parametrize("make", [make_tiny_resnet, make_tiny_bert])
def test_nothing_changes_in_the_model(make):
    model = make()
    freeze(model, 2)
    train_mode(model)  # the first two blocks in eval mode, the rest training: a mix to put back
    if hasattr(model, "layer1"):  # move the BatchNorm statistics off their initial values first
        with torch.no_grad():
            model(torch.rand(4, 3, 16, 16))
    flags = {name: m.training for name, m in model.named_modules()}
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert any(flags.values()) and not all(flags.values())
    block_shapes(model)
    block_shapes(model, input_size=9 if hasattr(model, "layer1") else 5)
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert {name: p.requires_grad for name, p in model.named_parameters()} == grads
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)  # BatchNorm statistics included
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks for m in model.modules())  # every hook removed


def test_exported_at_the_top_level():
    assert ftlab.block_shapes is block_shapes


@pytest.mark.parametrize("size", [0, -3, 2.5, True, "28"])
def test_bad_input_size_is_refused(size):
    with pytest.raises(ValueError, match="input_size must be a positive integer"):
        block_shapes(make_tiny_resnet(), input_size=size)


def test_more_tokens_than_positions_is_refused():
    with pytest.raises(ValueError, match="64 positions"):
        block_shapes(make_tiny_bert(), input_size=65)


def test_a_model_without_input_handling_is_refused():
    model = make_tiny_resnet()
    del model.preprocess
    with pytest.raises(TypeError, match="preprocess"):
        block_shapes(model)
