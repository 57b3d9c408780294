"""The sandbox's folders and environment, set up by the runner before the kernel starts.

    set_limits(job)            memory (RLIMIT_DATA), largest file, no core files: for us and the kernel
    mount_view(job)            namespaces only: ftlab.grade.view's plan mounted, loopback up
    work = prepare(job, ...)   /tmp/grade/work with the notebook and support files, a private HOME and
                               FTLAB_HOME (the grader's data and models read-only, an empty run store),
                               the kernelspec that starts ftlab.grade.kernel, the kernel's environment

The staging folder and the grader's FTLAB_HOME are read through file descriptors opened before the
mounts hid them.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import stat
import sys
from pathlib import Path

from .job import Job

__all__ = ["set_limits", "mount_view", "prepare", "kernel_spec", "set_environment", "KERNEL_NAME"]

KERNEL_NAME = "ftlab-grade"


# --- the process's own limits and the namespace's view -------------------------------------------

def set_limits(job: Job) -> None:
    for kind, megabytes in ((resource.RLIMIT_DATA, job.memory_mb), (resource.RLIMIT_FSIZE, job.disk_mb)):
        soft, hard = resource.getrlimit(kind)
        value = megabytes * 2**20
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(kind, (value, value if hard == resource.RLIM_INFINITY else hard))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def mount_view(job: Job) -> None:
    """Hide what the notebook must not see (ftlab.grade.view's plan), show Python and ftlab read-only."""
    from . import linux

    plan = job.view
    linux.loopback_up()
    for path in plan.read_only:
        linux.bind(path, path)
    exposed_fds = {path: os.open(path, os.O_PATH) for path in plan.exposed}
    for folder, writable in plan.covered:
        size = job.disk_mb if writable else 1
        linux.mount_tmpfs(folder, size_mb=size, mode="1777" if writable else "755")
    for path, fd in exposed_fds.items():
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            os.makedirs(path, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "a").close()
        linux.bind(f"/proc/self/fd/{fd}", path)
        os.close(fd)
    for folder, writable in plan.covered:
        if not writable:
            linux.remount_read_only(folder)
    for folder in plan.late_covered:
        linux.mount_tmpfs(folder, size_mb=1)
        linux.remount_read_only(folder)
    for path in plan.hidden_files:
        linux.hide_file(path)


# --- the sandbox's folders --------------------------------------------------------------------

def _copy_from(dir_fd: int, name: str, target: Path) -> None:
    """Copy `name` (relative to an open folder, which may be out of sight by now) to `target`."""
    fd = os.open(name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0), dir_fd=dir_fd)
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            target.mkdir(parents=True, exist_ok=True)
            for entry in os.scandir(fd):
                _copy_from(fd, entry.name, target / entry.name)
        else:
            with os.fdopen(os.dup(fd), "rb") as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
    finally:
        os.close(fd)


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


def _world_readable(folder: Path) -> bool:
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            if os.stat(os.path.join(root, name)).st_mode & 0o005 != 0o005:
                return False
        for name in files:
            if os.stat(os.path.join(root, name)).st_mode & 0o004 == 0:
                return False
    return True


def _share_ftlab_home(source_fd: int | None, target: Path, job: Job) -> list[str]:
    """The grader's FTLAB_HOME data and models, read-only; the run store (runs/) private."""
    target.mkdir(parents=True, exist_ok=True)
    (target / "runs").mkdir()
    shared = []
    if source_fd is None:
        return shared
    for entry in os.scandir(source_fd):
        if entry.name == "runs" or not entry.is_dir() or entry.name.startswith("."):
            continue
        source = f"/proc/self/fd/{source_fd}/{entry.name}" if job.mode == "namespaces" else None
        mine = target / entry.name
        if job.mode != "namespaces":
            mine.symlink_to(os.path.join(job.ftlab_home, entry.name))
        elif job.uid is not None and not _world_readable(Path(source)):
            shutil.copytree(source, mine)  # files only root may read (0600): a private copy
            _chown_tree(mine, job.uid, job.uid)
        else:
            mine.mkdir()
            from . import linux

            linux.bind(source, str(mine))
        shared.append(entry.name)
    return shared


def kernel_spec(folder: Path, job: Job) -> None:
    argv = [sys.executable, "-m", "ftlab.grade.kernel"]
    if job.uid is not None:
        argv += ["--uid", str(job.uid), "--gid", str(job.uid)]
    argv += ["--", "-f", "{connection_file}", "--HistoryManager.hist_file=:memory:"]
    spec = folder / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "ftlab grade",
                                                  "language": "python"}))


def set_environment(base: Path, work: Path, ftlab_home: Path, job: Job) -> None:
    """The kernel's environment: the orchestrator already passed only harmless variables."""
    home = base / "home"
    os.environ.update({
        "HOME": str(home), "USER": "learner", "LOGNAME": "learner", "TMPDIR": str(base / "tmp"),
        "FTLAB_HOME": str(ftlab_home), "MPLCONFIGDIR": str(home / ".matplotlib"),
        "XDG_CACHE_HOME": str(home / ".cache"), "XDG_CONFIG_HOME": str(home / ".config"),
        "IPYTHONDIR": str(home / ".ipython"), "JUPYTER_CONFIG_DIR": str(home / ".jupyter"),
        "JUPYTER_DATA_DIR": str(home / ".local/share/jupyter"),
        "JUPYTER_PATH": str(base / ".jupyter"), "JUPYTER_RUNTIME_DIR": str(base / ".runtime"),
        "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "MPLBACKEND": "Agg",
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        "PWD": str(work),
    })
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(name, str(job.threads))


def prepare(job: Job, staging_fd: int, ftlab_home_fd: int | None, base: Path) -> tuple[Path, dict]:
    """Work folder with the notebook and support files; returns it and what was set up."""
    for sub in ("work", "home", "tmp", ".jupyter", ".runtime"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    work = base / "work"
    _copy_from(staging_fd, "submission", work / job.notebook_name)
    if job.has_files:
        files_fd = os.open("files", os.O_RDONLY, dir_fd=staging_fd)
        try:
            for entry in os.scandir(files_fd):
                _copy_from(files_fd, entry.name, work / entry.name)
        finally:
            os.close(files_fd)
    if job.uid is not None:
        for sub in ("work", "home", "tmp"):
            _chown_tree(base / sub, job.uid, job.uid)
        os.chmod(base / "tmp", 0o700)
    shared = _share_ftlab_home(ftlab_home_fd, base / "ftlab-home", job)
    if job.uid is not None:
        os.chown(base / "ftlab-home", job.uid, job.uid)
        _chown_tree(base / "ftlab-home" / "runs", job.uid, job.uid)
    kernel_spec(base / ".jupyter", job)
    set_environment(base, work, base / "ftlab-home", job)
    return work, {"ftlab_home_shared": shared}
