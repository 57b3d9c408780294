"""LoRA (ftlab/lora.py): the teaching layer against its own merged form, and PEFT's LoRA on the
tiny ResNet and tiny BERT. The oracles are invariants: with B = 0 the model is the base model, bit
for bit; switching LoRA off gives the base model back, bit for bit, after training too; the
pretrained weights never move; a merged layer computes what the unmerged one does."""
from __future__ import annotations

import pytest
import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn

import ftlab
from ftlab.families import family_of
from ftlab.lora import LoRALinear, add_lora, has_lora, lora_disabled, merge_lora
from ftlab.models import head_of

from conftest import make_image_task, make_text_task, make_tiny_bert, make_tiny_resnet


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads cost more than they save
    yield
    torch.set_num_threads(previous)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def is_lora_key(key: str) -> bool:
    return "lora_" in key or "modules_to_save" in key


# --- the teaching layer ------------------------------------------------------------------------

LAYERS = [  # in_features, out_features, r, bias
    (8, 4, 1, True),
    (16, 16, 4, False),
    (32, 8, 8, True),
]


@pytest.mark.parametrize("n_in, n_out, r, bias", LAYERS)
def test_lora_linear_with_b_zero_is_the_base_layer(n_in, n_out, r, bias):
    torch.manual_seed(0)
    base = nn.Linear(n_in, n_out, bias=bias)
    layer = LoRALinear(base, r=r, alpha=2 * r)
    x = torch.randn(5, 3, n_in)
    assert torch.equal(layer.lora_B.weight, torch.zeros(n_out, r))
    assert torch.equal(layer(x), base(x))
    assert layer.scaling == 2.0
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["lora_A.weight", "lora_B.weight"]


