"""ftlab's own pretrained ResNet-18: trained on Fashion-MNIST with a recorded recipe, then cached.

Two recipes matter for lessons: "resnet18-fashion-mnist" saw all ten classes; "resnet18-fashion-mnist-6"
saw only the six garment classes, so that sandals, sneakers, bags and ankle boots stay new to it (a
target task similar to, but not part of, what it was pretrained on: the domain-shift lesson).

No ImageNet ResNet weights can be had offline, so ftlab makes its own "pretrained network" once per
machine (about 7 minutes on a 2-core CPU) and keeps it in $FTLAB_HOME/models (default
~/.cache/ftlab/models) as safetensors beside a JSON card (recipe, seed, time, test accuracy, sha256,
library versions). A file whose sha256 does not match its card is rebuilt, never used.

    ftlab pretrain resnet18-fashion-mnist          # from the command line
    state = load_pretrained("resnet18-fashion-mnist")

ftlab.weights names these checkpoints for `ftlab.models.resnet18(weights=...)` ("fashion-mnist" is the
recipe "resnet18-fashion-mnist"); this module builds them and does not import ftlab.models.
"""
from __future__ import annotations

import dataclasses
import json
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .paths import home, sha256_bytes, sha256_file, write_atomic
from .weights import FASHION_MEAN, FASHION_STD, get_weights

