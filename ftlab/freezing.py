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

from .checks import require_model
from .families import family_of, get_path

__all__ = ["blocks", "freeze", "frozen_depth", "train_mode", "trainable_summary", "head_modules",
           "block_shapes"]


def blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's freezable blocks in order from the input; the head is not among them."""
    return family_of(model).blocks(model)


def head_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The head (and any family's `head_extra` modules that train with it). BERT's pooler is not
    among them: it is BERT's last block, so a frozen depth of len(blocks) is a linear probe."""
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
    require_model(model, "freeze")
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


def trainable_summary(model: nn.Module, *, lr: float | None = None, head_lr: float | None = None,
                      lr_decay: float | None = None, block_lrs: dict | None = None) -> pd.DataFrame:
    """One row per block plus the head: parameters, trainable parameters, frozen?, BatchNorm mode.

    Given `lr` (and optionally head_lr, lr_decay, block_lrs, as for `fit`), a column "lr" shows the
    learning rate each block trains at: the rates of the optimizer's parameter groups that `fit` builds.
    """
    require_model(model, "trainable_summary")
    rates = None
    if lr is not None:
        from .optim import block_learning_rates

        rates = block_learning_rates(model, lr=lr, head_lr=head_lr, lr_decay=lr_decay, block_lrs=block_lrs)
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
        if rates is not None:  # a frozen block has a rate in the recipe but takes no step
            rows[-1]["lr"] = rates["head" if module is None else name] if trainable else 0.0
    # the total counts every parameter of the model, including any outside blocks and head
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rows.append({"block": "total", "parameters": total, "trainable": trainable,
                 "frozen": trainable == 0, "batchnorm": ""} | ({"lr": float("nan")} if rates is not None else {}))
    return pd.DataFrame(rows).set_index("block")


# --- shapes per block: what each block outputs, and what its kernels can see ---------------------

def block_shapes(model: nn.Module, *, input_size: int | None = None) -> pd.DataFrame:
    """One row per block plus the head: its output for one example and how much of it can learn.

    input_size: image side in pixels (default `model.preprocess.size`: 28 for ftlab's ResNet) or
    tokens per text (default `model.max_length`). Columns:

    output       the block's output for one example: "64 x 7 x 7" (channels x height x width), or
                 "128 tokens x 384" for text
    kernels_see  the map sizes that its convolutions wider than 1x1 see, e.g. "7x7, 4x4"
    parameters   the nominal parameter count (as in `trainable_summary`)
    effective    the parameters that can ever meet real input at this size: a 3x3 kernel sliding over
                 a 1x1 map with zero padding only ever multiplies the pixel with its centre weight
    note         where a kernel is wider than its map, what that means

    The index is `trainable_summary`'s, so `trainable_summary(m).join(block_shapes(m))` shows both.
    One dummy example runs in eval mode under no_grad: no weight or BatchNorm statistic changes, and
    every module's train/eval flag is put back.

        ftlab.block_shapes(ftlab.models.resnet18(weights="fashion-mnist"))   # layer4: 512 x 1 x 1
    """
    import torch  # here, not at the top: the rest of this module needs only torch.nn

    family = family_of(model)
    run, is_text = _dummy_run(model, input_size)
    head = get_path(model, family.head)
    rows = [(name, module, [module]) for name, module in blocks(model)]
    rows.append((f"head ({family.head})", head, [m for _, m in head_modules(model)]))

    outputs: dict[int, object] = {}  # row -> the last output produced inside that block
    conv_inputs: dict[nn.Conv2d, list[tuple[int, int]]] = {}  # conv -> (H, W) of each input it got
    handles = []

    def record_output(i: int):
        # a container's hook fires after its children's, so the last output is the block's own; it
        # also covers blocks that are never called whole (ResNet's stem is a view over conv1..maxpool)
        return lambda module, args, out: outputs.__setitem__(i, out)

    def record_conv_input(conv: nn.Conv2d, args, out) -> None:
        conv_inputs.setdefault(conv, []).append(tuple(args[0].shape[-2:]))

    flags = {module: module.training for module in model.modules()}
    try:
        for i, (_, block, _) in enumerate(rows):
            for module in block.modules():
                handles.append(module.register_forward_hook(record_output(i)))
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                handles.append(module.register_forward_hook(record_conv_input))
        model.eval()  # BatchNorm uses (and keeps) its running statistics; dropout is off
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in flags.items():
            module.training = flag

    table = []
    for i, (name, _, parts) in enumerate(rows):
        convs = [m for part in parts for m in part.modules() if isinstance(m, nn.Conv2d)]
        nominal = sum(p.numel() for part in parts for p in part.parameters())
        table.append({"block": name, "output": _shape_text(outputs.get(i), is_text),
                      "kernels_see": _kernels_see(convs, conv_inputs),
                      "parameters": nominal, "effective": nominal - _unreachable(convs, conv_inputs),
                      "note": _padding_note(convs, conv_inputs)})
    nominal = sum(p.numel() for p in model.parameters())
    effective = nominal - _unreachable([m for m in model.modules() if isinstance(m, nn.Conv2d)], conv_inputs)
    note = (f"{effective / nominal:.0%} of the parameters can meet real input at this size"
            if effective < nominal else "")
    table.append({"block": "total", "output": "", "kernels_see": "", "parameters": nominal,
                  "effective": effective, "note": note})
    return pd.DataFrame(table).set_index("block")


def _dummy_run(model: nn.Module, input_size: int | None):
    """A function that runs one dummy example through the model, and whether the model reads text."""
    import torch

    if input_size is not None and (isinstance(input_size, bool) or not isinstance(input_size, int)
                                   or input_size < 1):
        raise ValueError(f"input_size must be a positive integer (pixels per side for images, tokens for "
                         f"text) or None (the model's own), got {input_size!r}")
    param = next(model.parameters())
    if hasattr(model, "preprocess"):
        # already-preprocessed pixels at the chosen size: model.preprocess would resize them back
        size = input_size or model.preprocess.size
        pixels = torch.zeros(1, getattr(model.preprocess, "channels", 3), size, size,
                             dtype=param.dtype, device=param.device)

        def run():
            try:
                model(pixels)
            except RuntimeError as error:
                raise ValueError(f"block_shapes: the model cannot take a {size}x{size} input ({error}); "
                                 "try a larger input_size") from None
        return run, False
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "max_position_embeddings"):
        length = input_size or getattr(model, "max_length", 128)
        limit = config.max_position_embeddings
        if length > limit:
            raise ValueError(f"input_size={length} tokens is more than this model's "
                             f"{limit} positions; use input_size <= {limit}")
        ids = torch.zeros(1, length, dtype=torch.long, device=param.device)  # token ids: shapes only
        return (lambda: model(input_ids=ids, attention_mask=torch.ones_like(ids))), True
    raise TypeError(f"block_shapes needs an image model with `preprocess` (ftlab.models.resnet18) or a "
                    f"text model with a `config` (ftlab.models.bert); got a {type(model).__name__}")


