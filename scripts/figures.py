"""Draw the README's figures into docs/figures/ from real runs (make figures).

ftlab's Fashion-MNIST ResNet-18 fine-tuned on digits, with Fashion-MNIST tracked as the source
task. Runs are kept in the run store, so a second `make figures` only redraws. The numbers behind
each figure are printed as well.
"""
from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import torch

import ftlab
from ftlab.plots import plot_confusion, plot_histories, plot_history, plot_sweep, plot_tradeoff

OUT = Path(__file__).resolve().parent.parent / "docs" / "figures"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    target = ftlab.datasets.load("digits", n_train=300, seed=0)
    fashion = ftlab.datasets.load("fashion-mnist", n_train=2000, n_test=1000, seed=0)
    model = ftlab.models.resnet18(weights="fashion-mnist")
    source = ftlab.Source(fashion, ftlab.models.replace_head(model, target.num_classes), name="fashion-mnist")

    # 1. one run: overfitting on 100 examples, early stopping, forgetting on the same time axis
    small = ftlab.datasets.load("digits", n_train=100, seed=0)
    run_model = copy.deepcopy(model)
    history = ftlab.fit(run_model, small, lr=3e-3, epochs=15, frozen_depth=4, patience=4,
                        source=ftlab.Source(fashion, copy.deepcopy(source.head)), progress=False)
    plot_history(history, title="100 digits, layer4 + head trained: overfitting, early stopping, forgetting"
                 ).savefig(OUT / "history.png", dpi=110)
    print(history.to_frame().round(3).to_string(index=False))
    print(history.message, "| forgetting", round(ftlab.forgetting(history), 1), "points")

    # 2. frozen depth x learning rate, with forgetting
    frame = ftlab.sweep(model, target, grid={"frozen_depth": [0, 2, 3, 4, 5], "lr": [3e-4, 1e-3, 3e-3]},
                        settings={"epochs": 6}, source=source)
    plot_sweep(frame, value="val_acc").savefig(OUT / "sweep-val-acc.png", dpi=110)
    plot_sweep(frame, value="forgetting").savefig(OUT / "sweep-forgetting.png", dpi=110)
    print(frame[["frozen_depth", "lr", "val_acc", "test_acc", "forgetting", "seconds", "from_store"]].round(3))

    # 3. mitigations at a setting that forgets: depth 0, lr 3e-3
    cures = ftlab.sweep(model, target, grid={"l2sp": [0.0, 0.01, 0.1], "rehearsal": [0.0, 0.25]},
                        settings={"epochs": 6, "frozen_depth": 0, "lr": 3e-3}, source=source)
    both = pd.concat([frame, cures], ignore_index=True)
    plot_tradeoff(both).savefig(OUT / "tradeoff.png", dpi=110)
    print(cures[["l2sp", "rehearsal", "val_acc", "test_acc", "forgetting", "seconds"]].round(3))

    # 4. what the linear probe confuses, and two runs overlaid
    probe = copy.deepcopy(model)
    probe_history = ftlab.fit(probe, target, lr=1e-3, epochs=6, frozen_depth=5, progress=False)
    plot_confusion(probe, target.test, classes=target.classes).savefig(OUT / "confusion.png", dpi=110)
    full = copy.deepcopy(model)
    full_history = ftlab.fit(full, target, lr=1e-3, epochs=6, frozen_depth=0, progress=False)
    plot_histories({"linear probe (depth 5)": probe_history, "full fine-tuning (depth 0)": full_history}).savefig(
        OUT / "compare.png", dpi=110)
    print(f"figures written to {OUT}")


if __name__ == "__main__":
    main()
