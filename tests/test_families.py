"""BERT's blocks and head (ftlab/families.py, ftlab.models.bert): [CLS]+pooler or mean pooling.

The oracles: Hugging Face's own forward (the pooler reads hidden[:, 0]; mean pooling leaves padding
out, so padding a text changes nothing), torch's cross entropy for the loss, and bit-identical
weights for whatever a frozen depth freezes.
"""
from __future__ import annotations

import logging

import pytest
import torch
from torch.nn import functional as F

import ftlab
from ftlab.families import family_of, mean_pool
from ftlab.models import MeanPoolingBertForSequenceClassification

from conftest import make_text_task, make_tiny_bert

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

POOLINGS = ["cls", "mean"]
TEXTS = ["a football match", "shares in the bank fell sharply this morning"]  # padded to unequal lengths


def tokens(model, texts=TEXTS) -> dict:
    return dict(model.tokenizer(texts, padding=True, return_tensors="pt"))


def trainable(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


# --- blocks and the linear probe --------------------------------------------------------------


def test_cls_pooling_makes_the_pooler_the_last_block():
    model = make_tiny_bert(pooling="cls")
    assert [name for name, _ in ftlab.blocks(model)] == ["embeddings", "layer.0", "layer.1", "pooler"]
    assert dict(ftlab.blocks(model))["pooler"] is model.bert.pooler
    assert [path for path, _ in ftlab.freezing.head_modules(model)] == ["classifier"]


def test_mean_pooling_has_no_pooler_block():
    model = make_tiny_bert(pooling="mean")
    assert model.bert.pooler is None and model.pooling == "mean"
    assert [name for name, _ in ftlab.blocks(model)] == ["embeddings", "layer.0", "layer.1"]
    assert family_of(model).name == "bert"


@pytest.mark.parametrize("pooling", POOLINGS)
def test_the_probe_depth_trains_exactly_the_classifier(pooling, text_task):
    model = make_tiny_bert(pooling=pooling)
    depth = len(ftlab.blocks(model))
    ftlab.freeze(model, depth)
    assert trainable(model) == {"classifier.weight", "classifier.bias"}
    assert ftlab.frozen_depth(model) == depth
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    ftlab.fit(model, text_task, lr=1e-1, epochs=1, frozen_depth=depth, batch_size=8, progress=False)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == {"classifier.weight", "classifier.bias"}


def test_one_block_less_trains_the_pooler_and_the_classifier_as_before(text_task):
    """Depth len(blocks) - 1 with [CLS] pooling: what "the whole encoder frozen" always meant."""
    model = ftlab.freeze(make_tiny_bert(), 3)
    assert {name.rpartition(".")[0] for name in trainable(model)} == {"bert.pooler.dense", "classifier"}
    ftlab.freezing.train_mode(model)
    assert model.bert.pooler.training and not model.bert.encoder.layer[1].training
    ftlab.freeze(model, 4)
    ftlab.freezing.train_mode(model)
    assert not model.bert.pooler.training and model.classifier.training


@pytest.mark.parametrize("pooling", POOLINGS)
def test_every_depth_freezes_its_blocks_and_the_summary_says_so(pooling):
    model = make_tiny_bert(pooling=pooling)
    named = ftlab.blocks(model)
    for depth in range(len(named) + 1):
        ftlab.freeze(model, depth)
        assert ftlab.frozen_depth(model) == depth
        ftlab.grading.assert_frozen_blocks(model, depth)
        summary = ftlab.trainable_summary(model)
        assert list(summary.index) == [name for name, _ in named] + ["head (classifier)", "total"]
        assert list(summary["frozen"].iloc[:len(named)]) == [i < depth for i in range(len(named))]
        assert summary.loc["head (classifier)", "parameters"] == sum(p.numel() for p in model.classifier.parameters())


def test_a_bad_depth_names_the_pooler_among_the_blocks():
    with pytest.raises(ValueError, match=r"0\.\.4 .*4=pooler"):
        ftlab.freeze(make_tiny_bert(), 5)


# --- mean pooling ----------------------------------------------------------------------------


def test_mean_pooling_is_the_masked_mean_of_the_last_hidden_states():
    model = make_tiny_bert(pooling="mean").eval()
    batch = tokens(model)
    assert (batch["attention_mask"] == 0).any()  # the short text is padded
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
        last, mask = out.hidden_states[-1], batch["attention_mask"]
        by_hand = torch.stack([last[i, mask[i].bool()].mean(0) for i in range(len(TEXTS))])
        assert torch.allclose(mean_pool(last, mask), by_hand, atol=1e-6)
        assert torch.allclose(out.logits, model.classifier(by_hand), atol=1e-5)


def test_mean_pooling_ignores_padding():
    model = make_tiny_bert(pooling="mean").eval()
    with torch.no_grad():
        together = model(**tokens(model)).logits
        alone = torch.cat([model(**tokens(model, [text])).logits for text in TEXTS])
    assert torch.allclose(together, alone, atol=1e-5)


def test_mean_pooling_returns_the_loss_as_hugging_face_does():
    model = make_tiny_bert(pooling="mean").eval()
    labels = torch.tensor([2, 0])
    out = model(**tokens(model), labels=labels)
    assert torch.allclose(out.loss, F.cross_entropy(out.logits, labels))
    assert model(**tokens(model)).loss is None


def test_mean_pooling_loads_with_from_pretrained_and_a_new_head(tmp_path):
    source = make_tiny_bert(pooling="cls")
    source.bert.save_pretrained(tmp_path)  # an encoder checkpoint with its pooler, as MiniLM's
    loaded = MeanPoolingBertForSequenceClassification.from_pretrained(tmp_path, num_labels=5)
    assert loaded.bert.pooler is None and loaded.classifier.out_features == 5
    reference = source.bert.state_dict()
    for key, tensor in loaded.bert.state_dict().items():
        assert torch.equal(tensor, reference[key]), key  # the pretrained encoder, not a random one


def test_mean_pooling_takes_peft_lora_and_starts_as_the_base():
    model = make_tiny_bert(pooling="mean").eval()
    with torch.no_grad():
        before = model(**tokens(model)).logits
    ftlab.add_lora(model, rank=2)
    assert all("lora_" in name or name.startswith("classifier.modules_to_save") for name in trainable(model))
    with torch.no_grad():
        assert torch.allclose(model(**tokens(model)).logits, before, atol=1e-6)  # B = 0
    ftlab.freeze(model, len(ftlab.blocks(model)))  # the probe depth: the classifier copy alone
    assert trainable(model) and all(n.startswith("classifier.modules_to_save") for n in trainable(model))


def test_lora_on_cls_pooling_trains_the_pooler_until_the_probe_depth():
    model = make_tiny_bert(pooling="cls")
    ftlab.add_lora(model, rank=2)
    assert any(name.startswith("bert.pooler.modules_to_save") for name in trainable(model))
    ftlab.freeze(model, 4)
    assert trainable(model) and all(n.startswith("classifier.modules_to_save") for n in trainable(model))


def test_adapters_go_after_the_encoder_blocks_not_the_pooler():
    model = ftlab.add_adapters(make_tiny_bert(), bottleneck=2)
    with_adapter = [name for name, block in ftlab.blocks(model)
                    if any(isinstance(m, ftlab.adapters.Adapter) for m in block.modules())]
    assert with_adapter == ["embeddings", "layer.0", "layer.1"]
    assert not any(p.requires_grad for p in model.bert.pooler.parameters())


# --- ftlab.models.bert -----------------------------------------------------------------------


def test_bert_refuses_an_unknown_pooling_naming_both():
    with pytest.raises(ValueError, match=r"'cls'.*'mean'.*got 'max'"):
        ftlab.models.bert(num_classes=3, pooling="max")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny BERT encoder saved as a local folder (as MiniLM's: no classifier), quick to load."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    model = make_tiny_bert()
    model.bert.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    return folder


def hugging_face_state() -> tuple:
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as hf_logging

    return hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled(), are_progress_bars_disabled()


@pytest.fixture
def restore_hugging_face():
    from transformers.utils import logging as hf_logging

    verbosity, bars, _ = hugging_face_state()
    yield
    hf_logging.set_verbosity(verbosity)
    (hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)()


@pytest.mark.parametrize("bars", [False, True])
@pytest.mark.parametrize("pooling", POOLINGS)
def test_bert_leaves_progress_bars_and_verbosity_as_it_found_them(tiny_folder, restore_hugging_face, bars, pooling):
    from transformers.utils import logging as hf_logging

    (hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)()
    hf_logging.set_verbosity(logging.INFO)
    before = hugging_face_state()
    model = ftlab.models.bert(str(tiny_folder), num_classes=4, pooling=pooling)
    assert hugging_face_state() == before
    assert model.pooling == model.config.pooling == pooling and model.classifier.out_features == 4
    assert len(ftlab.blocks(model)) == {"cls": 4, "mean": 3}[pooling]


def test_the_offline_minilm_with_mean_pooling(restore_hugging_face):
    """The one test with the real all-MiniLM-L6-v2: 7 blocks, no pooler, progress bars left off."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    before = hugging_face_state()
    model = ftlab.models.bert(num_classes=3, pooling="mean").eval()
    assert hugging_face_state() == before
    assert [name for name, _ in ftlab.blocks(model)] == ["embeddings"] + [f"layer.{i}" for i in range(6)]
    assert model.bert.pooler is None and model.config.pooling == "mean"
    batch = tokens(model)
    with torch.no_grad():
        last = model.bert(**batch).last_hidden_state
        assert torch.allclose(model(**batch).logits, model.classifier(mean_pool(last, batch["attention_mask"])),
                              atol=1e-5)


def test_a_mean_pooling_text_run_learns():
    model = make_tiny_bert(pooling="mean")
    history = ftlab.fit(model, make_text_task(n=48), lr=3e-3, epochs=3, batch_size=8, progress=False)
    frame = history.to_frame()
    assert frame.train_loss.iloc[-1] < frame.train_loss.iloc[0]