def _first_tensor(out):
    """The tensor in a module's output (BERT layers return tuples before transformers 5)."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    values = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else ()
    return next((t for t in map(_first_tensor, values) if t is not None), None)


def _shape_text(out, is_text: bool) -> str:
    tensor = _first_tensor(out)
    if tensor is None:
        return "-"  # the block did not run
    dims = list(tensor.shape[1:])  # one example: the batch dimension is left out
    if is_text and len(dims) == 2:
        return f"{dims[0]} tokens x {dims[1]}"
    return " x ".join(map(str, dims))


def _padding(conv: nn.Conv2d, axis: int) -> tuple[int, int]:
    """Zero padding (before, after) along one axis, as PyTorch applies it."""
    if conv.padding == "valid":
        return 0, 0
    if conv.padding == "same":  # PyTorch puts the odd extra pixel after
        total = conv.dilation[axis] * (conv.kernel_size[axis] - 1)
        return total // 2, total - total // 2
    return conv.padding[axis], conv.padding[axis]


def _reachable_taps(conv: nn.Conv2d, size: int, axis: int) -> set[int]:
    """The kernel positions along one axis that land on a real input pixel for some output."""
    kernel, stride, dilation = conv.kernel_size[axis], conv.stride[axis], conv.dilation[axis]
    before, after = _padding(conv, axis)
    outputs = (size + before + after - dilation * (kernel - 1) - 1) // stride + 1
    return {t for t in range(kernel) for o in range(outputs) if 0 <= o * stride - before + t * dilation < size}


def _reachable_taps_2d(conv: nn.Conv2d, sizes: list[tuple[int, int]]) -> set[tuple[int, int]]:
    if conv.padding_mode != "zeros" or not sizes:  # reflect/replicate pad with real pixels; unseen: assume all
        return {(r, c) for r in range(conv.kernel_size[0]) for c in range(conv.kernel_size[1])}
    # rows and columns are independent: a tap meets a real pixel when both of its coordinates do
    return {(r, c) for h, w in sizes for r in _reachable_taps(conv, h, 0) for c in _reachable_taps(conv, w, 1)}


def _reachable_weights(conv: nn.Conv2d, sizes: list[tuple[int, int]]) -> int:
    """How many of the conv's weights can ever multiply a real (non-padding) input pixel."""
    out_channels, in_per_group = conv.weight.shape[:2]
    return out_channels * in_per_group * len(_reachable_taps_2d(conv, sizes))


def _unreachable(convs: list[nn.Conv2d], conv_inputs: dict) -> int:
    """How many conv weights only ever multiply zero padding, over the inputs they got."""
    return sum(conv.weight.numel() - _reachable_weights(conv, conv_inputs.get(conv, [])) for conv in convs)


def _kernels_see(convs: list[nn.Conv2d], conv_inputs: dict) -> str:
    sizes = []  # distinct, in the order the convolutions ran
    for conv, seen in conv_inputs.items():
        if conv in convs and conv.kernel_size != (1, 1):
            sizes += [s for s in seen if s not in sizes]
    return ", ".join(f"{h}x{w}" for h, w in sizes) or "-"


def _padding_note(convs: list[nn.Conv2d], conv_inputs: dict) -> str:
    """A warning for the conv whose map is smallest next to its kernel, when the kernel is wider."""
    cramped = [((h * w) / (conv.kernel_size[0] * conv.kernel_size[1]), conv, (h, w))
               for conv in convs if conv.padding_mode == "zeros"
               for h, w in conv_inputs.get(conv, []) if h < conv.kernel_size[0] or w < conv.kernel_size[1]]
    if not cramped:
        return ""
    _, conv, (h, w) = min(cramped, key=lambda item: item[0])
    kh, kw = conv.kernel_size
    kernel = f"{kh}x{kw} kernels see a {h}x{w} map"
    if (h, w) == (1, 1):
        taps = _reachable_taps_2d(conv, [(1, 1)])
        if taps == {(kh // 2, kw // 2)}:
            return f"{kernel}: only their centre weight meets real input (the other {kh * kw - 1}: padding)"
        return f"{kernel}: only {len(taps)} of their {kh * kw} weights meet real input (the rest: padding)"
    # at one output position a window covers at most min(k, size) real pixels per axis (dilation 1)
    real = min(kh, h) * min(kw, w)
    return f"{kernel}: at each position at most {real} of their {kh * kw} weights meet real input"
