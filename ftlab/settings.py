"""FitSettings: everything that decides a fine-tuning run, in one frozen dataclass, checked once.

`fit` builds one from its keywords; sweeps, the run store and the dashboard read the same fields.

    settings = FitSettings(lr=1e-3, epochs=5, frozen_depth=3, patience=2)
    settings.replace(lr=3e-4)          # a copy with one field changed (validated again)
    settings.to_dict()                 # what History.config and the run store record
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Callable

__all__ = ["FitSettings", "SETTING_NAMES", "defaults"]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class FitSettings:
    lr: float                          # learning rate of the top block (the others: lr_decay / block_lrs)
    epochs: int                        # passes over the training set (fewer with early stopping)
    frozen_depth: int | None = None    # blocks frozen from the input (None: leave freezing as it is)
    patience: int | None = None        # early stopping: epochs without a val-loss improvement (None: off)
    min_delta: float = 0.0             # an improvement must beat the best val loss by this much
    restore_best: bool | None = None   # put the best epoch's weights back (default: on with patience)
    head_lr: float | None = None       # the head's learning rate (None: lr)
    lr_decay: float | None = None      # layer-wise: each block down from the top gets this times the one above
    block_lrs: dict | None = None      # explicit learning rates by block name
    optimizer: str = "adamw"           # "adamw" or "sgd" (momentum 0.9)
    weight_decay: float = 0.01         # decoupled (AdamW) or L2 (SGD); never on biases and norms
    schedule: str = "constant"         # after warm-up: "constant" or "cosine" (to 0 at the last step)
    warmup: float = 0.0                # fraction of all steps spent warming up linearly from ~0 to lr
    unfreeze_every: int | None = None  # gradual unfreezing: one more block trains every this many epochs
    unfreeze_to: int = 0               # ... down to this frozen depth
    augment: str | Callable | None = None  # images only: "light" or a torchvision.transforms.v2 pipeline
    batch_size: int = 32
    seed: int = 0                      # the same seed gives the same run on the same machine
    device: str = "auto"               # "auto" (CUDA, then MPS, then CPU), "cpu", "cuda", "mps"
    max_length: int | None = None      # tokens per text (None: the model's max_length)
    l2sp: float = 0.0                  # L2-SP: pull the body toward its starting weights (0 = off)
    rehearsal: float = 0.0             # fraction of each batch replayed from the source task

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("fit: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """Every invalid field, in words (empty when all are valid)."""
        p = []
        if not (_number(self.lr) and self.lr > 0):
            p.append(f"lr must be a positive number (typical for fine-tuning: 1e-5 to 1e-2), got {self.lr!r}")
        if not (_whole(self.epochs) and self.epochs >= 1):
            p.append(f"epochs must be a positive integer, got {self.epochs!r}")
        if self.frozen_depth is not None and not (_whole(self.frozen_depth) and self.frozen_depth >= 0):
            p.append(f"frozen_depth must be None or an integer >= 0, got {self.frozen_depth!r}")
        if self.patience is not None and not (_whole(self.patience) and self.patience >= 1):
            p.append(f"patience must be None (no early stopping) or a positive integer, got {self.patience!r}")
        if not (_number(self.min_delta) and self.min_delta >= 0):
            p.append(f"min_delta must be a number >= 0, got {self.min_delta!r}")
        if self.restore_best not in (None, True, False):
            p.append(f"restore_best must be True, False or None (= on with patience), got {self.restore_best!r}")
        if self.head_lr is not None and not (_number(self.head_lr) and self.head_lr > 0):
            p.append(f"head_lr must be a positive number or None (= lr), got {self.head_lr!r}")
        if self.lr_decay is not None and not (_number(self.lr_decay) and 0 < self.lr_decay <= 1):
            p.append(f"lr_decay must be None or a factor in (0, 1] (ULMFiT ~0.4, BERT recipes 0.8-0.95), "
                     f"got {self.lr_decay!r}")
        if self.block_lrs is not None and not (isinstance(self.block_lrs, dict) and all(
                isinstance(k, str) and _number(v) and v > 0 for k, v in self.block_lrs.items())):
            p.append(f"block_lrs must be None or a dict of block name -> positive learning rate, "
                     f"got {self.block_lrs!r}")
        if self.optimizer not in ("adamw", "sgd"):
            p.append(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if not (_number(self.weight_decay) and self.weight_decay >= 0):
            p.append(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.schedule not in ("constant", "cosine"):
            p.append(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if not (_number(self.warmup) and 0 <= self.warmup < 1):
            p.append(f"warmup must be a fraction of all training steps in [0, 1) (BERT recipes: 0.06-0.1), "
                     f"got {self.warmup!r}")
        if self.unfreeze_every is not None and not (_whole(self.unfreeze_every) and self.unfreeze_every >= 1):
            p.append(f"unfreeze_every must be None or a positive number of epochs, got {self.unfreeze_every!r}")
        if not (_whole(self.unfreeze_to) and self.unfreeze_to >= 0):
            p.append(f"unfreeze_to must be an integer >= 0 (the frozen depth gradual unfreezing stops at), "
                     f"got {self.unfreeze_to!r}")
        if self.augment is not None:
            from .augment import PRESETS

            if not (self.augment == "none" or self.augment in PRESETS or callable(self.augment)):
                p.append(f"augment must be None, a preset ({', '.join(map(repr, PRESETS))}) or a "
                         f"torchvision.transforms.v2 pipeline, got {self.augment!r}")
        if not (_whole(self.batch_size) and self.batch_size >= 1):
            p.append(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not _whole(self.seed):
            p.append(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.device, str) and type(self.device).__name__ != "device":
            p.append(f"device must be 'auto', 'cpu', 'cuda' or 'mps', got {self.device!r}")
        if self.max_length is not None and not (_whole(self.max_length) and self.max_length >= 2):
            p.append(f"max_length must be None or an integer >= 2 (tokens per text), got {self.max_length!r}")
        if not (_number(self.l2sp) and self.l2sp >= 0):
            p.append(f"l2sp must be a strength >= 0 (0 = off; try 0.01 to 1), got {self.l2sp!r}")
        if not (_number(self.rehearsal) and 0 <= self.rehearsal <= 1):
            p.append(f"rehearsal must be a fraction of each batch in [0, 1], got {self.rehearsal!r}")
        return p

    @property
    def restores_best(self) -> bool:
        return self.patience is not None if self.restore_best is None else self.restore_best

    def replace(self, **changes) -> "FitSettings":
        return dataclasses.replace(self, **changes)

    def as_kwargs(self) -> dict:
        """The fields as `fit`'s keyword arguments: fit(model, task, **settings.as_kwargs())."""
        return {name: getattr(self, name) for name in SETTING_NAMES}

    def to_dict(self) -> dict:
        """The fields as plain values (an augmentation pipeline as its repr), for History and the store."""
        out = self.as_kwargs()
        if callable(out["augment"]):
            out["augment"] = repr(out["augment"])
        return out


SETTING_NAMES = tuple(f.name for f in fields(FitSettings))


def defaults() -> dict:
    """Setting name -> default (lr and epochs have none: `inspect.Parameter.empty`)."""
    import inspect

    return {f.name: (f.default if f.default is not dataclasses.MISSING else inspect.Parameter.empty)
            for f in fields(FitSettings)}
