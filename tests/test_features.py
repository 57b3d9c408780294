"""Encoding and the frozen-prefix cache (ftlab/features.py).

The oracle: a cached run equals an uncached one, and cached features equal the frozen blocks run
directly (torchvision's layers for ResNet, Hugging Face's hidden_states for BERT).
"""
from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import ftlab
from ftlab.families import FAMILIES, Family, register_family
from ftlab.features import _fingerprint, cache_info, clear_cache, encode, prefix_features
from ftlab.models import ImagePreprocess

from conftest import make_image_task, make_text_task, make_tiny_bert, make_tiny_resnet

CPU = torch.device("cpu")
METRICS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr"]  # all but the wall time


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(autouse=True)
def empty_cache():
    clear_cache()
    yield
    clear_cache()


# --- encode ----------------------------------------------------------------------------------


def test_encode_images_keeps_the_tensor(tiny_resnet, image_task):
    data = encode(tiny_resnet, image_task.train)
    assert list(data.inputs) == ["pixels"] and data.inputs["pixels"] is image_task.train.images
    assert torch.equal(data.labels, image_task.train.labels) and len(data) == len(image_task.train)


def test_encode_texts_uses_the_models_tokenizer(tiny_bert, text_task):
    data = encode(tiny_bert, text_task.train)
    expected = tiny_bert.tokenizer(text_task.train.texts, padding="longest", return_tensors="pt")
    assert torch.equal(data.inputs["input_ids"], expected["input_ids"])
    assert torch.equal(data.inputs["attention_mask"], expected["attention_mask"])
    assert torch.equal(data.labels, text_task.train.labels)


def test_encode_any_xy_dataset_and_refuse_text_without_tokenizer(tiny_resnet, text_task):
    images = torch.rand(5, 1, 8, 8)
    data = encode(tiny_resnet, TensorDataset(images, torch.arange(5)))
    assert torch.equal(data.inputs["pixels"], images) and data.labels.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="no tokenizer"):
        encode(tiny_resnet, text_task.train)


# --- cached runs equal uncached runs ---------------------------------------------------------


def cached_and_uncached(initial: nn.Module, task, depth: int, **options):
    runs = {}
    for cache in (True, False):
        runs[cache] = ftlab.fit(copy.deepcopy(initial), task, frozen_depth=depth, cache_frozen=cache,
                                progress=False, **options)
    return runs[True], runs[False]


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_cached_resnet_run_equals_uncached(depth):
    cached, uncached = cached_and_uncached(make_tiny_resnet(), make_image_task(n=16), depth,
                                           lr=1e-3, epochs=2, batch_size=8, seed=1)
    assert cached.summary["cached_prefix"] and not uncached.summary["cached_prefix"]
    pd.testing.assert_frame_equal(cached.to_frame()[METRICS], uncached.to_frame()[METRICS],
                                  check_exact=False, rtol=1e-4, atol=1e-4)


# [CLS] pooling: 4 blocks (embeddings, both layers, pooler); mean pooling: 3 (no pooler).
# The last depth of each is the linear probe: the classifier alone trains on cached features.
@pytest.mark.parametrize("pooling, depth", [("cls", 1), ("cls", 2), ("cls", 3), ("cls", 4),
                                            ("mean", 1), ("mean", 2), ("mean", 3)])
def test_cached_bert_run_equals_uncached(pooling, depth):
    cached, uncached = cached_and_uncached(make_tiny_bert(pooling=pooling), make_text_task(n=24), depth,
                                           lr=1e-3, epochs=2, batch_size=8, seed=1)
    assert cached.summary["cached_prefix"] and not uncached.summary["cached_prefix"]
    pd.testing.assert_frame_equal(cached.to_frame()[METRICS], uncached.to_frame()[METRICS],
                                  check_exact=False, rtol=1e-4, atol=1e-4)


def test_nothing_frozen_means_nothing_cached():
    history = ftlab.fit(make_tiny_resnet(), make_image_task(n=8), lr=1e-3, epochs=1, frozen_depth=0,
                        cache_frozen=True, progress=False)
    assert not history.summary["cached_prefix"] and cache_info()["entries"] == 0


def test_a_cached_run_fills_the_cache_once_per_split():
    history = ftlab.fit(make_tiny_resnet(), make_image_task(n=8), lr=1e-3, epochs=1, frozen_depth=5,
                        progress=False)
    assert history.summary["cached_prefix"]
    assert cache_info()["entries"] == 2  # train and val
    assert cache_info()["megabytes"] > 0


