"""ftlab.datasets: deterministic, class-balanced splits of the three offline datasets, and the
errors a learner sees when the data is missing or corrupt."""
from __future__ import annotations

import functools
import gzip
import shutil
from collections import Counter

import numpy as np
import pytest
import torch

import ftlab.datasets as D
from ftlab.datasets import DataUnavailable, load

DEBIAN_DIR = D.DEBIAN_FASHION_DIR


def labels_of(dataset) -> list[int]:
    return [int(y) for y in dataset.labels]


def same_images(a, b) -> bool:
    return a.images.shape == b.images.shape and torch.equal(a.images, b.images)


@pytest.fixture
def fresh_fashion_cache(monkeypatch):
    """A private, empty cache for `_fashion_arrays`: the module's real cache (and every other test
    that relies on it) is left untouched and comes back when the test ends."""
    fresh = functools.lru_cache(maxsize=1)(D._fashion_arrays.__wrapped__)
    monkeypatch.setattr(D, "_fashion_arrays", fresh)
    return fresh


# --- seeds and splits ------------------------------------------------------------------------------

def test_same_seed_gives_the_same_split():
    a, b = load("digits", n_train=100, seed=3), load("digits", n_train=100, seed=3)
    assert same_images(a.train, b.train) and labels_of(a.train) == labels_of(b.train)
    assert same_images(a.val, b.val) and labels_of(a.val) == labels_of(b.val)
    assert same_images(a.test, b.test)


def test_different_seed_gives_a_different_split():
    a, b = load("digits", n_train=100, seed=0), load("digits", n_train=100, seed=1)
    assert not same_images(a.train, b.train)
    assert not same_images(a.val, b.val)
    # full splits (no n_train) move too
    full0, full1 = load("digits", seed=0), load("digits", seed=1)
    assert len(full0.train) == len(full1.train)
    assert not same_images(full0.train, full1.train)


@pytest.mark.parametrize("name", ["digits", "fashion-mnist"])
def test_test_split_does_not_move_with_seed(name):
    a, b = load(name, n_train=100, seed=0), load(name, n_train=100, seed=7)
    assert same_images(a.test, b.test) and labels_of(a.test) == labels_of(b.test)
    assert not same_images(a.val, b.val)  # ... while the seeded split did move


def test_text_test_split_does_not_move_with_seed():
    a, b = load("bbc-news", seed=0), load("bbc-news", seed=5)
    assert a.test.texts == b.test.texts and labels_of(a.test) == labels_of(b.test)
    assert a.val.texts != b.val.texts


def _image_set(dataset) -> set[bytes]:
    return {x.numpy().tobytes() for x in dataset.images}


def test_train_val_test_do_not_overlap():
    task = load("digits", seed=0)  # its 1,797 images are all distinct, so bytes identify them
    train, val, test = (_image_set(s) for s in (task.train, task.val, task.test))
    assert not train & val and not train & test and not val & test
    assert len(task.train) + len(task.val) + len(task.test) == 1797


@pytest.mark.parametrize("n_train", [10, 37, 53, 100, 980])
def test_n_train_is_exact_and_class_balanced(n_train):
    task = load("digits", n_train=n_train, seed=2)
    assert len(task.train) == n_train
    counts = Counter(labels_of(task.train))
    assert set(counts) == set(range(10))
    assert max(counts.values()) - min(counts.values()) <= 1


def test_n_val_and_n_test_are_exact_and_balanced():
    task = load("fashion-mnist", n_train=30, n_val=20, n_test=40, seed=0)
    for split, n in ((task.train, 30), (task.val, 20), (task.test, 40)):
        counts = Counter(labels_of(split))
        assert len(split) == n and max(counts.values()) - min(counts.values()) <= 1


# --- choosing classes ------------------------------------------------------------------------------

def _original_labels(name: str) -> dict[bytes, int]:
    """image bytes (as stored, uint8) -> original label, over the whole dataset."""
    if name == "digits":
        images, targets = D._digits_arrays()
        pairs = zip(images, targets)
    else:
        a = D._fashion_arrays()
        pairs = zip(np.concatenate([a["train-images-idx3-ubyte"], a["t10k-images-idx3-ubyte"]]),
                    np.concatenate([a["train-labels-idx1-ubyte"], a["t10k-labels-idx1-ubyte"]]))
    return {np.asarray(x, dtype=np.uint8).reshape(-1).tobytes(): int(y) for x, y in pairs}


