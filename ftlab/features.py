"""Inputs, encoded once per run, and the frozen-prefix cache.

`encode` turns a dataset into tensors the model can take (raw images, or token ids from the model's
tokenizer). When the first k blocks are frozen their output for a given example never changes, so
`prefix_features` runs them once and training continues from there: a sweep over learning rates at
one depth, or ten epochs at that depth, pays for the frozen blocks once. Features are kept in
memory, keyed by everything that determines them (the frozen blocks' weights, the depth, the
preprocessing, the data), so a stale entry can never be served; past a memory budget
(FTLAB_CACHE_MB, default 2048) ftlab falls back to the uncached path.
"""
from __future__ import annotations

import hashlib
import os
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from .families import family_of
from .freezing import blocks

__all__ = ["Encoded", "encode", "prepare", "prefix_features", "clear_cache", "cache_info"]


@dataclass
class Encoded:
    """Model-ready inputs (a dict of tensors, first dimension = example) and their labels."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def rows(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v[idx] for k, v in self.inputs.items()}

    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.inputs.values())


def _materialise(dataset) -> tuple[list, torch.Tensor]:
    items = [dataset[i] for i in range(len(dataset))]
    return [x for x, _ in items], torch.tensor([int(y) for _, y in items], dtype=torch.long)


def encode(model: nn.Module, dataset, *, max_length: int | None = None) -> Encoded:
    """Images as a (N, C, H, W) tensor in [0, 1]; texts as token ids from the model's tokenizer."""
    if hasattr(dataset, "images"):  # ftlab's ImageDataset: already one tensor
        return Encoded({"pixels": dataset.images}, dataset.labels)
    if hasattr(dataset, "texts"):
        texts, labels = dataset.texts, dataset.labels
    else:  # any (x, label) dataset
        xs, labels = _materialise(dataset)
        if not xs or not isinstance(xs[0], str):
            return Encoded({"pixels": torch.stack([torch.as_tensor(x, dtype=torch.float32) for x in xs])}, labels)
        texts = xs
    if not hasattr(model, "tokenizer"):
        raise ValueError("this dataset holds text but the model has no tokenizer; use ftlab.models.bert")
    max_length = max_length or getattr(model, "max_length", 128)
    tokens = model.tokenizer(list(texts), padding="longest", truncation=True, max_length=max_length,
                             return_tensors="pt")
    return Encoded(dict(tokens), labels)


def prepare(model: nn.Module, batch: dict) -> dict:
    """Apply the model's image preprocessing (resize, channels, normalisation) to a raw batch."""
    if "pixels" in batch and hasattr(model, "preprocess"):
        return {"pixels": model.preprocess(batch["pixels"])}
    return batch


# --- the frozen-prefix cache -------------------------------------------------------------------

# One cache per process, on purpose: the runs of a sweep, the dashboard's training thread and the
# kernel all reuse each other's features. _CACHE_LOCK guards every read and write of it (the
# dashboard trains in a thread while the kernel may call fit too); the features themselves are
# computed outside the lock, so one thread never waits for another's forward pass.
_CACHE: OrderedDict[str, Encoded] = OrderedDict()
_CACHE_LOCK = threading.RLock()


def _budget_bytes() -> int:
    return int(float(os.environ.get("FTLAB_CACHE_MB", 2048)) * 2**20)


def _fingerprint(model: nn.Module, depth: int, data: Encoded, device: torch.device) -> str:
    digest = hashlib.sha256(f"{family_of(model).name}|{depth}|{device.type}".encode())
    for name, block in blocks(model)[:depth]:
        for key, tensor in block.state_dict().items():
            digest.update(f"{name}.{key}".encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    preprocess = getattr(model, "preprocess", None)
    if preprocess is not None:  # the same weights at another resolution give other features
        digest.update(repr(preprocess).encode())
        for buffer in preprocess.buffers():
            digest.update(buffer.cpu().numpy().tobytes())
    for key, tensor in sorted(data.inputs.items()):
        digest.update(key.encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    digest.update(data.labels.numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def prefix_features(model: nn.Module, depth: int, data: Encoded | None, *, device: torch.device,
                    batch_size: int = 256) -> Encoded | None:
    """`data` run through the first `depth` (frozen) blocks, or None where that is not possible."""
    family = family_of(model)
    if data is None or family.prefix is None or depth == 0:
        return None
    device = torch.device(device)  # "cpu" as well as torch.device("cpu")
    key = _fingerprint(model, depth, data, device)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    try:
        for start in range(0, len(data), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(data)))
            batch = prepare(model, {k: v.to(device) for k, v in data.rows(idx).items()})
            out = family.prefix(model, depth, batch)
            if start == 0:  # will the whole set fit in the budget?
                per_example = sum(v.numel() * 4 for v in out.values()) / len(idx)
                if per_example * len(data) > _budget_bytes():
                    warnings.warn(f"ftlab: frozen-prefix features would take {per_example * len(data) / 2**20:.0f} MB "
                                  f"(budget FTLAB_CACHE_MB={_budget_bytes() // 2**20}); training without the cache")
                    return None
            for k, v in out.items():
                parts.setdefault(k, []).append(v.float().cpu() if v.is_floating_point() else v.cpu())
    finally:
        model.train(was_training)
    features = Encoded({k: torch.cat(v) for k, v in parts.items()}, data.labels)
    with _CACHE_LOCK:  # another thread may have stored the same key meanwhile: same features, either will do
        _CACHE[key] = features
        _CACHE.move_to_end(key)
        while sum(e.nbytes() for e in _CACHE.values()) > _budget_bytes() and len(_CACHE) > 1:
            _CACHE.popitem(last=False)  # least recently used first
    return features


def clear_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()


def cache_info() -> dict:
    with _CACHE_LOCK:
        return {"entries": len(_CACHE), "megabytes": sum(e.nbytes() for e in _CACHE.values()) / 2**20}