# --- the features themselves -----------------------------------------------------------------


def test_resnet_prefix_features_are_the_frozen_blocks_output(tiny_resnet, image_task):
    data = encode(tiny_resnet, image_task.train)
    features = prefix_features(tiny_resnet, 2, data, device=CPU)
    tiny_resnet.eval()
    with torch.no_grad():
        x = tiny_resnet.preprocess(image_task.train.images)
        expected = tiny_resnet.layer1(tiny_resnet.maxpool(tiny_resnet.relu(tiny_resnet.bn1(tiny_resnet.conv1(x)))))
    assert torch.allclose(features.inputs["hidden"], expected, atol=1e-6)
    assert torch.equal(features.labels, data.labels)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_bert_prefix_features_are_huggingface_hidden_states(tiny_bert, text_task, depth):
    data = encode(tiny_bert, text_task.train)
    features = prefix_features(tiny_bert, depth, data, device=CPU)
    tiny_bert.eval()
    with torch.no_grad():
        hidden_states = tiny_bert(**data.inputs, output_hidden_states=True).hidden_states
    # depth k = the embeddings and k-1 encoder layers = hidden_states[k-1]
    assert torch.allclose(features.inputs["hidden"], hidden_states[depth - 1], atol=1e-5)
    assert torch.equal(features.inputs["attention_mask"], data.inputs["attention_mask"])


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_bert_suffix_of_prefix_is_the_model_at_every_depth(pooling, text_task):
    model = make_tiny_bert(pooling=pooling).eval()
    batch = encode(model, text_task.train).inputs
    family = ftlab.families.family_of(model)
    with torch.no_grad():
        expected = model(**batch).logits
        for k in range(len(ftlab.blocks(model)) + 1):
            logits = family.suffix(model, k, family.prefix(model, k, batch))
            assert torch.allclose(logits, expected, atol=1e-5), k


def test_bert_probe_features_are_the_cls_vectors_the_pooler_reads(tiny_bert, text_task):
    """Depth 4 (the pooler frozen too) caches the [CLS] position only; the frozen pooler runs after."""
    data = encode(tiny_bert, text_task.train)
    features = prefix_features(tiny_bert, 4, data, device=CPU)
    tiny_bert.eval()
    with torch.no_grad():
        last = tiny_bert(**data.inputs, output_hidden_states=True).hidden_states[-1]
    assert list(features.inputs) == ["hidden"]
    assert torch.allclose(features.inputs["hidden"], last[:, :1], atol=1e-5)  # (N, 1, 32)


def test_mean_pooling_probe_features_are_the_pooled_vectors(text_task):
    model = make_tiny_bert(pooling="mean")
    data = encode(model, text_task.train)
    features = prefix_features(model, 3, data, device=CPU)
    model.eval()
    with torch.no_grad():
        last = model(**data.inputs, output_hidden_states=True).hidden_states[-1]
    mask = data.inputs["attention_mask"]
    by_hand = torch.stack([last[i, mask[i].bool()].mean(0) for i in range(len(data))])
    assert list(features.inputs) == ["pooled"]
    assert torch.allclose(features.inputs["pooled"], by_hand, atol=1e-5)  # (N, 32)


def test_cached_probe_measures_the_source_through_its_own_pooler():
    """Task A's head carries A's pooler; at the probe depth the cache must not bake the current one in."""
    task_a, task_b = make_text_task(n=24, seed=3), make_text_task(n=24, seed=4)
    model = make_tiny_bert()
    ftlab.fit(model, task_a, lr=1e-2, epochs=2, frozen_depth=0, batch_size=8, progress=False)
    head_a = ftlab.models.replace_head(model, 3)
    with torch.no_grad():
        model.bert.pooler.dense.weight.mul_(-1.0)  # the current pooler is no longer A's (as after task B)
    runs = {}
    for cache in (True, False):
        runs[cache] = ftlab.fit(copy.deepcopy(model), task_b, lr=1e-2, epochs=2, frozen_depth=4, batch_size=8,
                                cache_frozen=cache, source=ftlab.Source(task_a, copy.deepcopy(head_a)),
                                progress=False)
    assert runs[True].summary["cached_prefix"]
    columns = METRICS + ["source_loss", "source_acc"]
    pd.testing.assert_frame_equal(runs[True].to_frame()[columns], runs[False].to_frame()[columns],
                                  check_exact=False, rtol=1e-4, atol=1e-4)
    through_a = ftlab.evaluate(model, task_a.test, head=head_a, device="cpu")
    assert runs[True].to_frame().source_loss.iloc[0] == pytest.approx(through_a["loss"], rel=1e-5)
    through_current = ftlab.evaluate(model, task_a.test, head=head_a.classifier, device="cpu")
    assert through_current["loss"] != pytest.approx(through_a["loss"], rel=1e-3)  # the poolers do differ


