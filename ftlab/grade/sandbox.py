"""One submission, one sandbox: the grader's side (what this machine allows, the command, the clock).

    isolation = probe_isolation("auto", job=job, slots=2, env=env, work_root=tmp)   # once per batch
    outcome = run_sandbox(staging, tests, isolation=isolation, timeout_s=600, log=path)

Protections, strongest first (`probe_isolation` tries them and keeps the first that works):
- namespaces (Linux, util-linux `unshare`): new network namespace (only loopback: no network), new
  mount namespace (the class, the results, the autograder, the repository and home are out of sight,
  Python and ftlab read-only), new pid namespace (nothing the notebook starts outlives its grading);
  as root the kernel runs as its own unprivileged uid per job slot; otherwise (a user namespace) it
  runs without capabilities.
- process: a separate process with the same limits and clean environment, nothing more.
Always: memory limit (RLIMIT_DATA in the runner), wall-clock limit (the process group is killed),
environment without the grader's secrets, hidden tests absent until the notebook's last cell ran, and
(Linux) nothing a notebook left running outlives its grading, even detached in its own session: the
grader adopts orphans (PR_SET_CHILD_SUBREAPER) and kills them when the sandbox ends (`_kill_orphans`).
"""
from __future__ import annotations

import json
import os
import pwd
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .job import Job

__all__ = ["Limits", "Isolation", "Outcome", "SandboxError", "probe_isolation", "run_sandbox",
           "sandbox_environment", "default_ftlab_home", "kill_running", "stop_adopting"]

GRACE_S = 5.0  # after the time limit, before the sandbox is killed (the runner stops itself before)
_ENV_KEEP = ("PATH", "LANG", "LANGUAGE", "TZ", "PYTHONPATH", "PYTHONIOENCODING", "VIRTUAL_ENV", "CONDA_PREFIX",
             "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
_ENV_KEEP_PREFIXES = ("LC_", "FTLAB_", "NVIDIA_")


class SandboxError(RuntimeError):
    """No sandbox can run on this machine with what was asked (grading cannot run)."""


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 600.0  # wall clock for one submission: its cells, then its tests
    memory_mb: int = 4096  # RLIMIT_DATA of the runner and the kernel (not RLIMIT_AS: see docs)
    disk_mb: int = 2048  # its /tmp, and the largest file it may write
    output_mb: float = 2.0  # notebook output kept; more is dropped (and said so)


@dataclass(frozen=True)
class Isolation:
    mode: str  # "namespaces" or "process"
    user_namespace: bool = False  # unshare --user --map-root-user (the grader is not root)
    uid_base: int | None = None  # as root: job slot k runs its kernel as uid uid_base + k
    notes: tuple[str, ...] = ()  # what is off, and why

    def protections(self, limits: Limits) -> list[tuple[str, bool, str]]:
        """(protection, active?, detail) for the summary."""
        ns = self.mode == "namespaces"
        return [
            ("separate process per submission", True, "killed with its children at the time limit"),
            ("time limit", True, f"{limits.timeout_s:g} s per submission (its cells get {0.75 * limits.timeout_s:g} s)"),
            ("memory limit", True, f"{limits.memory_mb} MB (RLIMIT_DATA)"),
            ("hidden tests absent while the notebook runs", True, "written after its last cell, hash-checked after"),
            ("grading code re-imported; tampering undone", True, "otter fresh; ftlab checked against its source"),
            ("environment without the grader's secrets", True, "only PATH, locale, FTLAB_* and the like"),
            ("no network", ns, "new network namespace (loopback only)" if ns else "not isolated"),
            ("class, results, autograder and repository out of sight", ns,
             "new mount namespace" if ns else "the notebook can read what the grader's user can"),
            ("leftover processes killed before the tests", ns, "new pid namespace" if ns else "not enforced"),
            ("unprivileged kernel", ns and (self.uid_base is not None or self.user_namespace),
             f"uid {self.uid_base}+slot" if self.uid_base is not None else
             "no capabilities (user namespace)" if self.user_namespace else "runs as the grader's user"),
        ]


@dataclass(frozen=True)
class Outcome:
    result: dict | None  # the runner's JSON, None when it wrote nothing
    returncode: int | None
    timed_out: bool  # killed at the hard time limit
    seconds: float
    log_tail: str = field(repr=False, default="")


def default_ftlab_home() -> Path:
    from ..paths import home

    return home()


def sandbox_environment(threads: int) -> dict[str, str]:
    """The sandbox's environment: a short allowlist, so tokens and secrets of CI never reach it."""
    env = {k: v for k, v in os.environ.items() if k in _ENV_KEEP or k.startswith(_ENV_KEEP_PREFIXES)}
    env.pop("FTLAB_HOME", None)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, str(threads))
    env.setdefault("PATH", os.defpath)
    return env


