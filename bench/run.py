"""ftlab's benchmarks, each a side-by-side comparison measured in one process (make bench).

    python bench/run.py                  # all
    python bench/run.py cache overhead   # some: cache, overhead, throughput, bert, lr_find

cache       ResNet-18 (fashion-mnist weights) on digits, n_train=500, depths 0..5, 5 epochs each:
            frozen-prefix cache on vs off, wall time and accuracy per depth.
overhead    ftlab.fit against a minimal hand-written PyTorch loop, same model, data and settings.
throughput  ResNet-18 training images/s at the lessons' 28x28, as achieved GFLOP/s against this
            machine's matmul peak (measured here, in the same run).
bert        MiniLM-L6 on bbc-news, n_train=300, max length 128, depths 4..7: cache on vs off.
lr_find     the learning-rate range test (default 100 steps) against one epoch of fit on the same
            model, task and depth: ResNet-18 on 500 digits at depths 0 and 3, MiniLM on 200 bbc-news
            texts at max length 64, depth 7. Printed as "lr_find = N epochs".

Results are printed as tables and written to bench/results/NAME.json.
"""
from __future__ import annotations

import copy
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

import ftlab
from ftlab.features import clear_cache

RESULTS = Path(__file__).resolve().parent / "results"


def _save(name: str, result: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1))


def _resnet_on_digits(n_train: int = 500):
    torch.manual_seed(0)
    task = ftlab.datasets.load("digits", n_train=n_train, seed=0)
    model = ftlab.models.resnet18(weights="fashion-mnist")
    ftlab.models.replace_head(model, task.num_classes)
    return model, task


def _cached_vs_uncached(model, task, depths, **settings) -> list[dict]:
    """For each depth, the same run with the frozen-prefix cache off and on, side by side."""
    rows = []
    for depth in depths:
        row = {"depth": depth}
        for cached in (False, True):  # same starting weights and seed
            clear_cache()
            trial = copy.deepcopy(model)
            start = time.perf_counter()
            history = ftlab.fit(trial, task, frozen_depth=depth, cache_frozen=cached, progress=False, **settings)
            label = "cached" if cached else "uncached"
            row[f"{label}_s"] = time.perf_counter() - start
            row[f"{label}_val_acc"] = history.rows[-1]["val_acc"]
        rows.append(row)
        print(f"depth {depth}: uncached {row['uncached_s']:6.1f} s  cached {row['cached_s']:6.1f} s  "
              f"ratio {row['uncached_s'] / row['cached_s']:.2f}x   val acc {row['uncached_val_acc']:.3f} "
              f"vs {row['cached_val_acc']:.3f}", flush=True)
    return rows


def bench_cache(epochs: int = 5) -> dict:
    model, task = _resnet_on_digits()
    rows = _cached_vs_uncached(model, task, range(6), lr=1e-3, epochs=epochs)
    total_u, total_c = sum(r["uncached_s"] for r in rows), sum(r["cached_s"] for r in rows)
    frozen_u = sum(r["uncached_s"] for r in rows if r["depth"] > 0)
    frozen_c = sum(r["cached_s"] for r in rows if r["depth"] > 0)
    worst = max(abs(r["uncached_val_acc"] - r["cached_val_acc"]) for r in rows)
    print(f"total: uncached {total_u:.1f} s, cached {total_c:.1f} s: {total_u / total_c:.2f}x faster "
          f"(depths 1-5 only: {frozen_u / frozen_c:.2f}x); largest val-acc difference {100 * worst:.2f} points")
    result = {"rows": rows, "total_ratio": total_u / total_c, "frozen_only_ratio": frozen_u / frozen_c,
              "max_acc_diff_points": 100 * worst}
    _save("cache", result)
    return result