@pytest.mark.parametrize("n_in, n_out, r, bias", LAYERS)
def test_lora_linear_merged_equals_unmerged_after_training(n_in, n_out, r, bias):
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(n_in, n_out, bias=bias), r=r, alpha=16)
    x = torch.randn(10, n_in)
    optimizer = torch.optim.SGD([p for p in layer.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):  # the second step moves A too (B is no longer zero)
        optimizer.zero_grad()
        layer(x).pow(2).mean().backward()
        optimizer.step()
    assert layer.lora_B.weight.abs().sum() > 0
    merged = layer.merge()
    assert type(merged) is nn.Linear
    torch.testing.assert_close(merged(x), layer(x), atol=1e-6, rtol=1e-6)


def test_lora_linear_merged_equals_unmerged_with_random_b():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(12, 6), r=3, alpha=6, dropout=0.5).eval()  # eval: no dropout
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(4, 12)
    assert not torch.equal(layer(x), layer.base_layer(x))
    torch.testing.assert_close(layer.merge()(x), layer(x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("r", [0, -2, 2.5, True, "8"])
def test_bad_rank_raises_at_once(r):
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        LoRALinear(nn.Linear(4, 4), r=r)
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        add_lora(make_tiny_resnet(), rank=r)


# --- PEFT's LoRA on ftlab's models ---------------------------------------------------------------

MODELS = {"resnet": (make_tiny_resnet, make_image_task), "bert": (make_tiny_bert, make_text_task)}


def inputs(model: nn.Module, task) -> dict:
    """A batch of the task's test split, ready for model(**batch)."""
    if task.modality == "image":
        return {"x": model.preprocess(task.test.images[:12])}
    return dict(model.tokenizer(list(task.test.texts[:12]), padding=True, return_tensors="pt"))


def outputs(model: nn.Module, batch: dict) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out = model(**batch)
    return out if isinstance(out, torch.Tensor) else out.logits


@pytest.mark.parametrize("kind", MODELS)
def test_add_lora_keeps_the_model_its_class_and_its_outputs(kind):
    make_model, make_task = MODELS[kind]
    model, task = make_model(), make_task()
    batch = inputs(model, task)
    before, family = outputs(model, batch), family_of(model).name
    assert add_lora(model, rank=4) is model
    assert has_lora(model) and family_of(model).name == family and type(model) is type(make_model())
    assert hasattr(model, "preprocess" if kind == "resnet" else "tokenizer")
    assert torch.equal(outputs(model, batch), before)  # B = 0: exactly the base model
    assert head_of(model).out_features == task.num_classes


@pytest.mark.parametrize("kind", MODELS)
def test_only_lora_and_the_head_train_and_the_summary_says_so(kind):
    model = MODELS[kind][0]()
    total = sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for _, m in ftlab.freezing.head_modules(model) for p in m.parameters())
    if kind == "bert":  # LoRA trains a copy of the pooler too (a block of its own, read only by the head)
        head += sum(p.numel() for p in model.bert.pooler.parameters())
    add_lora(model, rank=4)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(is_lora_key(n) for n in trainable)
    assert any("modules_to_save" in n for n in trainable)  # the head trains
    if kind == "bert":
        assert any(n.startswith("bert.pooler.modules_to_save") for n in trainable)
    lora = sum(v for n, v in trainable.items() if "lora_" in n)
    summary = ftlab.trainable_summary(model)
    # every parameter counts, the kept copy of the head included; LoRA and one head copy train
    assert summary.loc["total", "parameters"] == total + lora + head
    assert summary.loc["total", "trainable"] == lora + head == sum(trainable.values())
    assert summary.loc["total", "trainable"] / summary.loc["total", "parameters"] < 0.05


def test_default_targets_are_bert_query_value_and_resnet_late_convs():
    bert, resnet = add_lora(make_tiny_bert()), add_lora(make_tiny_resnet())
    bert_lora = {n.rsplit(".", 1)[-1] for n, m in bert.named_modules() if hasattr(m, "lora_A")}
    resnet_lora = {n for n, m in resnet.named_modules() if hasattr(m, "lora_A")}
    assert bert_lora == {"query", "value"}
    assert resnet_lora == {f"layer{i}.0.conv{j}" for i in (3, 4) for j in (1, 2)}
    assert ftlab.frozen_depth(resnet) == 3  # stem, layer1, layer2 have no LoRA: frozen, cacheable


def test_bad_arguments_and_a_second_add_lora_raise():
    with pytest.raises(ValueError, match="alpha"):
        add_lora(make_tiny_resnet(), alpha=0)
    with pytest.raises(ValueError, match="dropout"):
        add_lora(make_tiny_resnet(), dropout=1.5)
    with pytest.raises(ValueError, match="layer4.0.conv1"):  # names the layers it could adapt
        add_lora(make_tiny_resnet(), targets=["no_such_layer"])
    model = add_lora(make_tiny_resnet())
    with pytest.raises(ValueError, match="already"):
        add_lora(model)
    with pytest.raises(ValueError, match="no LoRA"):
        with lora_disabled(make_tiny_resnet()):
            pass


@pytest.mark.parametrize("kind", MODELS)
def test_fit_trains_lora_and_leaves_the_pretrained_weights_bit_for_bit(kind):
    make_model, make_task = MODELS[kind]
    model, task = make_model(), make_task()
    batch = inputs(model, task)
    base = outputs(model, batch)
    add_lora(model, rank=4)
    start = snapshot(model)
    history = ftlab.fit(model, task, lr=2e-2, epochs=2, batch_size=16, progress=False, device="cpu")
    assert history.summary["trainable_parameters"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    end = snapshot(model)
    assert all(torch.equal(end[k], start[k]) for k in start if not is_lora_key(k))  # BatchNorm statistics too
    assert any(not torch.equal(end[k], start[k]) for k in start if "lora_B" in k)
    assert not torch.equal(outputs(model, batch), base)
    flags = [p.requires_grad for p in model.parameters()]
    with lora_disabled(model):
        assert torch.equal(outputs(model, batch), base)  # LoRA off: the base model, head included
    assert [p.requires_grad for p in model.parameters()] == flags  # PEFT's switch flips them; restored
    assert not torch.equal(outputs(model, batch), base)  # and LoRA is back on


def test_forgetting_with_lora_disabled_is_exactly_zero(ftlab_home):
    model, target, source_task = make_tiny_resnet(), make_image_task(seed=1), make_image_task(seed=7)
    source_head = ftlab.models.replace_head(model, target.num_classes)  # the head of the "source" task
    before = ftlab.evaluate(model, source_task.test, head=source_head, device="cpu")
    add_lora(model, rank=4)
    history = ftlab.fit(model, target, lr=5e-2, epochs=2, progress=False, device="cpu",
                        source=ftlab.Source(source_task, source_head))
    assert history.rows[0]["source_acc"] == before["accuracy"]
    assert ftlab.evaluate(model, source_task.test, head=source_head, device="cpu")["loss"] != before["loss"]
    with lora_disabled(model):
        after = ftlab.evaluate(model, source_task.test, head=source_head, device="cpu")
    assert after == before  # loss and accuracy, exactly
    assert 100 * (before["accuracy"] - after["accuracy"]) == 0


def test_fit_with_and_without_the_frozen_prefix_cache_agree_under_lora():
    task, runs = make_image_task(), []
    for cache in (True, False):
        model = add_lora(make_tiny_resnet(), rank=4)
        history = ftlab.fit(model, task, lr=2e-2, epochs=2, batch_size=16, progress=False, device="cpu",
                            cache_frozen=cache)
        runs.append((history, snapshot(model)))
    (cached, cached_state), (plain, plain_state) = runs
    assert cached.summary["cached_prefix"] and not plain.summary["cached_prefix"]
    for a, b in zip(cached.rows, plain.rows):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    for key in cached_state:
        torch.testing.assert_close(cached_state[key], plain_state[key], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", MODELS)
def test_the_head_survives_saving_and_loading_the_lora_weights(kind, tmp_path):
    make_model, make_task = MODELS[kind]
    model, task = make_model(), make_task()
    add_lora(model, rank=4)
    ftlab.fit(model, task, lr=2e-2, epochs=1, batch_size=16, progress=False, device="cpu")
    state = get_peft_model_state_dict(model)  # LoRA matrices plus modules_to_save: the head, the pooler
    head_path = family_of(model).head
    assert f"{head_path}.weight" in state
    save_file(state, tmp_path / "adapter_model.safetensors")
    fresh = add_lora(make_model(), rank=4)  # the same pretrained base, new LoRA and head
    batch = inputs(model, task)
    assert not torch.equal(outputs(fresh, batch), outputs(model, batch))
    result = set_peft_model_state_dict(fresh, load_file(tmp_path / "adapter_model.safetensors"))
    assert not result.unexpected_keys
    assert torch.equal(outputs(fresh, batch), outputs(model, batch))


@pytest.mark.parametrize("kind", MODELS)
def test_merge_lora_gives_a_plain_model_computing_the_same(kind):
    make_model, make_task = MODELS[kind]
    model, task = make_model(), make_task()
    add_lora(model, rank=4)
    ftlab.fit(model, task, lr=2e-2, epochs=1, batch_size=16, progress=False, device="cpu")
    batch = inputs(model, task)
    with_lora = outputs(model, batch)
    assert merge_lora(model) is model
    assert not has_lora(model) and not hasattr(model, "peft_config")
    assert set(model.state_dict()) == set(make_model().state_dict())  # the original layout again
    assert type(head_of(model)) is nn.Linear
    torch.testing.assert_close(outputs(model, batch), with_lora, atol=1e-5, rtol=1e-5)


def test_sweep_over_lr_with_lora():
    model, task = add_lora(make_tiny_resnet(), rank=4), make_image_task()
    start = snapshot(model)
    frame = ftlab.sweep(model, task, grid={"lr": [1e-2, 5e-2]}, settings={"epochs": 1, "batch_size": 16},
                        store=None, progress=False)
    lora_and_head = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert list(frame["lr"]) == [1e-2, 5e-2]
    assert (frame["trainable_params"] == lora_and_head).all()
    assert frame["val_acc"].notna().all()
    end = snapshot(model)
    assert all(torch.equal(start[k], end[k]) for k in start)  # the sweep puts the start weights back


def test_real_minilm_with_lora_starts_as_the_base_model():
    model = ftlab.models.bert(num_classes=2)
    batch = dict(model.tokenizer(["the match ended in a draw", "shares fell sharply"], padding=True,
                                 return_tensors="pt"))
    before = outputs(model, batch)
    add_lora(model, rank=8)
    assert torch.equal(outputs(model, batch), before)
    summary = ftlab.trainable_summary(model)
    share = summary.loc["total", "trainable"] / summary.loc["total", "parameters"]
    assert 0 < share < 0.01  # LoRA on query/value at rank 8, plus pooler and head: well under 1%
    assert ftlab.frozen_depth(model) == 1  # only the embeddings carry no LoRA


@pytest.mark.parametrize("depth", [0, 3, 4, 5])
def test_freeze_on_a_lora_model_never_unfreezes_pretrained_weights(depth):
    model = add_lora(make_tiny_resnet(), rank=4)
    ftlab.freeze(model, depth)
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert "lora_" in name or "modules_to_save" in name, name
        if "original_module" in name:
            assert not p.requires_grad, name
    names = [n for n, _ in ftlab.blocks(model)]  # stem, layer1..layer4; LoRA sits in layer3 and layer4
    trainable_blocks = [n for n, b in ftlab.blocks(model) if any(p.requires_grad for p in b.parameters())]
    assert trainable_blocks == [n for n in ("layer3", "layer4") if names.index(n) >= depth]
    assert any(p.requires_grad for p in head_of(model).parameters())


def test_replacing_the_head_after_lora_says_to_do_it_first():
    model = add_lora(make_tiny_resnet(), rank=4)
    with pytest.raises(TypeError, match="replace the head before adding LoRA"):
        ftlab.models.replace_head(model, 3)
