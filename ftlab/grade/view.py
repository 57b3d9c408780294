"""What a submission can see of the grading machine, as a plan of mounts (pure: no mounting here).

Some folders are covered by an empty file system: the class (other learners' work), the results,
the autograder and everything next to it, the grader's working directory (a course repository holds
solutions and hidden tests) and its home directory (credentials). The few paths the notebook needs
inside those (Python, the virtual environment, ftlab's own code) are shown again, read-only.
Temporary folders get a fresh, private, size-limited file system.

    plan = plan_view(hide=["/root", "/work/course"], keep=["/work/course/.venv"], scratch=["/tmp"])
    plan.covered   -> [("/root", False), ("/work/course", False), ("/tmp", True)]
    plan.exposed   -> ["/work/course/.venv"]
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

__all__ = ["ViewPlan", "plan_view", "SYSTEM_DIRS"]

# never covered as a whole: the notebook needs the operating system
SYSTEM_DIRS = frozenset({"/", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/proc",
                         "/sys", "/dev", "/run", "/var", "/opt", "/home", "/srv", "/mnt", "/media", "/boot",
                         "/snap", "/nix", "/usr/local", "/usr/lib", "/usr/share"})


@dataclass(frozen=True)
class ViewPlan:
    covered: list[tuple[str, bool]] = field(default_factory=list)  # (folder, writable scratch?), outer first
    exposed: list[str] = field(default_factory=list)  # kept paths inside covered folders, shown read-only
    read_only: list[str] = field(default_factory=list)  # kept paths elsewhere, made read-only in place
    late_covered: list[str] = field(default_factory=list)  # hidden folders inside kept paths
    hidden_files: list[str] = field(default_factory=list)  # files that read as empty
    skipped: list[str] = field(default_factory=list)  # what could not be hidden, and why

    @property
    def mounts(self) -> int:
        return (len(self.covered) + len(self.exposed) + len(self.read_only) + len(self.late_covered)
                + len(self.hidden_files))


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _real(paths) -> list[str]:
    out = []
    for path in paths:
        if path is None:
            continue
        real = os.path.realpath(os.fspath(path))
        if os.path.lexists(real) and real not in out:
            out.append(real)
    return out


def plan_view(*, hide, keep, scratch=()) -> ViewPlan:
    """Plan the mounts that hide `hide` (folders or files) except `keep`, with fresh `scratch` folders.

    Symlinks are resolved first (mounts follow them). System folders and their ancestors are never
    covered whole (they are listed in `skipped`); a file to hide inside a covered folder needs no mount.
    """
    keep = sorted(_real(keep), key=len)
    keep = [k for i, k in enumerate(keep) if not any(_inside(k, outer) for outer in keep[:i])]
    scratch = _real(scratch)
    skipped, folders, files = [], [], []
    for path in _real(hide) + scratch:
        if path in SYSTEM_DIRS or any(_inside(system, path) for system in SYSTEM_DIRS):
            skipped.append(f"{path} (a system folder)")
        elif any(_inside(path, k) for k in keep):
            folders.append(path) if os.path.isdir(path) else files.append(path)
        elif os.path.isdir(path):
            folders.append(path)
        else:
            files.append(path)
    folders.sort(key=len)
    covered, late = [], []
    for folder in folders:
        if any(_inside(folder, outer) for outer, _ in covered):
            continue  # already out of sight
        if any(_inside(folder, k) for k in keep):
            late.append(folder)
        else:
            covered.append((folder, folder in scratch))
    exposed = [k for k in keep if any(_inside(k, c) for c, _ in covered)]
    read_only = [k for k in keep if k not in exposed]
    hidden_files = [f for f in files if not any(_inside(f, c) for c, _ in covered)
                    and not any(_inside(f, c) for c in late)]
    return ViewPlan(covered, exposed, read_only, late, hidden_files, skipped)