def _hand_loop(model, task, *, lr: float, epochs: int, batch_size: int, seed: int, fused: bool,
               score_start: bool = False) -> float:
    """What a learner would write: AdamW, shuffle, forward, loss, backward, step; validate each epoch.

    score_start: also score the training and validation sets before training, as fit's epoch 0 does
    (where the pretrained model stands: the first point of every curve fit returns)."""
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, fused=fused)
    images, labels = task.train.images, task.train.labels
    generator = torch.Generator().manual_seed(seed)
    if score_start:
        model.eval()
        with torch.no_grad():
            for data in (task.train, task.val):
                F.cross_entropy(model(model.preprocess(data.images)), data.labels).item()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(labels), generator=generator)
        for i in range(0, len(labels), batch_size):
            idx = order[i:i + batch_size]
            loss = F.cross_entropy(model(model.preprocess(images[idx])), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            val_logits = model(model.preprocess(task.val.images))
            accuracy = (val_logits.argmax(1) == task.val.labels).float().mean().item()
    return accuracy


def bench_overhead(epochs: int = 3, repeats: int = 7) -> dict:
    model, task = _resnet_on_digits()
    runs = {"ftlab.fit": lambda m: ftlab.fit(m, task, lr=1e-3, epochs=epochs, frozen_depth=0, progress=False),
            "hand loop + epoch 0, fused": lambda m: _hand_loop(m, task, lr=1e-3, epochs=epochs, batch_size=32,
                                                               seed=0, fused=True, score_start=True),
            "hand loop, fused AdamW": lambda m: _hand_loop(m, task, lr=1e-3, epochs=epochs, batch_size=32,
                                                           seed=0, fused=True),
            "hand loop, default AdamW": lambda m: _hand_loop(m, task, lr=1e-3, epochs=epochs, batch_size=32,
                                                             seed=0, fused=False)}
    times = {name: [] for name in runs}
    for _ in range(repeats):  # interleaved, so machine noise hits all alike
        for name, go in runs.items():
            trial = copy.deepcopy(model)
            start = time.perf_counter()
            go(trial)
            times[name].append(time.perf_counter() - start)
    best = {k: min(v) for k, v in times.items()}
    overhead = best["ftlab.fit"] / best["hand loop + epoch 0, fused"] - 1
    over_minimal = best["ftlab.fit"] / best["hand loop, fused AdamW"] - 1
    for name, seconds in best.items():
        print(f"{name:<28} {seconds:6.2f} s  ({seconds / best['ftlab.fit']:.2f}x ftlab.fit)")
    print(f"ftlab.fit overhead over the same loop by hand (epoch-0 scores included): {100 * overhead:+.1f}%; "
          f"over the loop without them: {100 * over_minimal:+.1f}% (best of {repeats}; ftlab also tracks "
          "training accuracy and snapshots the best weights)")
    median = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    print(f"medians: fit {median['ftlab.fit'] / median['hand loop + epoch 0, fused'] - 1:+.1%} over the same loop, "
          f"{median['ftlab.fit'] / median['hand loop, fused AdamW'] - 1:+.1%} over the loop without epoch 0")
    result = {"seconds": times, "best": best, "median": median, "overhead": overhead,
              "overhead_without_epoch0": over_minimal, "threads": torch.get_num_threads(),
              "load_average_at_start": os.getloadavg()[0]}
    _save("overhead", result)
    return result


def _matmul_peak(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_throughput(steps: int = 20, batch_size: int = 32) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    model, task = _resnet_on_digits()
    images = task.train.images[:batch_size]
    labels = task.train.labels[:batch_size]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step():
        loss = F.cross_entropy(model(model.preprocess(images)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    with FlopCounterMode(display=False) as counter:
        step()
    flops_per_step = counter.get_total_flops()
    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    peak = _matmul_peak()
    achieved = flops_per_step / seconds / 1e9
    print(f"ResNet-18 training at 28x28, batch {batch_size}: {batch_size / seconds:.0f} images/s, "
          f"{achieved:.1f} GFLOP/s vs matmul peak {peak:.1f} GFLOP/s here: {100 * achieved / peak:.1f}% of peak")
    result = {"images_per_s": batch_size / seconds, "gflops": achieved, "peak_gflops": peak,
              "ratio": achieved / peak, "flops_per_image": flops_per_step / batch_size}
    _save("throughput", result)
    return result


def bench_bert(epochs: int = 3) -> dict:
    torch.manual_seed(0)
    task = ftlab.datasets.load("bbc-news", n_train=300, seed=0)
    model = ftlab.models.bert(num_classes=task.num_classes, max_length=128)
    rows = _cached_vs_uncached(model, task, range(4, 8), lr=5e-5, head_lr=1e-3, epochs=epochs)
    total_u, total_c = sum(r["uncached_s"] for r in rows), sum(r["cached_s"] for r in rows)
    print(f"total: uncached {total_u:.1f} s, cached {total_c:.1f} s: {total_u / total_c:.2f}x faster")
    result = {"rows": rows, "total_ratio": total_u / total_c}
    _save("bert", result)
    return result


def _lr_find_vs_epoch(name: str, model, task, depth: int, repeats: int = 2, **fit_settings) -> dict:
    """lr_find's wall time against one epoch of fit at the same depth, each from a cold cache.

    Interleaved and repeated, best of `repeats`, so machine noise hits both alike."""
    find_times, fit_times, epoch_times = [], [], []
    for _ in range(repeats):
        clear_cache()
        trial = copy.deepcopy(model)
        start = time.perf_counter()
        result = ftlab.lr_find(trial, task, frozen_depth=depth, progress=False)
        find_times.append(time.perf_counter() - start)
        clear_cache()
        trial = copy.deepcopy(model)
        start = time.perf_counter()
        history = ftlab.fit(trial, task, epochs=1, frozen_depth=depth, progress=False, **fit_settings)
        fit_times.append(time.perf_counter() - start)
        epoch_times.append(history.rows[1]["seconds"])  # the training pass alone (no encoding, cache, scoring)
    find_s, fit_s, epoch_s = min(find_times), min(fit_times), min(epoch_times)
    row = {"case": name, "depth": depth, "lr_find_s": find_s, "lr_find_steps": len(result.lrs),
           "diverged": result.diverged, "suggestion": result.suggestion, "fit_1_epoch_call_s": fit_s,
           "fit_epoch_train_s": epoch_s, "steps_per_epoch": -(-len(task.train) // fit_settings.get("batch_size", 32)),
           "epochs_equivalent": find_s / epoch_s, "epochs_equivalent_whole_call": find_s / fit_s,
           "all_seconds": {"lr_find": find_times, "fit_call": fit_times, "fit_epoch": epoch_times}}
    print(f"{name}, depth {depth}: lr_find {find_s:6.1f} s ({row['lr_find_steps']} steps, suggests "
          f"{result.suggestion:.1e}) | fit 1 epoch: train pass {epoch_s:5.1f} s, whole call {fit_s:5.1f} s | "
          f"lr_find = {row['epochs_equivalent']:.1f} epochs ({row['epochs_equivalent_whole_call']:.1f} whole "
          f"1-epoch fit calls)", flush=True)
    return row


def bench_lr_find(bert: bool = True) -> dict:
    import os

    load = os.getloadavg()[0]  # a shared machine: say how busy it was (the ratios are measured interleaved)
    model, task = _resnet_on_digits()
    rows = [_lr_find_vs_epoch("ResNet-18 fashion-mnist, 500 digits", model, task, depth, lr=1e-3)
            for depth in (0, 3)]
    if bert:
        torch.manual_seed(0)
        news = ftlab.datasets.load("bbc-news", n_train=200, seed=0)
        minilm = ftlab.models.bert(num_classes=news.num_classes, max_length=64)
        rows.append(_lr_find_vs_epoch("MiniLM-L6, 200 bbc-news texts, max length 64", minilm, news, 7, lr=1e-3))
    result = {"rows": rows, "threads": torch.get_num_threads(), "load_average_at_start": load}
    _save("lr_find", result)
    return result


BENCHES = {"cache": bench_cache, "overhead": bench_overhead, "throughput": bench_throughput, "bert": bench_bert,
           "lr_find": bench_lr_find}

if __name__ == "__main__":
    chosen = sys.argv[1:] or list(BENCHES)
    unknown = [name for name in chosen if name not in BENCHES]
    if unknown:
        sys.exit(f"unknown benchmark(s) {unknown}; choose from {list(BENCHES)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in chosen:
        print(f"--- {name}")
        BENCHES[name]()
