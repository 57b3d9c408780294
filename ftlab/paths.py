"""Where ftlab keeps its files, and the two things every writer and reader of them needs.

    home()                                  # $FTLAB_HOME, or ~/.cache/ftlab
    sha256_file(path)                       # streamed, and remembered until the file changes
    write_atomic(path, data)                # readers see the old file or the new one, never half
    write_atomic(path, data, mode=0o600)    # the same, readable by this account only

Cache layout under home(): data/ (downloaded datasets), models/ (ftlab's checkpoints and their
cards), runs/ (the run store).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import time
import uuid
from pathlib import Path

__all__ = ["home", "sha256_file", "sha256_bytes", "write_atomic"]

# A hash is remembered only for files last modified longer ago than this. File times tick coarsely
# (a few ms on Linux, 2 s on FAT), so a same-size rewrite within one tick would keep its stat
# signature; git calls such files "racily clean" and re-reads them. Older files are safe to trust.
RACY_SECONDS = 2.0

_hashes: dict[str, tuple[tuple[int, ...], str]] = {}  # absolute path -> (stat signature, sha256)


def home() -> Path:
    """ftlab's cache folder: $FTLAB_HOME when set (and not empty), else ~/.cache/ftlab."""
    return Path(os.environ.get("FTLAB_HOME") or Path.home() / ".cache" / "ftlab")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _signature(stat: os.stat_result) -> tuple[int, ...]:
    # size and mtime change with any ordinary write; ctime also with a reset mtime (os.utime);
    # device and inode when the file is replaced (write_atomic, a reinstall)
    return stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks.

    Remembered per path while the file's size, times and inode stay the same, so checking a 45 MB
    checkpoint on every load costs one `stat`; any change to the file means it is read again."""
    key = str(Path(path).absolute())
    before = os.stat(key)
    signature = _signature(before)
    known = _hashes.get(key)
    if known is not None and known[0] == signature:
        return known[1]
    digest = hashlib.sha256()
    with open(key, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    value = digest.hexdigest()
    settled = time.time_ns() - before.st_mtime_ns > RACY_SECONDS * 1e9
    if settled and _signature(os.stat(key)) == signature:  # not changed while it was being read
        _hashes[key] = (signature, value)
    else:
        _hashes.pop(key, None)
    return value


def write_atomic(path: str | os.PathLike, data: bytes, *, mode: int | None = None) -> None:
    """Write `data` to a unique name beside `path`, then rename it over `path` (atomic on one
    filesystem): a reader sees the old file or the new one, never half of one, and a crash leaves
    no partial file under the real name. Missing parent folders are created.

    mode: None gives the file the user's umask (usually 0644), as `open` does: a shared cache (a
    JupyterHub's, a course machine's) stays readable by the other accounts. An explicit mode is
    set exactly, e.g. 0o600 for files only this account may read (learners' grades); the file has
    it from the moment it exists, so it is never readable by others, not even briefly."""
    path = Path(path)
    if mode is not None and not (isinstance(mode, int) and 0 <= mode <= 0o777):
        raise ValueError(f"mode must be None (follow the umask) or permission bits 0..0o777, got {mode!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(temporary, flags, 0o666 if mode is None else mode)  # both are masked by the umask
    try:
        with os.fdopen(fd, "wb") as handle:
            if mode is not None:
                os.chmod(temporary, mode)  # exactly `mode`, whatever the umask took away
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())  # the bytes are on disk before the name points at them
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
