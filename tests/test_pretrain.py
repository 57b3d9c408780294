"""ftlab.pretrain: ftlab's own pretrained ResNet-18, built from a recorded recipe, cached with a card,
and rebuilt (never used) when the cached file does not match its card.

The tiny recipe trains for ~15 s, so this file builds it exactly twice: once from an empty cache,
and once more after the cached file is corrupted (which is also the determinism check)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings

import pytest
import torch
import torchvision

import ftlab
from ftlab import pretrain as P

TINY = "resnet18-fashion-mnist-tiny"


def sha256_of(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny_home(tmp_path_factory):
    """A private FTLAB_HOME for the whole file (the builds are shared between its tests)."""
    home = tmp_path_factory.mktemp("ftlab-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FTLAB_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def built(tiny_home):
    """Build 1: `load_pretrained` on an empty cache builds the checkpoint, silently."""
    assert P.cache_status(TINY) == "missing"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = P.load_pretrained(TINY, progress=False)
    path = P.checkpoint_path(TINY)
    # clone: safetensors maps the file into memory, and a later test overwrites that file
    state = {k: v.clone() for k, v in state.items()}
    return {"state": state, "path": path, "bytes": path.read_bytes(), "card": P.read_card(TINY),
            "warnings": [str(w.message) for w in caught if "ftlab" in str(w.message)]}


@pytest.fixture(scope="module")
def rebuilt(built):
    """Build 2: flip one byte of the cached file; `load_pretrained` must notice and rebuild."""
    path = built["path"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    status = P.cache_status(TINY)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = P.load_pretrained(TINY, progress=False)
    return {"status": status, "state": state, "bytes": path.read_bytes(), "card": P.read_card(TINY),
            "warnings": [str(w.message) for w in caught if "ftlab" in str(w.message)]}


# --- the first build -------------------------------------------------------------------------------

def test_build_writes_safetensors_and_card_in_ftlab_home(built, tiny_home):
    path = built["path"]
    assert path == tiny_home / "models" / f"{TINY}.safetensors" and path.exists()
    assert path.with_suffix(".json").exists()
    assert not list(path.parent.glob("*.tmp"))  # no temporary files left behind
    umask = os.umask(0)
    os.umask(umask)
    for written in (path, path.with_suffix(".json")):  # readable by the other accounts of a shared cache
        assert written.stat().st_mode & 0o777 == 0o666 & ~umask
    assert built["warnings"] == []  # a missing checkpoint is built, not warned about
    assert json.loads(path.with_suffix(".json").read_text()) == built["card"]


def test_card_records_recipe_seed_time_accuracy_sha_and_versions(built):
    card = built["card"]
    recipe = P.RECIPES[TINY]
    assert card["name"] == TINY
    assert card["recipe"] == recipe.record() and card["recipe"]["seed"] == recipe.seed
    assert card["recipe"]["n_train"] == 2048
    assert isinstance(card["train_seconds"], float) and card["train_seconds"] > 0
    assert card["sha256"] == hashlib.sha256(built["bytes"]).hexdigest()
    assert card["test_images"] == 10000
    assert card["versions"]["torch"] == torch.__version__
    assert card["versions"]["torchvision"] == torchvision.__version__
    assert card["versions"]["ftlab"] == ftlab.__version__ and card["versions"]["python"]
    assert 0.5 < card["test_accuracy"] <= 1.0  # far above chance (10%), even for the tiny recipe


def test_checkpoint_is_a_resnet18_state_dict_that_scores_what_its_card_says(built):
    model = ftlab.models.resnet18(weights=None)
    model.load_state_dict(built["state"])  # strict: exactly torchvision's keys and shapes
    test = ftlab.datasets.load("fashion-mnist", n_test=1000).test
    accuracy = ftlab.evaluate(model, test)["accuracy"]
    assert accuracy > 0.5
    assert abs(accuracy - built["card"]["test_accuracy"]) < 0.05  # 1,000 of the card's 10,000 images


def test_valid_cache_is_used_not_rebuilt(built, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("pretrain() was called although the cache is valid")

    monkeypatch.setattr(P, "pretrain", no_training)
    assert P.cache_status(TINY) == "ok"
    state = P.load_pretrained(TINY, progress=False)
    assert state.keys() == built["state"].keys()
    assert all(torch.equal(state[k], built["state"][k]) for k in state)


def test_cli_pretrain_when_cached_says_so_without_retraining(built, monkeypatch, capsys):
    def no_training(*args, **kwargs):
        raise AssertionError("pretrain() was called although the cache is valid")

    monkeypatch.setattr(P, "pretrain", no_training)
    path = built["path"]
    before = (path.stat().st_mtime_ns, sha256_of(path))
    assert ftlab.cli.main(["pretrain", TINY]) == 0
    out = capsys.readouterr().out
    assert "already cached" in out and str(path) in out
    assert f"{P.read_card(TINY)['test_accuracy']:.1%}" in out
    assert (path.stat().st_mtime_ns, sha256_of(path)) == before


# --- corruption and determinism (the second build) -------------------------------------------------

def test_corrupt_cache_is_detected(rebuilt):
    assert rebuilt["status"] != "ok"
    assert "sha256" in rebuilt["status"]


def test_corrupt_cache_is_rebuilt_with_a_warning(rebuilt):
    assert len(rebuilt["warnings"]) == 1
    assert TINY in rebuilt["warnings"][0] and "rebuilding" in rebuilt["warnings"][0]
    path = P.checkpoint_path(TINY)
    assert sha256_of(path) == rebuilt["card"]["sha256"]  # the file on disk is whole again
    assert P.cache_status(TINY) == "ok"


def test_same_recipe_gives_bit_identical_weights(built, rebuilt):
    assert rebuilt["bytes"] == built["bytes"]
    assert rebuilt["card"]["sha256"] == built["card"]["sha256"]
    assert all(torch.equal(rebuilt["state"][k], built["state"][k]) for k in built["state"])
    assert rebuilt["card"]["test_accuracy"] == built["card"]["test_accuracy"]


# --- cache_status without training (fake checkpoints in a private home) ----------------------------

def _fake_checkpoint(home, payload: bytes = b"not really weights") -> dict:
    path = P.checkpoint_path(TINY)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    card = {"name": TINY, "recipe": P.RECIPES[TINY].record(),
            "sha256": hashlib.sha256(payload).hexdigest(), "test_accuracy": 0.7}
    path.with_suffix(".json").write_text(json.dumps(card))
    return card


def test_cache_status_reasons(ftlab_home):
    path = P.checkpoint_path(TINY)
    assert str(path).startswith(str(ftlab_home))
    assert P.cache_status(TINY) == "missing"
    card = _fake_checkpoint(ftlab_home)
    assert P.cache_status(TINY) == "ok"

    other = dict(card, recipe=dict(card["recipe"], lr=1e-2))
    path.with_suffix(".json").write_text(json.dumps(other))
    assert "different recipe" in P.cache_status(TINY)

    path.with_suffix(".json").write_text("{not json")
    assert "card" in P.cache_status(TINY)
    path.with_suffix(".json").unlink()
    assert "card" in P.cache_status(TINY)

    _fake_checkpoint(ftlab_home)
    path.write_bytes(b"not really weights, changed")
    assert "sha256" in P.cache_status(TINY)


def test_cli_pretrain_builds_when_missing(ftlab_home, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(P, "pretrain", lambda name, **kwargs: calls.append(name) or {})
    assert ftlab.cli.main(["pretrain", TINY]) == 0
    assert calls == [TINY]
    assert "already cached" not in capsys.readouterr().out


def test_unknown_recipe_names_the_known_ones(ftlab_home):
    with pytest.raises(ValueError) as error:
        P.pretrain("resnet18-imagenet", progress=False)
    for name in P.RECIPES:
        assert name in str(error.value)
    assert not P.checkpoint_path("resnet18-imagenet").exists()


# --- recipes on a subset of the classes (the domain-shift lesson's network) ------------------------

def test_recipes_without_classes_keep_the_card_they_always_had():
    """`classes` entered the Recipe later: a recipe that does not set it must serialise exactly as
    before, or every checkpoint cached before then would be declared stale and rebuilt."""
    assert P.RECIPES["resnet18-fashion-mnist"].record() == {
        "name": "resnet18-fashion-mnist", "epochs": 1, "batch_size": 128, "lr": 0.003,
        "weight_decay": 0.0005, "n_train": None, "seed": 0}
    for recipe in P.RECIPES.values():
        expected = dataclasses.asdict(recipe)
        if recipe.classes is None:
            del expected["classes"]
        assert recipe.record() == json.loads(json.dumps(expected))


def test_six_class_recipe_holds_out_footwear_and_bags():
    recipe = P.RECIPES["resnet18-fashion-mnist-6"]
    assert recipe.num_classes == 6 and P.RECIPES["resnet18-fashion-mnist"].num_classes == 10
    held_out = set(ftlab.datasets.FASHION_CLASSES) - set(recipe.classes)
    assert held_out == {"Sandal", "Sneaker", "Bag", "Ankle boot"}
    record = recipe.record()
    assert record["classes"] == list(recipe.classes)  # as JSON stores it, so the card compares equal
    assert json.loads(json.dumps(record)) == record


def test_fashion_tensors_keep_only_the_recipe_classes_relabelled_in_order():
    classes = ("Bag", "T-shirt/top")
    images, labels = P._fashion_tensors(train=False, classes=classes)
    all_images, all_labels = P._fashion_tensors(train=False)
    assert len(labels) == 2000 and sorted(labels.unique().tolist()) == [0, 1]
    bags = all_images[all_labels == ftlab.datasets.FASHION_CLASSES.index("Bag")]
    assert torch.equal(images[labels == 0], bags)  # "Bag" is label 0: the order given, not the original
    first = P._fashion_tensors(train=False, n=5, classes=classes)
    assert torch.equal(first[0], images[:5]) and torch.equal(first[1], labels[:5])
    with pytest.raises(ValueError, match="Sock"):
        P._fashion_tensors(train=False, classes=("Sock", "Bag"))


def test_a_class_subset_recipe_builds_a_head_of_that_size(ftlab_home, monkeypatch):
    name = "resnet18-fashion-mnist-3-tiny"
    recipe = P.Recipe(name=name, n_train=256, batch_size=64, classes=("Trouser", "Bag", "Sneaker"))
    monkeypatch.setitem(P.RECIPES, name, recipe)
    card = P.pretrain(name, progress=False)
    assert card["recipe"] == recipe.record() and card["recipe"]["classes"] == ["Trouser", "Bag", "Sneaker"]
    assert card["architecture"] == "torchvision.models.resnet18(num_classes=3)"
    assert card["test_images"] == 3000 and card["test_accuracy"] > 0.5  # chance is a third
    assert P.cache_status(name) == "ok"
    state = P.load_pretrained(name, progress=False)
    assert state["fc.weight"].shape == (3, 512)


# --- the card's sha256 is checked on every load, without re-reading an unchanged file ---------------

def test_checking_the_cache_reads_an_unchanged_checkpoint_once(ftlab_home, monkeypatch):
    import builtins

    _fake_checkpoint(ftlab_home, b"pretend weights" * 1000)
    path = P.checkpoint_path(TINY)
    os.utime(path, ns=(1_600_000_000 * 10**9,) * 2)  # settled: older than paths.RACY_SECONDS
    reads, real_open = [], builtins.open

    def counting_open(file, *args, **kwargs):
        if str(file) == str(path):
            reads.append(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    assert [P.cache_status(TINY) for _ in range(3)] == ["ok"] * 3
    assert len(reads) == 1  # one read for three checks: the 45 MB file is not re-read on every load

    with real_open(path, "r+b") as f:  # one byte changed in place: same size, same name
        f.write(b"P")
    assert "sha256" in P.cache_status(TINY)  # rehashed and refused
    assert len(reads) == 2


def test_old_cards_in_the_cache_layout_still_load(ftlab_home):
    """A checkpoint and card written before ftlab.paths existed (same folder, same fields) are used."""
    from safetensors.torch import save

    state = {"w": torch.arange(6.0).reshape(2, 3)}
    data = save(state)
    folder = ftlab_home / "models"
    folder.mkdir(parents=True)
    (folder / f"{TINY}.safetensors").write_bytes(data)
    (folder / f"{TINY}.json").write_text(json.dumps(
        {"name": TINY, "recipe": P.RECIPES[TINY].record(), "sha256": hashlib.sha256(data).hexdigest()}))
    assert P.cache_status(TINY) == "ok"
    assert torch.equal(P.load_pretrained(TINY, progress=False)["w"], state["w"])
