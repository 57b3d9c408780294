"""What data augmentation costs: ResNet-18 (fashion-mnist weights) on 500 digits, one epoch, batch 32.

    python bench/augment.py              # a table of seconds and ratios, and bench/results/augment.json
    python bench/augment.py --repeats 5

Everything is measured in one process, the variants interleaved (best of `repeats`), in wall seconds
and in CPU seconds of this process. The ratios use CPU seconds: with one thread they count the work
done, not the time spent waiting for a core that other programs hold (on a shared machine that wait
swamps the differences measured here). Run it with OMP_NUM_THREADS=1 for that reason.

steps, depth 0   a minimal loop (preprocess, forward, backward, AdamW step) without and with the `light`
                 preset: the price of augmenting when nothing is frozen
pipeline alone   ftlab.augment.augment_batch over the 500 training images, batch by batch
fit, depth 0     ftlab.fit without and with augment="light"
fit, depth 3     ftlab.fit with the frozen-prefix cache, without it, and with augment="light" (which
                 cannot use the cache: every step's inputs differ): the price of augmenting when the
                 cache would otherwise have run the frozen blocks once; and the same over 3 epochs
"""
from __future__ import annotations

import argparse
import copy
import inspect
import json
import time
from pathlib import Path

import torch
from torch.nn import functional as F

import ftlab
from ftlab.augment import augment_batch, light
from ftlab.features import clear_cache
from run import _resnet_on_digits  # bench/run.py: the same model and task as the other benchmarks

RESULTS = Path(__file__).resolve().parent / "results"
BATCH = 32


def _steps(model, task, *, augment: bool, seed: int = 0) -> None:
    """One epoch of training steps as a learner would write them, with or without `light`."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    pipeline = light() if augment else None
    images, labels = task.train.images, task.train.labels
    generator = torch.Generator().manual_seed(seed)
    model.train()
    order = torch.randperm(len(labels), generator=generator)
    for i in range(0, len(labels), BATCH):
        idx = order[i:i + BATCH]
        batch = augment_batch(pipeline, images[idx], generator)  # raw images, before preprocess
        loss = F.cross_entropy(model(model.preprocess(batch)), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def _pipeline_alone(task) -> None:
    pipeline, generator, images = light(), torch.Generator().manual_seed(0), task.train.images
    for i in range(0, len(images), BATCH):
        augment_batch(pipeline, images[i:i + BATCH], generator)


def _fit(model, task, *, depth: int, cached: bool = True, augment: str | None = None, epochs: int = 1) -> float:
    clear_cache()  # a cached run pays for computing the prefix, as a fresh run does
    history = ftlab.fit(model, task, lr=1e-3, epochs=epochs, frozen_depth=depth, cache_frozen=cached,
                        augment=augment, progress=False)
    assert history.summary["cached_prefix"] == (cached and augment is None and depth > 0), history.summary
    return history.rows[-1]["val_acc"]


def bench_augment(repeats: int = 3) -> dict:
    model, task = _resnet_on_digits()
    runs = {
        "steps, depth 0": lambda m: _steps(m, task, augment=False),
        "steps, depth 0, light": lambda m: _steps(m, task, augment=True),
        "pipeline alone": lambda m: _pipeline_alone(task),
    }
    if "augment" in inspect.signature(ftlab.fit).parameters:
        runs |= {
            "fit, depth 0": lambda m: _fit(m, task, depth=0),
            "fit, depth 0, light": lambda m: _fit(m, task, depth=0, augment="light"),
            "fit, depth 3, cached": lambda m: _fit(m, task, depth=3),
            "fit, depth 3, uncached": lambda m: _fit(m, task, depth=3, cached=False),
            "fit, depth 3, light (uncached)": lambda m: _fit(m, task, depth=3, augment="light"),
            # the cache pays for the frozen blocks once per run, so it gains with every epoch
            "fit x3 epochs, depth 3, cached": lambda m: _fit(m, task, depth=3, epochs=3),
            "fit x3 epochs, depth 3, light": lambda m: _fit(m, task, depth=3, augment="light", epochs=3),
        }
    else:
        print("this ftlab.fit has no `augment` yet: only the hand-written steps are measured")
    seconds = {name: [] for name in runs}
    cpu_seconds = {name: [] for name in runs}
    val_acc = {}
    for _ in range(repeats):  # interleaved, so machine noise hits all alike
        for name, go in runs.items():
            trial = copy.deepcopy(model)
            start, start_cpu = time.perf_counter(), time.process_time()
            out = go(trial)
            seconds[name].append(time.perf_counter() - start)
            cpu_seconds[name].append(time.process_time() - start_cpu)
            if out is not None:
                val_acc[name] = out
    best_wall = {name: min(times) for name, times in seconds.items()}
    best = {name: min(times) for name, times in cpu_seconds.items()}
    ratios = {"steps, depth 0: light / plain": best["steps, depth 0, light"] / best["steps, depth 0"],
              "pipeline alone / steps, depth 0": best["pipeline alone"] / best["steps, depth 0"]}
    if "fit, depth 0" in best:
        ratios |= {
            "fit, depth 0: light / plain": best["fit, depth 0, light"] / best["fit, depth 0"],
            "fit, depth 3: uncached / cached": best["fit, depth 3, uncached"] / best["fit, depth 3, cached"],
            "fit, depth 3: light / cached": best["fit, depth 3, light (uncached)"] / best["fit, depth 3, cached"],
            "fit, depth 3: light / uncached": (best["fit, depth 3, light (uncached)"]
                                               / best["fit, depth 3, uncached"]),
            "fit x3 epochs, depth 3: light / cached": (best["fit x3 epochs, depth 3, light"]
                                                       / best["fit x3 epochs, depth 3, cached"]),
        }
    print(f"{'variant':<34}{'CPU s':>8}{'wall s':>8}   all CPU s")
    for name, times in cpu_seconds.items():
        print(f"{name:<34}{best[name]:8.2f}{best_wall[name]:8.2f}   {' '.join(f'{t:.2f}' for t in times)}")
    print("ratios of best CPU seconds:")
    for name, ratio in ratios.items():
        print(f"  {name:<42}{ratio:6.2f}x")
    result = {"setup": {"model": "resnet18 fashion-mnist", "task": "digits n_train=500",
                        "epochs": "1 (the fit x3 rows: 3)", "batch_size": BATCH, "repeats": repeats,
                        "threads": torch.get_num_threads(), "torch": torch.__version__},
              "cpu_seconds": cpu_seconds, "wall_seconds": seconds, "best_cpu_s": best, "best_wall_s": best_wall,
              "ratios_cpu": ratios, "val_acc_last_epoch": val_acc,
              "per_image_augment_cpu_ms": 1000 * best["pipeline alone"] / len(task.train)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "augment.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    bench_augment(repeats=args.repeats)