def test_prefix_features_eval_mode_and_no_gradient(tiny_resnet, image_task):
    tiny_resnet.train()
    before = tiny_resnet.bn1.running_mean.clone()
    features = prefix_features(tiny_resnet, 1, encode(tiny_resnet, image_task.train), device=CPU)
    assert torch.equal(tiny_resnet.bn1.running_mean, before)  # BatchNorm ran in eval mode
    assert tiny_resnet.training  # and the mode was put back
    assert not features.inputs["hidden"].requires_grad


# --- the cache never serves stale features ----------------------------------------------------


def test_same_request_is_served_from_the_cache(tiny_resnet, image_task):
    data = encode(tiny_resnet, image_task.train)
    first = prefix_features(tiny_resnet, 1, data, device=CPU)
    assert prefix_features(tiny_resnet, 1, data, device=CPU) is first
    assert cache_info()["entries"] == 1


def test_changed_frozen_weights_give_new_features(tiny_resnet, image_task):
    data = encode(tiny_resnet, image_task.train)
    first = prefix_features(tiny_resnet, 1, data, device=CPU)
    with torch.no_grad():
        tiny_resnet.conv1.weight.add_(0.1)
    second = prefix_features(tiny_resnet, 1, data, device=CPU)
    assert not torch.allclose(first.inputs["hidden"], second.inputs["hidden"])
    assert cache_info()["entries"] == 2


def test_changed_batchnorm_statistics_give_new_features(tiny_resnet, image_task):
    data = encode(tiny_resnet, image_task.train)
    first = prefix_features(tiny_resnet, 1, data, device=CPU)
    tiny_resnet.bn1.running_mean.add_(0.5)  # a buffer, not a parameter
    second = prefix_features(tiny_resnet, 1, data, device=CPU)
    assert not torch.allclose(first.inputs["hidden"], second.inputs["hidden"])


def test_weights_after_the_prefix_do_not_change_the_key(tiny_resnet, image_task):
    data = encode(tiny_resnet, image_task.train)
    key = _fingerprint(tiny_resnet, 1, data, CPU)
    with torch.no_grad():
        tiny_resnet.layer1[0].conv1.weight.add_(0.1)  # block 2: trains, not part of a depth-1 prefix
        tiny_resnet.fc.weight.add_(0.1)
    assert _fingerprint(tiny_resnet, 1, data, CPU) == key
    assert _fingerprint(tiny_resnet, 2, data, CPU) != key


def test_depth_data_and_preprocessing_are_part_of_the_key(tiny_resnet):
    data = encode(tiny_resnet, make_image_task(n=8, seed=0).train)
    other = encode(tiny_resnet, make_image_task(n=8, seed=1).train)
    keys = {_fingerprint(tiny_resnet, 1, data, CPU), _fingerprint(tiny_resnet, 2, data, CPU),
            _fingerprint(tiny_resnet, 1, other, CPU)}
    relabelled = ftlab.features.Encoded(data.inputs, data.labels.flip(0))
    keys.add(_fingerprint(tiny_resnet, 1, relabelled, CPU))
    tiny_resnet.preprocess = ImagePreprocess(24, (0.5,) * 3, (0.25,) * 3)  # another resolution
    keys.add(_fingerprint(tiny_resnet, 1, data, CPU))
    assert len(keys) == 5
    prefix_features(tiny_resnet, 1, data, device=CPU)
    prefix_features(tiny_resnet, 1, other, device=CPU)
    assert cache_info()["entries"] == 2


# --- the memory budget -----------------------------------------------------------------------


def test_tiny_budget_falls_back_to_the_uncached_path(monkeypatch):
    monkeypatch.setenv("FTLAB_CACHE_MB", "0.001")
    model = make_tiny_resnet()
    before = model.fc.weight.detach().clone()
    with pytest.warns(UserWarning, match="FTLAB_CACHE_MB"):
        history = ftlab.fit(model, make_image_task(n=16), lr=1e-2, epochs=1, frozen_depth=2, batch_size=8,
                            progress=False)
    assert not history.summary["cached_prefix"]
    assert history.epochs_run == 1 and not torch.equal(model.fc.weight, before)
    assert cache_info()["entries"] == 0