def _check_images_come_from(dataset, original: dict[bytes, int], wanted: list[int], scale: float):
    for image, label in zip(dataset.images, dataset.labels):
        raw = torch.round(image * scale).to(torch.uint8).numpy().reshape(-1).tobytes()
        assert original[raw] == wanted[int(label)]


def test_classes_by_number_restrict_and_relabel_in_given_order():
    task = load("digits", classes=[7, 2, 4], seed=0)
    assert task.classes == ("7", "2", "4") and task.num_classes == 3
    original = _original_labels("digits")
    for split in (task.train, task.val, task.test):
        assert set(labels_of(split)) == {0, 1, 2}
        _check_images_come_from(split, original, [7, 2, 4], 16.0)


def test_classes_by_name_restrict_and_relabel_in_given_order():
    task = load("fashion-mnist", classes=["Bag", "Trouser"], n_train=40, n_test=60, seed=0)
    assert task.classes == ("Bag", "Trouser")
    original = _original_labels("fashion-mnist")
    bag, trouser = D.FASHION_CLASSES.index("Bag"), D.FASHION_CLASSES.index("Trouser")
    for split in (task.train, task.test):
        assert Counter(labels_of(split)) == {0: len(split) // 2, 1: len(split) // 2}
        _check_images_come_from(split, original, [bag, trouser], 255.0)


def test_class_names_and_numbers_mean_the_same_thing():
    by_name = load("digits", classes=["3", "1"], n_train=20, seed=4)
    by_number = load("digits", classes=[3, 1], n_train=20, seed=4)
    assert by_name.classes == by_number.classes == ("3", "1")
    assert same_images(by_name.train, by_number.train)
    assert labels_of(by_name.train) == labels_of(by_number.train)


def test_text_classes_restrict_and_relabel():
    full = load("bbc-news")
    task = load("bbc-news", classes=["tech", "business"])
    assert task.classes == ("tech", "business")
    tech, business = full.classes.index("tech"), full.classes.index("business")
    by_text = {t: y for t, y in zip(full.test.texts, labels_of(full.test))}
    assert len(task.test) == sum(1 for y in labels_of(full.test) if y in (tech, business))
    for text, y in zip(task.test.texts, labels_of(task.test)):
        assert by_text[text] == (tech, business)[y]


# --- mistakes a learner makes ----------------------------------------------------------------------

def test_unknown_dataset_names_the_valid_ones():
    with pytest.raises(ValueError) as error:
        load("mnist")
    for name in D.NAMES:
        assert name in str(error.value)


@pytest.mark.parametrize("classes", [["Cat", "Bag"], [10, 1], [-1, 2]])
def test_unknown_class_names_the_valid_ones(classes):
    with pytest.raises(ValueError) as error:
        load("fashion-mnist", classes=classes)
    assert "Ankle boot" in str(error.value) and "T-shirt/top" in str(error.value)


@pytest.mark.parametrize("classes", [["3"], ["3", 3]])
def test_classes_must_be_two_distinct(classes):
    with pytest.raises(ValueError, match="at least two distinct"):
        load("digits", classes=classes)


@pytest.mark.parametrize("n_train", [0, 9, 1009, 10**6])
def test_n_train_out_of_range_names_the_valid_range(n_train):
    full = len(load("digits").train)
    assert full == 1008
    with pytest.raises(ValueError) as error:
        load("digits", n_train=n_train)
    assert f"n_train={n_train}" in str(error.value)
    assert f"10..{full}" in str(error.value)


# --- the three datasets ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, shape, num_classes", [("fashion-mnist", (1, 28, 28), 10),
                                                      ("digits", (1, 8, 8), 10)])
