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

__all__ = ["Family", "family_of", "register_family", "FAMILIES", "get_path", "set_path", "bert_pooling", "mean_pool",
           "pooler_path"]


@dataclass(frozen=True)
class Family:
    name: str
    matches: Callable[[nn.Module], bool]
    blocks: Callable[[nn.Module], list[tuple[str, nn.Module]]]  # from the input, head excluded
    head: str  # dotted path of the classification layer that replace_head swaps
    head_extra: tuple[str, ...] = field(default=())  # modules between blocks and head that train with it
    # A block the head reads through (BERT's pooler): replace_head keeps a copy of it with the old
    # head, because the old head only means something on top of it as it was.
    pooler: str | None = None
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


def pooler_path(model: nn.Module) -> str | None:
    """Where the block the head reads through sits (BERT's pooler), if the model has one."""
    path = family_of(model).pooler
    if path is None:
        return None
    try:
        return path if get_path(model, path) is not None else None
    except AttributeError:  # the attribute is None (mean pooling): get_submodule refuses it
        return None


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


def bert_pooling(model: nn.Module) -> str:
    """'cls' ([CLS] token through the pretrained pooler) or 'mean' (masked mean of the token vectors)."""
    return getattr(model, "pooling", "cls")


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T, H) token vectors -> (B, H): their mean over the real tokens, padding left out."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    weights = attention_mask[..., None].to(hidden.dtype)  # (B, T, 1): 1 for a token, 0 for padding
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)  # as sentence-transformers


def _bert_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    layers = model.bert.encoder.layer
    named = [("embeddings", model.bert.embeddings)] + [(f"layer.{i}", layer) for i, layer in enumerate(layers)]
    if model.bert.pooler is not None:  # [CLS] pooling: the pretrained pooler is the last block
        named.append(("pooler", model.bert.pooler))
    return named


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
    if len(layers) == 0:
        return hidden
    mask = _bert_mask(model, hidden, attention_mask)
    for layer in layers:
        out = layer(hidden, mask)
        hidden = out[0] if isinstance(out, tuple) else out  # a tuple before transformers 5
    return hidden


def _bert_prefix(model: nn.Module, k: int, inputs: dict) -> dict:
    """Depth k < len(blocks): the hidden states after the embeddings and k - 1 layers, and the mask.

    The whole backbone (k = len(blocks)): with mean pooling the pooled vectors (B, H); with [CLS]
    pooling the [CLS] position after the last layer (B, 1, H), all the pooler reads. The frozen
    pooler itself runs in the suffix (one small matrix), so that a head carrying its own pooler
    (task A's, see models.using_head) reads these same cached features correctly.
    """
    if k == 0:
        return dict(inputs)
    layers, mask = model.bert.encoder.layer, inputs["attention_mask"]
    hidden = model.bert.embeddings(input_ids=inputs["input_ids"], token_type_ids=inputs.get("token_type_ids"))
    hidden = _bert_layers(model, layers[:k - 1], hidden, mask)  # (B, T, H)
    if k < len(_bert_blocks(model)):  # later blocks train: they read every token
        return {"hidden": hidden, "attention_mask": mask}
    if bert_pooling(model) == "mean":
        return {"pooled": mean_pool(hidden, mask)}
    return {"hidden": hidden[:, :1]}


def _bert_suffix(model: nn.Module, k: int, features: dict) -> torch.Tensor:
    if "pooled" in features:  # mean pooling, the whole backbone frozen: the classifier alone
        pooled = features["pooled"]
    else:
        if k == 0:
            features = _bert_prefix(model, 1, features)
            k = 1
        hidden = features["hidden"]
        if "attention_mask" in features:
            hidden = _bert_layers(model, model.bert.encoder.layer[k - 1:], hidden, features["attention_mask"])
        if bert_pooling(model) == "mean":
            pooled = mean_pool(hidden, features["attention_mask"])
        else:
            pooler = model.bert.pooler  # reads hidden[:, 0], the [CLS] token
            pooled = pooler(hidden) if pooler is not None else hidden[:, 0]
    return model.classifier(model.dropout(pooled))  # as BertForSequenceClassification.forward ends


FAMILIES: list[Family] = [
    Family("torchvision-resnet", _is_resnet, _resnet_blocks, head="fc",
           prefix=_resnet_prefix, suffix=_resnet_suffix),
    Family("bert", _is_bert, _bert_blocks, head="classifier", pooler="bert.pooler",
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
