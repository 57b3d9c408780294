"""Tiny models and tasks shared by the tests: real architectures (torchvision ResNet, Hugging Face
BERT) at toy sizes, so every code path runs in well under a second."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")


def make_tiny_resnet(num_classes: int = 4) -> torch.nn.Module:
    """A torchvision ResNet (one BasicBlock per stage) with ftlab's preprocessing attached."""
    from torchvision.models.resnet import BasicBlock, ResNet

    from ftlab.models import ImagePreprocess

    torch.manual_seed(0)
    model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=num_classes)
    model.preprocess = ImagePreprocess(16, (0.5,) * 3, (0.25,) * 3)
    model.weights_name = "tiny-test"
    return model


def make_tiny_bert(num_classes: int = 3, pooling: str = "cls") -> torch.nn.Module:
    """A 2-layer, 32-wide BERT classifier with the real MiniLM tokenizer (offline).

    pooling: "cls" (Hugging Face's BertForSequenceClassification, pooler included) or "mean"
    (ftlab's MeanPoolingBertForSequenceClassification, no pooler), as ftlab.models.bert(pooling=...).
    """
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from ftlab.models import MeanPoolingBertForSequenceClassification, minilm_dir

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=num_classes)
    kind = {"cls": BertForSequenceClassification, "mean": MeanPoolingBertForSequenceClassification}[pooling]
    model = kind(config)
    model.pooling = pooling
    model.tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
    model.max_length = 32
    model.weights_name = "tiny-test"
    return model


def make_image_task(n: int = 64, num_classes: int = 4, size: int = 8, seed: int = 0):
    """A learnable toy task: each class is a bright square in its own corner, plus noise."""
    from ftlab.datasets import ImageDataset, Task

    def split(count: int, offset: int) -> ImageDataset:
        g = torch.Generator().manual_seed(seed + offset)
        labels = torch.arange(count) % num_classes
        images = 0.2 * torch.rand(count, 1, size, size, generator=g)
        half = size // 2
        for i, c in enumerate(labels.tolist()):
            r, q = divmod(c % 4, 2)
            images[i, 0, r * half:(r + 1) * half, q * half:(q + 1) * half] += 0.7
        return ImageDataset(images.clamp(0, 1), labels)

    classes = tuple(f"corner{i}" for i in range(num_classes))
    return Task("toy-images", split(n, 0), split(n // 2, 1), split(n // 2, 2), classes, "image",
                {"name": "toy-images", "n": n, "seed": seed})


def make_text_task(n: int = 48, seed: int = 0):
    from ftlab.datasets import Task, TextDataset

    words = [["goal", "match", "team", "score"], ["market", "shares", "profit", "bank"],
             ["film", "actor", "music", "award"]]

    def split(count: int, offset: int) -> TextDataset:
        g = torch.Generator().manual_seed(seed + offset)
        labels = torch.arange(count) % 3
        texts = [" ".join(words[c][int(j)] for j in torch.randint(0, 4, (6,), generator=g)) for c in labels.tolist()]
        return TextDataset(texts, labels)

    return Task("toy-text", split(n, 0), split(n // 2, 1), split(n // 2, 2), ("sport", "business", "arts"),
                "text", {"name": "toy-text", "n": n, "seed": seed})


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: handing work between threads costs more than it saves (5x on a busy 2-core box).
    Use it in a module with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def tiny_resnet():
    return make_tiny_resnet()


@pytest.fixture
def tiny_bert():
    return make_tiny_bert()


@pytest.fixture
def image_task():
    return make_image_task()


@pytest.fixture
def text_task():
    return make_text_task()


@pytest.fixture
def ftlab_home(tmp_path, monkeypatch):
    """A private FTLAB_HOME, so tests never touch the real cache."""
    monkeypatch.setenv("FTLAB_HOME", str(tmp_path / "ftlab-home"))
    return tmp_path / "ftlab-home"