def _command(isolation: Isolation, staging: Path, result_fd: int) -> list[str]:
    runner = [sys.executable, "-m", "ftlab.grade.runner", str(staging), "--result-fd", str(result_fd)]
    if isolation.mode == "process":
        return runner
    flags = ["--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc"]
    if isolation.user_namespace:
        flags += ["--user", "--map-root-user"]
    # setpriv: the sandbox dies if the grader is killed outright (unshare passes it on, --kill-child)
    guard = [shutil.which("setpriv"), "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []
    return [*guard, shutil.which("unshare") or "unshare", *flags, "--", *runner]


_RUNNING: set[int] = set()  # process groups of the sandboxes running now
_RUNNING_LOCK = threading.Lock()
# whether this process adopts orphans (Linux: PR_SET_CHILD_SUBREAPER), and since when (seconds after
# boot): children started before are the caller's own (a notebook server, say), never killed
_REAPING = {"on": False, "since": 0.0}


def _adopt_orphans() -> None:
    """From now on what a notebook leaves running is re-parented to the grader (see `_kill_orphans`)."""
    if not _REAPING["on"] and sys.platform.startswith("linux"):
        from .linux import become_subreaper, seconds_since_boot

        try:
            _REAPING["since"] = seconds_since_boot() - 0.02  # start times are in clock ticks (1/100 s)
            become_subreaper()
            _REAPING["on"] = True
        except OSError:  # very old kernels: the pid namespace (or nothing, in process mode) must do
            pass


def _kill_orphans() -> int:
    """Kill the grader's children that are not sandboxes it runs now, with everything below them:
    processes a notebook left behind (detached, in their own session), adopted when their parent
    died. Each sandbox's runner is a subreaper too and kills what its notebook left when it ends, so
    what reaches the grader escaped a runner that was killed (its time limit). Returns how many died."""
    if not _REAPING["on"]:
        return 0
    from .linux import children, kill_tree

    def strays():
        with _RUNNING_LOCK:  # a sandbox being started is in _RUNNING before this can see it
            return [pid for pid in children(os.getpid(), started_after=_REAPING["since"]) if pid not in _RUNNING]

    return kill_tree(strays)


def stop_adopting() -> None:
    """The batch is over: kill what is left, and stop adopting (the caller's later children are its own)."""
    if _REAPING["on"]:
        _kill_orphans()
        from .linux import stop_being_subreaper

        try:
            stop_being_subreaper()
        except OSError:
            pass
        _REAPING["on"] = False


def kill_running() -> None:
    """Kill every sandbox still running (the batch was interrupted)."""
    with _RUNNING_LOCK:
        for pgid in list(_RUNNING):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    _kill_orphans()  # and what they left running, before the grader exits and init adopts it


def _tail(path: Path, size: int = 3000) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - size))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def run_sandbox(staging: Path, tests: dict[str, str], *, isolation: Isolation, timeout_s: float,
                env: dict[str, str], log: Path) -> Outcome:
    """Run the runner on `staging` (job.json, submission, files), feeding it `tests` through stdin."""
    started = time.monotonic()
    _adopt_orphans()
    read_end, write_end = os.pipe()
    with open(log, "wb") as log_file:
        try:
            with _RUNNING_LOCK:  # started and registered at once: `_kill_orphans` never sees it unregistered
                process = subprocess.Popen(_command(isolation, staging, write_end), stdin=subprocess.PIPE,
                                           stdout=log_file, stderr=subprocess.STDOUT, pass_fds=(write_end,),
                                           start_new_session=True, env=env, cwd=staging)
                _RUNNING.add(process.pid)
        finally:
            os.close(write_end)

        def feed():
            try:
                process.stdin.write(json.dumps(tests).encode())
                process.stdin.close()
            except OSError:  # it died before reading: the outcome says why
                pass

        threading.Thread(target=feed, daemon=True).start()
        chunks, timed_out = [], False
        deadline = started + timeout_s + GRACE_S
        with os.fdopen(read_end, "rb", buffering=0) as reader:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    timed_out = True
                    break
                ready, _, _ = select.select([reader], [], [], min(left, 1.0))
                if ready:
                    chunk = reader.read(1 << 16)
                    if not chunk:
                        break
                    chunks.append(chunk)
        if timed_out:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            returncode = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            returncode = process.wait()
        with _RUNNING_LOCK:
            _RUNNING.discard(process.pid)
    _kill_orphans()  # what it left running dies with its grading, as in a pid namespace
    try:
        result = json.loads(b"".join(chunks)) if chunks and not timed_out else None
    except json.JSONDecodeError:
        result = None
    return Outcome(result, returncode, timed_out, time.monotonic() - started, _tail(log))