__all__ = ["Recipe", "RECIPES", "pretrain", "load_pretrained", "checkpoint_path", "read_card"]


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the checkpoint. Change a field and you get a different model."""

    name: str = "resnet18-fashion-mnist"
    epochs: int = 1
    batch_size: int = 128
    lr: float = 3e-3            # peak learning rate of the one-cycle schedule (AdamW)
    weight_decay: float = 5e-4
    n_train: int | None = None  # None: all 60,000 training images; a number: the first n (tiny recipes)
    seed: int = 0
    classes: tuple[str, ...] | None = None  # None: all ten classes; else only these, labelled 0..k-1 in this order

    @property
    def num_classes(self) -> int:
        return 10 if self.classes is None else len(self.classes)

    def record(self) -> dict:
        """The recipe as its card stores it (JSON values). `classes` appears only when set, so the
        recipes written before that field existed keep their cards, and their cached checkpoints."""
        record = json.loads(json.dumps(dataclasses.asdict(self)))
        if self.classes is None:
            del record["classes"]
        return record


GARMENTS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Shirt")  # Fashion-MNIST less footwear and bags

RECIPES = {
    "resnet18-fashion-mnist": Recipe(),
    # for unit tests: the same code path in ~15 s, far weaker (about 70% test accuracy)
    "resnet18-fashion-mnist-tiny": Recipe(name="resnet18-fashion-mnist-tiny", n_train=2048, batch_size=64),
    # the six garment classes only (36,000 images): footwear and bags are held out as a new, similar task
    "resnet18-fashion-mnist-6": Recipe(name="resnet18-fashion-mnist-6", classes=GARMENTS),
}
# measured on the project's 2-core CPU; only shown before training starts
EXPECTED_SECONDS = {"resnet18-fashion-mnist": 100, "resnet18-fashion-mnist-tiny": 15, "resnet18-fashion-mnist-6": 60}


def checkpoint_path(name: str) -> Path:
    return home() / "models" / f"{name}.safetensors"


def read_card(name: str) -> dict | None:
    path = checkpoint_path(name).with_suffix(".json")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"no pretraining recipe named {name!r}; known: {', '.join(RECIPES)}")
    return RECIPES[name]


def _versions() -> dict:
    import torchvision

    from . import __version__

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "ftlab": __version__}


def _fashion_tensors(train: bool, n: int | None = None, classes: tuple[str, ...] | None = None):
    """Images (uint8) and labels of the official split; with `classes`, only those, relabelled 0..k-1
    in that order, then the first n of them."""
    import numpy as np

    from .datasets import FASHION_CLASSES, _fashion_arrays

    arrays = _fashion_arrays()
    prefix = "train" if train else "t10k"
    images, labels = arrays[f"{prefix}-images-idx3-ubyte"], arrays[f"{prefix}-labels-idx1-ubyte"].astype("int64")
    if classes is not None:
        unknown = [c for c in classes if c not in FASHION_CLASSES]
        if unknown:
            raise ValueError(f"unknown Fashion-MNIST classes {unknown}; they are {list(FASHION_CLASSES)}")
        wanted = [FASHION_CLASSES.index(c) for c in classes]
        relabel = np.full(len(FASHION_CLASSES), -1)
        relabel[wanted] = np.arange(len(wanted))
        keep = np.isin(labels, wanted)
        images, labels = images[keep], relabel[labels[keep]]
    return torch.from_numpy(images[:n].copy()), torch.from_numpy(labels[:n].copy())


def _untrained_resnet18(num_classes: int | None) -> nn.Module:
    """What ftlab.models.resnet18(weights=None, num_classes=num_classes) gives, built here so that this
    module does not import ftlab.models: a 10-way torchvision ResNet-18, its head then replaced when
    num_classes is given. Same random draws in the same order, so a recipe still gives the same bytes."""
    import torchvision

    model = torchvision.models.resnet18(num_classes=10)
    if num_classes is not None:
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    model.preprocess = get_weights("fashion-mnist").preprocess()  # grey 28x28 -> 3 channels, normalised
    return model


def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(labels), batch_size):
            x = model.preprocess(images[start:start + batch_size].float() / 255)
            correct += (model(x).argmax(1) == labels[start:start + batch_size]).sum().item()
    return correct / len(labels)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def pretrain(name: str = "resnet18-fashion-mnist", *, progress: bool = True) -> dict:
    """Train the recipe's model from scratch, cache it with its card, and return the card."""
    from tqdm.auto import tqdm

    recipe = _recipe(name)
    torch.manual_seed(recipe.seed)
    # torchvision ResNet-18 with Fashion-MNIST preprocessing; a head of k outputs when the recipe keeps k classes
    model = _untrained_resnet18(None if recipe.classes is None else recipe.num_classes)
    images, labels = _fashion_tensors(train=True, n=recipe.n_train, classes=recipe.classes)
    steps_per_epoch = -(-len(labels) // recipe.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr,
                                                   total_steps=recipe.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(recipe.seed)
    print(f"ftlab: pretraining ResNet-18 on {len(labels):,} Fashion-MNIST images "
          f"(about {_duration(EXPECTED_SECONDS.get(name, 600))} on a 2-core CPU, once; cached in {checkpoint_path(name).parent})",
          file=sys.stderr)
    start = time.perf_counter()
    bar = tqdm(total=recipe.epochs * steps_per_epoch, desc=f"pretrain {name}", disable=not progress)
    for _ in range(recipe.epochs):
        model.train()
        order = torch.randperm(len(labels), generator=generator)
        for step in range(steps_per_epoch):
            idx = order[step * recipe.batch_size:(step + 1) * recipe.batch_size]
            loss = F.cross_entropy(model(model.preprocess(images[idx].float() / 255)), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    train_seconds = time.perf_counter() - start
    test_images, test_labels = _fashion_tensors(train=False, classes=recipe.classes)
    accuracy = _accuracy(model, test_images, test_labels)

    from safetensors.torch import save

    path = checkpoint_path(name)
    # bytes made here and written by write_atomic: a crash never leaves a half-written checkpoint, and
    # the file gets the umask (safetensors' save_file creates 0600 files, unreadable in a shared cache)
    data = save({k: v.contiguous() for k, v in model.state_dict().items()})
    card = {
        "name": name, "architecture": f"torchvision.models.resnet18(num_classes={recipe.num_classes})",
        "data": "Fashion-MNIST training set (official 60k, or the first n_train)" + (
            "" if recipe.classes is None else f", only the classes {', '.join(recipe.classes)} (labels 0..{recipe.num_classes - 1})"),
        "input": "grey 28x28 in [0,1], repeated to 3 channels, normalised with "
                 f"mean {FASHION_MEAN} / std {FASHION_STD}",
        "recipe": recipe.record(), "schedule": "AdamW + OneCycleLR, no augmentation",
        "train_seconds": round(train_seconds, 1), "test_accuracy": round(accuracy, 4),
        "test_images": len(test_labels), "sha256": sha256_bytes(data), "versions": _versions(),
        "threads": torch.get_num_threads(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_atomic(path, data)
    write_atomic(path.with_suffix(".json"), json.dumps(card, indent=2).encode())
    print(f"ftlab: {name}: test accuracy {accuracy:.1%} after {train_seconds:.0f} s", file=sys.stderr)
    return card


def cache_status(name: str) -> str:
    """'ok', 'missing' or a reason why the cached checkpoint cannot be trusted.

    The file's hash is remembered while it is unchanged (paths.sha256_file), so checking it against its
    card on every load costs a `stat`, not a 45 MB read; a file changed in any way is hashed again."""
    path, card = checkpoint_path(name), read_card(name)
    if not path.exists():
        return "missing"
    if card is None or "sha256" not in card:
        return "its card is missing or unreadable"
    if card.get("recipe") != _recipe(name).record():
        return "it was made with a different recipe"
    if sha256_file(path) != card["sha256"]:
        return "its sha256 does not match its card (corrupt or modified)"
    return "ok"


def load_pretrained(name: str = "resnet18-fashion-mnist", *, progress: bool = True) -> dict:
    """The cached state dict, (re)built first when missing or corrupt."""
    from safetensors.torch import load_file

    status = cache_status(name)
    if status != "ok":
        if status != "missing":
            warnings.warn(f"ftlab: cached {name} is not usable ({status}); rebuilding it", stacklevel=2)
        pretrain(name, progress=progress)
    return load_file(str(checkpoint_path(name)))