def test_over_budget_evicts_the_least_recently_used(monkeypatch, tiny_resnet):
    data = encode(tiny_resnet, make_image_task(n=16, seed=0).train)
    other = encode(tiny_resnet, make_image_task(n=16, seed=1).train)
    first = prefix_features(tiny_resnet, 1, data, device=CPU)
    size_mb = cache_info()["megabytes"]
    monkeypatch.setenv("FTLAB_CACHE_MB", str(1.5 * size_mb))  # room for one entry, not two
    prefix_features(tiny_resnet, 1, other, device=CPU)
    assert cache_info()["entries"] == 1
    again = prefix_features(tiny_resnet, 1, data, device=CPU)  # evicted: computed afresh, same values
    assert again is not first and torch.equal(again.inputs["hidden"], first.inputs["hidden"])


def test_clear_cache_empties_it(tiny_resnet, image_task):
    prefix_features(tiny_resnet, 1, encode(tiny_resnet, image_task.train), device=CPU)
    assert cache_info()["entries"] == 1
    clear_cache()
    assert cache_info() == {"entries": 0, "megabytes": 0}


# --- a family without a prefix/suffix split --------------------------------------------------


class TinyConvNet(nn.Module):
    """A registered architecture that gives ftlab no prefix/suffix functions."""

    def __init__(self):
        super().__init__()
        self.preprocess = ImagePreprocess(8, (0.5,), (0.25,), channels=1)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.hidden = nn.Linear(4 * 8 * 8, 16)
        self.out = nn.Linear(16, 2)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(torch.relu(self.conv(x)).flatten(1))))


@pytest.fixture
def convnet_family():
    family = Family("test-convnet", lambda m: isinstance(m, TinyConvNet),
                    lambda m: [("conv", m.conv), ("hidden", m.hidden)], head="out")
    register_family(family)
    try:
        yield family
    finally:
        FAMILIES.remove(family)


def test_family_without_prefix_trains_uncached(convnet_family):
    torch.manual_seed(0)
    model = TinyConvNet()
    conv_before = model.conv.weight.detach().clone()
    hidden_before = model.hidden.weight.detach().clone()
    history = ftlab.fit(model, make_image_task(n=16, num_classes=2), lr=1e-2, epochs=2, frozen_depth=1,
                        batch_size=8, progress=False)
    assert not history.summary["cached_prefix"] and cache_info()["entries"] == 0
    assert torch.equal(model.conv.weight, conv_before)
    assert not torch.equal(model.hidden.weight, hidden_before)


def _other_mask_helper(bert, style):
    """BertModel._create_attention_masks as other transformers 5.x releases spell it."""
    real = getattr(bert, "_create_attention_masks", None)
    if real is None:  # transformers 4 has no such helper: BERT's own additive mask is the reference
        def real(attention_mask, embedding_output, **_):
            return bert.get_extended_attention_mask(attention_mask, attention_mask.shape), None

    if style == "past_key_values":  # e.g. 5.17: past_key_values and cache_position, no `cache`
        def helper(attention_mask, encoder_attention_mask, embedding_output, encoder_hidden_states,
                   past_key_values, cache_position):
            return real(attention_mask=attention_mask, encoder_attention_mask=encoder_attention_mask,
                        embedding_output=embedding_output, encoder_hidden_states=encoder_hidden_states, cache=None)
    else:  # a signature ftlab has never seen: it falls back to BERT's additive padding mask
        def helper(attention_mask, embedding_output, something_new):
            raise AssertionError("not callable with the arguments ftlab knows")
    return helper


@pytest.mark.parametrize("style", ["past_key_values", "unknown"])
def test_bert_prefix_works_across_transformers_mask_helpers(tiny_bert, text_task, style, monkeypatch):
    """The frozen-prefix path must not depend on one transformers release (an H100 check with
    transformers 5.17 failed on the `cache` argument before)."""
    data = encode(tiny_bert, text_task.train)
    tiny_bert.eval()
    with torch.no_grad():
        hidden_states = tiny_bert(**data.inputs, output_hidden_states=True).hidden_states
    monkeypatch.setattr(tiny_bert.bert, "_create_attention_masks", _other_mask_helper(tiny_bert.bert, style),
                        raising=False)  # transformers 4 has none; ftlab then takes the helper's path too
    clear_cache()  # computed now, through the patched helper, not served from an earlier test
    features = prefix_features(tiny_bert, 3, data, device=CPU)
    assert torch.allclose(features.inputs["hidden"], hidden_states[2], atol=1e-5)
