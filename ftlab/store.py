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
import os
import uuid
from pathlib import Path

__all__ = ["RunStore", "describe_key", "write_atomic"]


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a unique name next to `path`, then rename it over `path` (atomic on one
    filesystem): a reader sees the old file or the new one, never half of one.

    The file is opened the ordinary way, so it gets the user's umask (usually 0644); tempfile's and
    safetensors' 0600 would hide a shared cache (a JupyterHub's, a course machine's) from other accounts."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def describe_key(description: dict) -> str:
    """sha256 of the description as canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(description, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class RunStore:
    def __init__(self, root: str | Path | None = None):
        home = Path(os.environ.get("FTLAB_HOME", Path.home() / ".cache" / "ftlab"))
        self.root = Path(root) if root is not None else home / "runs"

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        try:
            return json.loads(self._path(key).read_text())
        except (OSError, ValueError):  # missing, or unreadable: treat as not run
            return None

    def put(self, key: str, record: dict) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(record, default=str).encode())

    def __contains__(self, key: str) -> bool:
        return self._path(key).exists()

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("*/*.json")) if self.root.exists() else 0

    def clear(self) -> None:
        for path in self.root.glob("*/*.json"):
            path.unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r}, {len(self)} runs)"
