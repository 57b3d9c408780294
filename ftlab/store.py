"""The run store: finished runs on disk, keyed by everything that determines their result.

A run's key is the sha256 of a canonical JSON description: the starting weights' fingerprint, the
data, every fit setting (seed included), and the ftlab and torch versions. Re-running a notebook or
moving a slider back to a setting already seen reads the record instead of training. Each record is
one JSON file written to a temporary name and renamed into place, so a reader never sees half a
file and two processes writing at once cannot corrupt it (the rename is atomic; the last one wins,
and both wrote the same result for the same key).

    store = RunStore()                  # $FTLAB_HOME/runs
    store.get(key) -> record or None;  store.put(key, record)
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .paths import home, write_atomic  # write_atomic: re-exported, other code imports it from here

__all__ = ["RunStore", "describe_key", "write_atomic"]


def describe_key(description: dict) -> str:
    """sha256 of the description as canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(description, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class RunStore:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else home() / "runs"

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        try:
            return json.loads(self._path(key).read_text())
        except (OSError, ValueError):  # missing, or unreadable: treat as not run
            return None

    def put(self, key: str, record: dict) -> None:
        write_atomic(self._path(key), json.dumps(record, default=str).encode())  # makes the folder too

    def __contains__(self, key: str) -> bool:
        return self._path(key).exists()

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("*/*.json")) if self.root.exists() else 0

    def clear(self) -> None:
        for path in self.root.glob("*/*.json"):
            path.unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r}, {len(self)} runs)"
