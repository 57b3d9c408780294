"""Frozen depth: which blocks, counted from the input, keep their pretrained weights.

    ftlab.blocks(model)          # [('stem', ...), ('layer1', ...), ..., ('layer4', ...)]
    ftlab.freeze(model, 3)       # stem, layer1, layer2 frozen; layer3, layer4 and the head train
    ftlab.trainable_summary(model)

A frozen block is frozen for real: its parameters get no gradient, and during training it runs in
eval mode, so its BatchNorm running statistics do not move and its dropout is off
(`requires_grad=False` alone would let BatchNorm statistics drift: a classic trap).
"""
from __future__ import annotations

import pandas as pd
from torch import nn

from .families import family_of, get_path

__all__ = ["blocks", "freeze", "frozen_depth", "train_mode", "trainable_summary", "head_modules"]


def blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's freezable blocks in order from the input; the head is not among them."""
    return family_of(model).blocks(model)


def head_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The head (and what sits between the last block and it, e.g. BERT's pooler)."""
    family = family_of(model)
    paths = [*family.head_extra, family.head]
    return [(path, get_path(model, path)) for path in paths if _has_path(model, path)]


def _has_path(model: nn.Module, path: str) -> bool:
    try:
        return get_path(model, path) is not None
    except AttributeError:
        return False


# Parameters added by parameter-efficient methods (ftlab.lora, ftlab.adapters); PEFT's kept
# original of a head ("original_module") is the frozen reference copy, never trained.
_EFFICIENT = ("lora_", ".adapter.", "modules_to_save.")


def _is_efficient(name: str) -> bool:
    name = f".{name}"  # so a marker matches at the start of a name too
    return any(marker in name for marker in _EFFICIENT) and "original_module" not in name


def freeze(model: nn.Module, depth: int) -> nn.Module:
    """Freeze the first `depth` blocks; everything after them, head included, trains.

    depth=0 freezes nothing; depth=len(blocks(model)) freezes the whole backbone (a linear probe).
    Calling it again simply sets the new depth. Returns the model. With LoRA or adapters, "trains"
    means their small modules (and the head) train while the pretrained weights stay frozen.
    """
    named = blocks(model)
    if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= len(named):
        names = ", ".join(f"{i}={n}" for i, (n, _) in enumerate(named, 1))
        raise ValueError(f"frozen depth must be an integer in 0..{len(named)} (0 = nothing frozen, "
                         f"{len(named)} = whole backbone; blocks: {names}), got {depth!r}")
    efficient = any(_is_efficient(name) for name, _ in model.named_parameters())
    for i, (_, block) in enumerate(named):
        for name, p in block.named_parameters():
            p.requires_grad_(i >= depth and (not efficient or _is_efficient(name)))
    head_path = family_of(model).head
    for path, module in head_modules(model):
        for name, p in module.named_parameters():
            # the classifier always trains; with LoRA/adapters other head parts train only as copies
            trainable = _is_efficient(f"{path}.{name}") or (path == head_path and "original_module" not in name)
            p.requires_grad_(trainable if efficient else True)
    return model


def _all_frozen(module: nn.Module) -> bool:
    params = list(module.parameters())
    return bool(params) and not any(p.requires_grad for p in params)


def frozen_depth(model: nn.Module) -> int:
    """How many leading blocks are entirely frozen."""
    depth = 0
    for _, block in blocks(model):
        if not _all_frozen(block):
            break
        depth += 1
    return depth


def train_mode(model: nn.Module) -> nn.Module:
    """model.train(), except frozen blocks and frozen normalisation layers, which stay in eval mode."""
    model.train()
    for _, block in blocks(model):
        if _all_frozen(block):
            block.eval()
    for module in model.modules():  # frozen BatchNorm elsewhere (e.g. under LoRA) keeps its statistics
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and _all_frozen(module):
            module.eval()
    return model


def _batchnorm_mode(module: nn.Module) -> str:
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return "-"
    frozen = sum(_all_frozen(m) for m in norms)
    if frozen == len(norms):
        return "statistics fixed"
    return "statistics update" if frozen == 0 else f"{frozen}/{len(norms)} fixed"


def trainable_summary(model: nn.Module) -> pd.DataFrame:
    """One row per block plus the head: parameters, trainable parameters, frozen?, BatchNorm mode."""
    rows = []
    for name, module in [*blocks(model), ("head", None)]:
        params = ([p for _, m in head_modules(model) for p in m.parameters()] if module is None
                  else list(module.parameters()))
        total = sum(p.numel() for p in params)
        trainable = sum(p.numel() for p in params if p.requires_grad)
        bn = _batchnorm_mode(nn.ModuleList([m for _, m in head_modules(model)]) if module is None else module)
        rows.append({"block": name if module is not None else f"head ({family_of(model).head})",
                     "parameters": total, "trainable": trainable,
                     "frozen": trainable == 0 and total > 0, "batchnorm": bn})
    # the total counts every parameter of the model, including any outside blocks and head
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rows.append({"block": "total", "parameters": total, "trainable": trainable,
                 "frozen": trainable == 0, "batchnorm": ""})
    return pd.DataFrame(rows).set_index("block")
