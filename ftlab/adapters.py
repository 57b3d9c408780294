"""Bottleneck adapters (Houlsby et al., 2019): small trainable modules between frozen blocks.

    ftlab.add_adapters(model, bottleneck=16)              # after every block; or after=["layer3", "layer4"]
    ftlab.trainable_summary(model)                        # adapters and the head train, nothing else
    history = ftlab.fit(model, task, lr=1e-3, epochs=5)
    with adapters_disabled(model):                        # the pretrained model, bit for bit
        ftlab.evaluate(model, source.task.test, head=source.head)

An adapter squeezes a block's output through a bottleneck and adds the result back:
    y = x + up(relu(down(x)))
Its up-projection starts at zero, so a fresh adapter is exactly the identity and the model computes
what the pretrained one did. Each chosen block is replaced, in place, by `WithAdapter(block,
adapter)`, so `ftlab.blocks(model)` lists the blocks with their adapters inside: frozen depth,
`trainable_summary` and the frozen-prefix cache (blocks before the first adapter are frozen, and
`fit` runs them once) work as before.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from .families import family_of, get_path, pooler_path, set_path
from .freezing import blocks

__all__ = ["Adapter", "WithAdapter", "add_adapters", "adapters_disabled"]


class Adapter(nn.Module):
    """x + up(relu(down(x))) over the feature dimension: channels of (B, C, H, W), last of (B, T, H)."""

    def __init__(self, width: int, bottleneck: int):
        super().__init__()
        if isinstance(bottleneck, bool) or not isinstance(bottleneck, int) or bottleneck < 1:
            raise ValueError(f"bottleneck must be a positive integer (typical: 8 to 64), got {bottleneck!r}")
        self.down = nn.Linear(width, bottleneck)  # (width -> bottleneck)
        self.up = nn.Linear(bottleneck, width)  # (bottleneck -> width)
        nn.init.zeros_(self.up.weight)  # up = 0: a fresh adapter adds exactly nothing
        nn.init.zeros_(self.up.bias)
        self.enabled = True  # False: the identity (see adapters_disabled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        dim = 1 if x.dim() == 4 else -1  # images: channels; sequences: hidden size
        h = x.movedim(dim, -1)  # features last: (B, H, W, C) or (B, T, H)
        return x + self.up(torch.relu(self.down(h))).movedim(-1, dim)

    def extra_repr(self) -> str:
        return f"width={self.down.in_features}, bottleneck={self.down.out_features}, enabled={self.enabled}"


class WithAdapter(nn.Module):
    """A block followed by an adapter, standing where the block stood."""

    def __init__(self, block: nn.Module, adapter: Adapter):
        super().__init__()
        self.block, self.adapter = block, adapter

    def forward(self, *args, **kwargs):
        out = self.block(*args, **kwargs)
        if isinstance(out, tuple):  # a BERT layer before transformers 5: (hidden, attentions, ...)
            return (self.adapter(out[0]), *out[1:])
        return self.adapter(out)


def _width(block: nn.Module) -> int:
    """Features a block puts out: the size of its last normalisation layer (BatchNorm or LayerNorm)."""
    norms = [m for m in block.modules() if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm))]
    if not norms:
        raise ValueError(f"cannot tell the output width of a {type(block).__name__} (it has no BatchNorm or "
                         "LayerNorm); adapters need one")
    last = norms[-1]
    return last.num_features if hasattr(last, "num_features") else last.normalized_shape[-1]


def _path_of(model: nn.Module, block: nn.Module) -> str:
    """Where a block sits in the model; for a block assembled on the fly (ResNet's stem), its last part."""
    paths = {id(m): path for path, m in model.named_modules()}
    while id(block) not in paths:
        block = list(block.children())[-1]
    return paths[id(block)]


def add_adapters(model: nn.Module, *, bottleneck: int = 16, after: list[str] | None = None) -> nn.Module:
    """Freeze `model`, put an adapter after each chosen block, and let adapters and the head train.

    after: block names from `ftlab.blocks(model)` (e.g. ["layer3", "layer4"], ["layer.0"]);
           None puts one after every block but BERT's pooler (its output is what the classifier
           reads, not token vectors). In place; returns the model.
    BERT's pooler stays frozen with the rest, so switching the adapters off gives the pretrained model.
    """
    named = blocks(model)
    names = [name for name, _ in named]
    pooler = pooler_path(model)
    if after is None:
        chosen = [name for name, block in named if pooler is None or block is not get_path(model, pooler)]
    else:
        chosen = list(after)
    unknown = [name for name in chosen if name not in names]
    if unknown or not chosen:
        raise ValueError(f"after must name blocks of this model ({', '.join(names)}), got {after!r}")
    if any(isinstance(m, (Adapter, WithAdapter)) for m in model.modules()):
        raise ValueError("this model has adapters already; start from a fresh model")
    model.requires_grad_(False)
    for name, block in named:
        if name in chosen:
            path = _path_of(model, block)
            adapter = Adapter(_width(block), bottleneck).to(next(block.parameters()).device)
            set_path(model, path, WithAdapter(get_path(model, path), adapter))
    get_path(model, family_of(model).head).requires_grad_(True)
    return model


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """Inside, every adapter is the identity: the model computes exactly what the pretrained one did."""
    adapters = [m for m in model.modules() if isinstance(m, Adapter)]
    if not adapters:
        raise ValueError("this model has no adapters; add them with ftlab.add_adapters(model)")
    states = [a.enabled for a in adapters]
    for adapter in adapters:
        adapter.enabled = False
    try:
        yield model
    finally:
        for adapter, state in zip(adapters, states):
            adapter.enabled = state
