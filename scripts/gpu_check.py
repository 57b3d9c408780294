"""CUDA-path check of ftlab on a GPU machine (not a test: CI has no GPU).

    python scripts/gpu_check.py                      # on a machine with CUDA (Colab: a GPU runtime)
    GPU_CHECK_BERT=path/to/small-bert python scripts/gpu_check.py    # another BERT (default: MiniLM)
    GPUCHECK_DEVICE=cpu python scripts/gpu_check.py  # a dry run of the script itself, on the CPU


Checks that every ftlab feature the lessons use runs on CUDA (mixed precision) with no edit, and
compares a few fits with the CPU: fit at depth 0 and with a cached frozen prefix, source tracking
with L2-SP and rehearsal, LoRA and adapters on ResNet and BERT, a sweep, the dashboard headless.
"""
import json
import os
import sys
import time
import traceback

import torch

import ftlab

OUT = os.environ.get("OUT", ".")  # where gpu_check.json goes
DEV = os.environ.get("GPUCHECK_DEVICE", "cuda")  # cpu for a dry run
report = {"torch": torch.__version__, "cuda": torch.cuda.is_available(),
          "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "checks": {}}


def check(name):
    def wrap(fn):
        started = time.perf_counter()
        try:
            value = fn()
            report["checks"][name] = {"ok": True, "seconds": round(time.perf_counter() - started, 2), "value": value}
        except Exception:
            report["checks"][name] = {"ok": False, "error": traceback.format_exc()[-2500:]}
        print(name, json.dumps(report["checks"][name], default=str)[:600], flush=True)
        return fn
    return wrap


digits = ftlab.datasets.load("digits", n_train=300)


def resnet():
    model = ftlab.models.resnet18(weights="fashion-mnist")
    ftlab.models.replace_head(model, digits.num_classes)
    return model


def param_device(model):
    return str(next(model.parameters()).device)


@check("resolve_device")
def _():
    return str(ftlab.training.resolve_device("auto"))


for depth in (0, 3, 5):
    @check(f"resnet_fit_depth{depth}_cpu_vs_cuda")
    def _(depth=depth):
        out = {}
        for device in dict.fromkeys(("cpu", DEV)):
            model = resnet()
            started = time.perf_counter()
            history = ftlab.fit(model, digits, lr=1e-3, epochs=4, frozen_depth=depth, device=device, progress=False)
            out[device] = {"seconds": round(time.perf_counter() - started, 2), "best_val_acc": history.best()["val_acc"],
                           "test_acc": ftlab.evaluate(model, digits.test)["accuracy"], "param_device": param_device(model)}
        return out


@check("patience_restore_on_cuda")
def _():
    small = ftlab.datasets.load("digits", n_train=100)
    model = resnet()
    history = ftlab.fit(model, small, lr=3e-3, epochs=8, frozen_depth=4, patience=2, device=DEV, progress=False)
    ftlab.grading.assert_restored_best(model, history, small.val)
    return {"best_epoch": history.best_epoch, "epochs": len(history.to_frame()) - 1}


@check("source_l2sp_rehearsal_on_cuda")
def _():
    first = ftlab.datasets.load("digits", classes=[0, 1, 2, 3, 4], n_train=200)
    second = ftlab.datasets.load("digits", classes=[5, 6, 7, 8, 9], n_train=200)
    model = ftlab.models.resnet18(weights="fashion-mnist")
    ftlab.models.replace_head(model, 5)
    ftlab.fit(model, first, lr=1e-3, epochs=3, frozen_depth=0, device=DEV, progress=False)
    old_head = ftlab.models.replace_head(model, 5)
    history = ftlab.fit(model, second, lr=3e-3, epochs=3, frozen_depth=0, device=DEV, progress=False,
                        source=ftlab.Source(first, old_head), l2sp=0.1, rehearsal=0.25)
    return {"forgetting": ftlab.forgetting(history), "final": ftlab.measures.final_row(history)}


@check("resnet_lora_and_adapters_on_cuda")
def _():
    out = {}
    model = ftlab.add_lora(resnet(), rank=4)
    history = ftlab.fit(model, digits, lr=1e-3, epochs=2, device=DEV, progress=False)
    out["lora"] = history.best()["val_acc"]
    model = ftlab.add_adapters(resnet(), bottleneck=16, after=["layer3", "layer4"])
    history = ftlab.fit(model, digits, lr=1e-3, epochs=2, device=DEV, progress=False)
    out["adapters"] = history.best()["val_acc"]
    return out


@check("sweep_on_cuda")
def _():
    frame = ftlab.sweep(resnet(), digits, grid={"frozen_depth": [0, 4], "lr": [1e-3, 3e-3]},
                        settings={"epochs": 2, "device": DEV}, store=False, progress=False)
    return frame[["frozen_depth", "lr", "val_acc", "seconds"]].to_dict("records")


@check("dashboard_headless_on_cuda")
def _():
    board = ftlab.widgets.dashboard(resnet(), digits, settings={"epochs": 2}, store=False)
    result = board.run(lr=1e-3, frozen_depth=3, epochs=2)
    return repr(result)


news = ftlab.datasets.load("bbc-news", n_train=100)


def tinybert():
    return ftlab.models.bert(os.environ.get("GPU_CHECK_BERT", "all-MiniLM-L6-v2"), num_classes=news.num_classes,
                            max_length=64)


for depth in (0, 2):
    @check(f"bert_fit_depth{depth}_cpu_vs_cuda")
    def _(depth=depth):
        out = {}
        for device in dict.fromkeys(("cpu", DEV)):
            model = tinybert()
            started = time.perf_counter()
            history = ftlab.fit(model, news, lr=1e-3, epochs=3, frozen_depth=depth, device=device, progress=False)
            out[device] = {"seconds": round(time.perf_counter() - started, 2), "best_val_acc": history.best()["val_acc"],
                           "param_device": param_device(model)}
        return out


@check("bert_lora_and_adapters_on_cuda")
def _():
    out = {}
    for kind in ("lora", "adapters"):
        base = tinybert().to(DEV).eval()
        model = tinybert().to(DEV).eval()
        model.load_state_dict(base.state_dict())
        model = ftlab.add_lora(model, rank=4) if kind == "lora" else ftlab.add_adapters(model, bottleneck=8)
        history = ftlab.fit(model, news, lr=1e-3, epochs=2, device=DEV, progress=False)
        out[kind] = {"best_val_acc": history.best()["val_acc"]}
    return out


with open(os.path.join(OUT, "gpu_check.json"), "w") as handle:
    json.dump(report, handle, indent=1, default=str)
failed = [name for name, c in report["checks"].items() if not c["ok"]]
print("FAILED:", failed if failed else "none")
