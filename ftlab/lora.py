"""LoRA: fine-tune a frozen network through small low-rank updates of some of its layers.

    layer = LoRALinear(nn.Linear(384, 384), r=8, alpha=16)   # the idea, in twenty lines (lesson 9)

    ftlab.add_lora(model, rank=8)          # the same idea through Hugging Face PEFT, on BERT or ResNet
    ftlab.trainable_summary(model)         # ~1% of the parameters train: the LoRA matrices and the head
    history = ftlab.fit(model, task, lr=1e-3, epochs=5)
    with lora_disabled(model):             # the pretrained model, exactly, for comparison
        ftlab.evaluate(model, source.task.test, head=source.head)
    merge_lora(model)                      # W + B A * scaling folded into plain layers again

A LoRA layer keeps the pretrained weight W frozen and learns W + B A * alpha / r, where A is
(r, in) and B is (out, r) with a small rank r. B starts at zero, so before training the model
computes exactly what the pretrained one did; switching LoRA off gives the pretrained model back.

`add_lora` injects PEFT's LoRA layers *in place* (`peft.inject_adapter_in_model`): the model keeps
its class (a torchvision ResNet stays a ResNet, a BertForSequenceClassification stays one), so
every part of ftlab that finds blocks and heads by architecture (`blocks`, `freeze`,
`trainable_summary`, `fit` and its frozen-prefix cache, `sweep`) sees the same model as before,
and `preprocess` / `tokenizer` stay where they were. The head (and BERT's pooler) go in PEFT's
`modules_to_save`: they train, they are saved with the LoRA weights (a head left out of it is the
classic PEFT trap: it trains, then is lost on saving), and the original copy is kept for when
LoRA is switched off.

Replace the head *before* `add_lora` (`old = ftlab.models.replace_head(model, k)`): afterwards
the head is PEFT's wrapper around the trained copy and the original, no longer a plain nn.Linear.
`ftlab.freeze(model, depth)` (or `fit(frozen_depth=...)`) still works: the first `depth` blocks
are frozen entirely, and in the later ones only the LoRA matrices train, never the pretrained
weights. Blocks without LoRA layers are frozen already, and `fit` caches them.
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from .families import family_of, pooler_path, set_path
from .freezing import head_modules

__all__ = ["LoRALinear", "add_lora", "lora_disabled", "merge_lora", "has_lora", "DEFAULT_TARGETS"]

# The layers that get LoRA when `targets` is not given, per ftlab model family.
DEFAULT_TARGETS = {
    "bert": ["query", "value"],  # the attention projections, as in the LoRA paper
    "torchvision-resnet": r"layer[34]\.\d+\.conv[12]",  # the 3x3 convs of the last two stages
}


def _check_rank(r) -> None:
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"the LoRA rank must be a positive integer (typical: 4 to 64), got {r!r}")


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update: y = W x + b + B A x * alpha / r."""

    def __init__(self, base_layer: nn.Linear, *, r: int = 8, alpha: float = 16, dropout: float = 0.0):
        super().__init__()
        _check_rank(r)
        self.base_layer = base_layer.requires_grad_(False)  # the pretrained layer never changes
        like = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        self.lora_A = nn.Linear(base_layer.in_features, r, bias=False, **like)  # weight (r, in): down to rank r
        self.lora_B = nn.Linear(r, base_layer.out_features, bias=False, **like)  # weight (out, r): back up
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # A random, as PEFT does ...
        nn.init.zeros_(self.lora_B.weight)  # ... and B zero: the update B A starts at exactly 0
        self.dropout = nn.Dropout(dropout)
        self.r, self.alpha = r, alpha
        # as in the paper and PEFT; under Adam the early update grows as alpha / sqrt(r) (lesson 09 measures it)
        self.scaling = alpha / r

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., in) -> (..., out)
        return self.base_layer(x) + self.lora_B(self.lora_A(self.dropout(x))) * self.scaling

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """One plain nn.Linear computing the same function: W + B A * scaling (no extra cost to run)."""
        base = self.base_layer
        merged = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                           device=base.weight.device, dtype=base.weight.dtype)
        merged.weight.copy_(base.weight + self.lora_B.weight @ self.lora_A.weight * self.scaling)
        if base.bias is not None:
            merged.bias.copy_(base.bias)
        return merged

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:g}"


