"""Model families ftlab knows: where their blocks are (from the input) and where the head is.

Everything that freezes, replaces heads or caches a frozen prefix asks this module, so teaching
ftlab a new architecture is one `register_family(...)` call:

    register_family(Family(
        name="my-convnet",
        matches=lambda m: isinstance(m, MyConvNet),
        blocks=lambda m: [("features.0", m.features[0]), ("features.1", m.features[1])],
        head="classifier",                 # attribute path of the final nn.Linear
    ))
"""
from __future__ import annotations

import inspect

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

__all__ = ["Family", "family_of", "register_family", "FAMILIES", "get_path", "set_path"]


@dataclass(frozen=True)
class Family:
    name: str
    matches: Callable[[nn.Module], bool]
    blocks: Callable[[nn.Module], list[tuple[str, nn.Module]]]  # from the input, head excluded
    head: str  # dotted path of the classification layer that replace_head swaps
    head_extra: tuple[str, ...] = field(default=())  # modules between blocks and head (e.g. BERT's pooler)
    # Optional, for the frozen-prefix cache: run the first k blocks / everything after them.
    # prefix(model, k, inputs) -> features;  suffix(model, k, features) -> logits.
    # `inputs` and `features` are dicts of tensors whose first dimension is the batch.
    prefix: Callable | None = None
    suffix: Callable | None = None


def get_path(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path)


def set_path(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, name, module)


def _is_resnet(model: nn.Module) -> bool:
    from torchvision.models import ResNet

    return isinstance(model, ResNet)


def _resnet_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    # conv1+bn1 are the "stem"; relu and maxpool have no parameters but belong to it when we run it.
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    return [("stem", stem)] + [(f"layer{i}", getattr(model, f"layer{i}")) for i in range(1, 5)]


def _resnet_prefix(model: nn.Module, k: int, inputs: dict) -> dict:
    x = inputs["pixels"]  # preprocessed images
    for _, block in _resnet_blocks(model)[:k]:
        x = block(x)
    return {"hidden": x}


def _resnet_suffix(model: nn.Module, k: int, features: dict) -> torch.Tensor:
    x = features["hidden"]
    for _, block in _resnet_blocks(model)[k:]:
        x = block(x)
    return model.fc(torch.flatten(model.avgpool(x), 1))  # as torchvision's ResNet.forward ends


def _is_bert(model: nn.Module) -> bool:
    return hasattr(model, "bert") and hasattr(model, "classifier") and hasattr(model.bert, "encoder")


def _bert_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    layers = model.bert.encoder.layer
    return [("embeddings", model.bert.embeddings)] + [(f"layer.{i}", layer) for i, layer in enumerate(layers)]


def _bert_mask(model: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor):
    """The additive attention mask BertModel builds (its helper moved between transformers 4 and 5)."""
    bert = model.bert
    if hasattr(bert, "_create_attention_masks"):  # transformers >= 5; its arguments changed within 5.x
        offered = {"attention_mask": attention_mask, "encoder_attention_mask": None, "embedding_output": hidden,
                   "encoder_hidden_states": None, "cache": None, "past_key_values": None, "cache_position": None}
        accepted = inspect.signature(bert._create_attention_masks).parameters
        try:
            return bert._create_attention_masks(**{k: v for k, v in offered.items() if k in accepted})[0]
        except TypeError:  # a signature we have not seen: BERT's own additive padding mask
            return (1.0 - attention_mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
    return bert.get_extended_attention_mask(attention_mask, attention_mask.shape)


def _bert_layers(model: nn.Module, layers, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = _bert_mask(model, hidden, attention_mask)
    for layer in layers:
        out = layer(hidden, mask)
        hidden = out[0] if isinstance(out, tuple) else out  # a tuple before transformers 5
    return hidden


def _bert_prefix(model: nn.Module, k: int, inputs: dict) -> dict:
    if k == 0:
        return dict(inputs)
    hidden = model.bert.embeddings(input_ids=inputs["input_ids"], token_type_ids=inputs.get("token_type_ids"))
    hidden = _bert_layers(model, model.bert.encoder.layer[:k - 1], hidden, inputs["attention_mask"])
    return {"hidden": hidden, "attention_mask": inputs["attention_mask"]}


def _bert_suffix(model: nn.Module, k: int, features: dict) -> torch.Tensor:
    if k == 0:
        features = _bert_prefix(model, 1, features)
        k = 1
    hidden = _bert_layers(model, model.bert.encoder.layer[k - 1:], features["hidden"], features["attention_mask"])
    pooled = model.bert.pooler(hidden) if model.bert.pooler is not None else hidden[:, 0]
    return model.classifier(model.dropout(pooled))  # as BertForSequenceClassification.forward ends


FAMILIES: list[Family] = [
    Family("torchvision-resnet", _is_resnet, _resnet_blocks, head="fc",
           prefix=_resnet_prefix, suffix=_resnet_suffix),
    Family("bert", _is_bert, _bert_blocks, head="classifier", head_extra=("bert.pooler",),
           prefix=_bert_prefix, suffix=_bert_suffix),
]


def register_family(family: Family) -> None:
    """Teach ftlab a new architecture (checked before the built-in families)."""
    FAMILIES.insert(0, family)


def family_of(model: nn.Module) -> Family:
    for family in FAMILIES:
        if family.matches(model):
            return family
    known = ", ".join(f.name for f in FAMILIES)
    raise TypeError(
        f"ftlab does not know the blocks of a {type(model).__name__}. Supported families: {known}. "
        "Describe a new one with ftlab.families.register_family(Family(...)) (see its docstring).")