def _free_uid_base(slots: int, start: int = 64000) -> int:
    base = start
    while any(_uid_exists(base + k) for k in range(slots)):
        base += slots
    return base


def _uid_exists(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


def _candidates(requested: str, slots: int) -> tuple[list[Isolation], list[str]]:
    notes = []
    if requested == "process":
        return [Isolation("process", notes=("namespaces not requested (--isolation process)",))], notes
    if not sys.platform.startswith("linux"):
        notes.append(f"namespaces need Linux (this is {sys.platform})")
    elif not shutil.which("unshare"):
        notes.append("util-linux `unshare` is not installed (apt-get install util-linux)")
    elif os.geteuid() == 0:
        return [Isolation("namespaces", uid_base=_free_uid_base(slots)), Isolation("namespaces"),
                Isolation("process")], notes
    else:
        return [Isolation("namespaces", user_namespace=True), Isolation("process")], notes
    return [Isolation("process")], notes


def probe_isolation(requested: str, *, job: Job, slots: int, env: dict[str, str], work_root: Path) -> Isolation:
    """The strongest isolation that works here, found by starting a kernel in each candidate sandbox.

    `job` holds the view plan and limits of the real jobs; `requested` is "auto", "namespaces"
    (fail rather than fall back) or "process". Raises SandboxError when nothing works."""
    candidates, notes = _candidates(requested, slots)
    for isolation in candidates:
        if requested == "namespaces" and isolation.mode != "namespaces":
            break
        staging = Path(tempfile.mkdtemp(prefix="probe-", dir=work_root))
        uid = None if isolation.uid_base is None else isolation.uid_base
        probe_job = job.replace(probe=True, mode=isolation.mode, uid=uid, learner="probe")
        (staging / "job.json").write_text(probe_job.to_json())
        outcome = run_sandbox(staging, {}, isolation=isolation, timeout_s=120, env=env, log=staging / "log.txt")
        result = outcome.result or {}
        if result.get("status") == "ok":
            if isolation.mode == "namespaces" and result.get("network") == "reachable":
                notes.append("the network namespace still reached the network")
                continue
            if isolation.uid_base is not None and result.get("uid") != uid:
                notes.append(f"the kernel ran as uid {result.get('uid')}, not {uid}")
                continue
            return Isolation(isolation.mode, isolation.user_namespace, isolation.uid_base, tuple(notes))
        why = result.get("error") or (outcome.log_tail.strip().splitlines() or ["no output"])[-1]
        label = isolation.mode + (f" as uid {uid}" if uid is not None else "") + (
            " in a user namespace" if isolation.user_namespace else "")
        notes.append(f"{label} did not work: {why[:300]}")
    raise SandboxError("no sandbox could start a kernel on this machine: " + "; ".join(notes))