def test_image_datasets(name, shape, num_classes):
    task = load(name, n_train=50, n_val=20, n_test=30)
    assert task.modality == "image" and task.num_classes == num_classes
    assert len(task.classes) == len(set(task.classes)) == num_classes
    for split in (task.train, task.val, task.test):
        image, label = split[0]
        assert split.images.dtype == torch.float32
        assert tuple(split.images.shape[1:]) == shape and tuple(image.shape) == shape
        assert split.images.min() >= 0 and split.images.max() <= 1
        assert split.images.max() == 1  # the scale really reaches white: 255 or 16 -> 1.0
        assert isinstance(label, int) and 0 <= label < num_classes


def test_fashion_mnist_sizes():
    task = load("fashion-mnist")
    assert (len(task.train), len(task.val), len(task.test)) == (55000, 5000, 10000)
    assert task.classes == D.FASHION_CLASSES


def test_bbc_news_is_text_with_sorted_classes():
    task = load("bbc-news")
    assert task.modality == "text" and task.num_classes == 5
    assert list(task.classes) == sorted(task.classes)
    assert {"business", "entertainment", "politics", "tech"} <= set(task.classes)
    assert len(task.train) + len(task.val) + len(task.test) == 2225
    text, label = task.train[0]
    assert isinstance(text, str) and len(text) > 100 and 0 <= label < 5
    assert all(isinstance(t, str) for t in task.test.texts)


# --- missing or corrupt data -----------------------------------------------------------------------

def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, monkeypatch, fresh_fashion_cache):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("no network in this test")

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("FTLAB_DATA", str(empty))
    monkeypatch.setenv("FTLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(D, "DEBIAN_FASHION_DIR", tmp_path / "no-debian-package")
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    assert D.fashion_mnist_location() is None
    with pytest.raises(DataUnavailable) as error:
        load("fashion-mnist")
    message = str(error.value)
    assert "apt-get install -y dataset-fashion-mnist" in message
    assert "FTLAB_DATA" in message
    assert "no network in this test" in message


def test_corrupt_fashion_mnist_is_refused(tmp_path, monkeypatch, fresh_fashion_cache):
    data = tmp_path / "fashion"
    data.mkdir()
    for gz in DEBIAN_DIR.glob("*.gz"):
        shutil.copy(gz, data / gz.name)
    # an uncompressed file is read before its .gz: corrupt one byte of it
    raw = bytearray(gzip.decompress((data / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    raw[100] ^= 0xFF
    (data / "t10k-labels-idx1-ubyte").write_bytes(bytes(raw))
    monkeypatch.setenv("FTLAB_DATA", str(data))
    # FTLAB_DATA comes before the Debian folder; hide that folder anyway, so it can never win
    monkeypatch.setattr(D, "DEBIAN_FASHION_DIR", tmp_path / "no-debian-package")
    assert D._fashion_candidates()[0] == data
    assert D.fashion_mnist_location() == data
    with pytest.raises(DataUnavailable) as error:
        load("fashion-mnist")
    message = str(error.value)
    assert "checksum mismatch" in message and "t10k-labels-idx1-ubyte" in message
    assert D.FASHION_FILES["t10k-labels-idx1-ubyte"] in message


def test_fashion_mnist_loads_from_ftlab_data_copy(tmp_path, monkeypatch, fresh_fashion_cache):
    """The intact copy loads, and gives the same data as the Debian folder (the oracle for the test
    above: only the flipped byte made it fail)."""
    reference = load("fashion-mnist", n_test=50).test  # from the usual location, before patching
    data = tmp_path / "fashion"
    data.mkdir()
    for gz in DEBIAN_DIR.glob("*.gz"):
        shutil.copy(gz, data / gz.name)
    monkeypatch.setenv("FTLAB_DATA", str(data))
    monkeypatch.setattr(D, "DEBIAN_FASHION_DIR", tmp_path / "no-debian-package")
    fresh_fashion_cache.cache_clear()
    assert same_images(load("fashion-mnist", n_test=50).test, reference)
    assert D.fashion_mnist_location() == data


def test_checksums_match_the_installed_data():
    assert D.digits_checksum() == D.DIGITS_SHA256
    assert D._bbc_texts()[3] == D.BBC_SHA256
