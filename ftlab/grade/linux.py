"""Linux-only pieces of the grading sandbox: mounts, the loopback interface, privileges, dying
with the parent. Plain wrappers over the system calls (through ctypes, so no `mount` binary and no
subprocess per mount); each raises OSError naming what it tried when the kernel refuses.

They only work for a process that is root in its own mount + network namespace, which
`ftlab grade` arranges with util-linux's `unshare` (as root, or as any user where unprivileged
user namespaces are allowed).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import signal
import socket
import struct

__all__ = ["mount_tmpfs", "bind", "hide_file", "remount_read_only", "loopback_up", "die_with_parent",
           "no_new_privileges", "drop_capabilities", "drop_to_user", "become_subreaper", "stop_being_subreaper", "children", "seconds_since_boot",
           "kill_tree"]

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC = 0x20, 0x1000, 0x4000
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 0x400, 0x800, 0x200000
# statvfs f_flag bit -> mount flag: a remount inside a user namespace must keep the "locked" flags
# of the mount it remounts, or the kernel answers EPERM
_ST_TO_MS = {1: MS_RDONLY, 2: MS_NOSUID, 4: MS_NODEV, 8: MS_NOEXEC, 1024: MS_NOATIME,
             2048: MS_NODIRATIME, 4096: MS_RELATIME}
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 24, 36, 38
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def _bytes(text: str | None) -> bytes | None:
    return None if text is None else os.fsencode(text)


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    if _libc.mount(_bytes(source), _bytes(target), _bytes(fstype), flags, _bytes(data)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"mount {source or fstype} on {target}: {os.strerror(code)}")


def _prctl(option: int, arg: int) -> None:
    if _libc.prctl(option, arg, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"prctl({option}, {arg}): {os.strerror(code)}")


def mount_tmpfs(target: str, *, size_mb: int, mode: str = "755", uid: int = 0, gid: int = 0) -> None:
    """A fresh, empty, size-limited file system over `target` (what was there is out of sight)."""
    _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={max(1, size_mb)}m,mode={mode},uid={uid},gid={gid}")


def remount_read_only(target: str) -> None:
    """Make the mount at `target` (a bind mount or a tmpfs) read-only, keeping its other flags."""
    kept = 0
    current = os.statvfs(target).f_flag
    for st_bit, ms_bit in _ST_TO_MS.items():
        if current & st_bit:
            kept |= ms_bit
    _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept)


def bind(source: str, target: str, *, read_only: bool = True) -> None:
    """Show `source` (a path, or /proc/self/fd/N of a descriptor opened earlier) at `target`."""
    _mount(source, target, None, MS_BIND | MS_REC)
    if read_only:
        remount_read_only(target)


def hide_file(target: str) -> None:
    """`target` reads as an empty file (/dev/null is bound over it)."""
    bind("/dev/null", target, read_only=False)


def loopback_up() -> None:
    """Bring `lo` up in a new network namespace: the notebook's kernel talks to its client over
    127.0.0.1, and nothing else is reachable."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Have the kernel send `sig` to this process when its parent dies (kept across exec)."""
    _prctl(PR_SET_PDEATHSIG, sig)


def no_new_privileges() -> None:
    """setuid programs (sudo, su) can no longer give this process or its children more rights."""
    _prctl(PR_SET_NO_NEW_PRIVS, 1)


def drop_capabilities() -> None:
    """Empty the capability bounding set: programs exec'd from here get no capabilities, even as
    uid 0 of a user namespace (so the notebook cannot unmount what hides the grader's files)."""
    for cap in range(64):
        try:
            _prctl(PR_CAPBSET_DROP, cap)
        except OSError as error:
            if error.errno == errno.EINVAL:  # past the last capability this kernel knows
                return
            raise


def drop_to_user(uid: int, gid: int) -> None:
    """Become `uid`/`gid` for good (root only), with no supplementary groups."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def become_subreaper() -> None:
    """Processes orphaned below this one (a notebook's detached children) become this process's
    children, not init's: the grader can then find and kill what a notebook left running."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)


def stop_being_subreaper() -> None:
    """Orphans go to init again (the batch is over: the caller's later children are its own business)."""
    _prctl(PR_SET_CHILD_SUBREAPER, 0)


def _processes() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, start in seconds after boot) of every process now (from /proc; those that
    vanish meanwhile are skipped)."""
    found, ticks = {}, os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    fields = stat.read().rsplit(b")", 1)[1].split()  # after "(comm)", which may hold spaces
                found[int(entry)] = (int(fields[1]), int(fields[19]) / ticks)
            except (OSError, IndexError, ValueError):
                continue
    return found


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process now."""
    return {pid: parent for pid, (parent, _) in _processes().items()}


def kill_tree(find_roots, *, seconds: float = 10.0) -> int:
    """Kill the processes `find_roots()` returns and every process below them, round after round
    until it returns none (or `seconds` pass). In each round all of them are stopped (SIGSTOP) before
    any is killed, so none can fork or re-parent in between; a process forked before its stop is
    orphaned by the kill, adopted by this process (a subreaper) and found by the next round. Reaps
    this process's children among them. Returns how many processes were killed."""
    import time

    deadline, killed, me = time.monotonic() + seconds, 0, os.getpid()
    while time.monotonic() < deadline:
        roots = [pid for pid in find_roots() if pid != me]
        if not roots:
            break
        parents = _parents()
        below: dict[int, list[int]] = {}
        for pid, parent in parents.items():
            below.setdefault(parent, []).append(pid)
        tree, stack = set(), list(roots)
        while stack:
            pid = stack.pop()
            if pid not in tree and pid != me:
                tree.add(pid)
                stack.extend(below.get(pid, []))
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in tree:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        killed += len(tree)
        for pid in tree:
            if parents.get(pid) == me:
                try:
                    os.waitpid(pid, 0)  # ours: reaped, or it would be found again as a zombie
                except ChildProcessError:
                    pass
    return killed


def children(pid: int, *, started_after: float = 0.0) -> list[int]:
    """The processes whose parent is `pid` now and that started `started_after` seconds after boot or later."""
    return [child for child, (parent, start) in _processes().items() if parent == pid and start >= started_after]


def seconds_since_boot() -> float:
    """The clock of /proc/<pid>/stat's start times."""
    with open("/proc/uptime") as uptime:
        return float(uptime.read().split()[0])