def _peft_layers(model: nn.Module) -> list[nn.Module]:
    """PEFT's LoRA layers and its wrappers of modules_to_save (head, pooler) inside `model`."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    return [m for m in model.modules() if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))]


def has_lora(model: nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def add_lora(model: nn.Module, *, rank: int = 8, alpha: float = 16, targets: list[str] | str | None = None,
             dropout: float = 0.0) -> nn.Module:
    """Freeze `model` and give the chosen layers a LoRA update; the head (and pooler) train. In place.

    targets: names of the nn.Linear / nn.Conv2d layers to adapt, matched at the end of their paths
             (["query", "value"]), or one regular expression for the whole path
             (r"layer[34]\\.\\d+\\.conv[12]"). Default: DEFAULT_TARGETS for the model's family.
    Returns the model (the same object, its class unchanged).
    """
    from peft import LoraConfig, inject_adapter_in_model

    _check_rank(rank)
    if not (isinstance(alpha, (int, float)) and alpha > 0):
        raise ValueError(f"alpha must be a positive number (the update is scaled by alpha / rank), got {alpha!r}")
    if not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    family = family_of(model)
    if has_lora(model):
        raise ValueError("this model has LoRA layers already; merge them first (ftlab.lora.merge_lora(model)) "
                         "or start from a fresh model")
    if targets is None:
        if family.name not in DEFAULT_TARGETS:
            raise ValueError(f"no default LoRA targets for the {family.name!r} family; pass targets=[...] "
                             "naming its nn.Linear or nn.Conv2d layers")
        targets = DEFAULT_TARGETS[family.name]
    # The head, and the block it reads through (BERT's pooler, with [CLS] pooling): trained as a full
    # copy and saved, the original kept. The pooler is a block, so freeze(model, len(blocks)) freezes it.
    to_save = [path for path, _ in head_modules(model)]
    if (pooler := pooler_path(model)) is not None:
        to_save.insert(0, pooler)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        modules_to_save=to_save)
    try:
        inject_adapter_in_model(config, model)  # also sets requires_grad: LoRA and modules_to_save only
    except ValueError as error:
        layers = [name for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        raise ValueError(f"add_lora: {error}\nLayers LoRA can adapt in this model: {', '.join(layers)}") from None
    return model


@contextlib.contextmanager
def lora_disabled(model: nn.Module):
    """Run the pretrained model inside: LoRA updates off, the original head and pooler back.

        with lora_disabled(model):
            base_logits = model(x)
    """
    layers = _peft_layers(model)
    if not layers:
        raise ValueError("this model has no LoRA layers; add them with ftlab.add_lora(model)")
    flags = [(p, p.requires_grad) for p in model.parameters()]  # PEFT's switch also flips requires_grad
    were_disabled = [layer.disable_adapters for layer in layers]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer, was_disabled in zip(layers, were_disabled):
            layer.enable_adapters(not was_disabled)
        for p, flag in flags:
            p.requires_grad_(flag)


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its layer (W += B A * scaling) and keep the trained head and pooler.

    The model becomes plain again (nn.Linear / nn.Conv2d layers, no PEFT wrappers) and computes what
    it did with LoRA on. In place; returns the model.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    peft_ids = {id(m) for m in _peft_layers(model)}
    layers = {name: m for name, m in model.named_modules() if id(m) in peft_ids}
    if not layers:
        raise ValueError("this model has no LoRA layers to merge")
    for name, layer in layers.items():
        if isinstance(layer, BaseTunerLayer):
            layer.merge()
            set_path(model, name, layer.get_base_layer())
        else:  # a module_to_save: keep its trained copy
            set_path(model, name, layer.modules_to_save[layer.active_adapters[0]])
    if hasattr(model, "peft_config"):
        del model.peft_config
    return model
