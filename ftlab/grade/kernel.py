"""Start the learner's kernel with fewer rights than the grader (the kernelspec's command).

    python -m ftlab.grade.kernel [--uid U --gid G] -- -f CONNECTION_FILE [ipykernel options]

As root (of the machine): hands the connection file to U:G, caps the number of processes of U,
and becomes U:G, so the notebook cannot write the grader's files, read other learners' sandboxes or
kill the grader. As uid 0 of a user namespace: drops every capability, so the notebook cannot
unmount what hides the grader's files. Always (on Linux): no setuid way back to more rights, and
death when the grader dies. Then it becomes ipykernel (exec: same process, same pid).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys

MAX_PROCESSES = 512  # threads count too: torch's thread pools and a DataLoader fit easily


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ftlab.grade.kernel")
    parser.add_argument("--uid", type=int, default=None)
    parser.add_argument("--gid", type=int, default=None)
    parser.add_argument("kernel_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    kernel_args = args.kernel_args[1:] if args.kernel_args[:1] == ["--"] else args.kernel_args
    if sys.platform.startswith("linux"):
        from . import linux

        if args.uid is not None:
            connection = kernel_args[kernel_args.index("-f") + 1]
            os.chown(connection, args.uid, args.gid)
            resource.setrlimit(resource.RLIMIT_NPROC, (MAX_PROCESSES, MAX_PROCESSES))
            linux.drop_to_user(args.uid, args.gid)
        elif os.geteuid() == 0:
            linux.drop_capabilities()
        linux.die_with_parent()  # after the uid change, which would clear it
        linux.no_new_privileges()
    os.execv(sys.executable, [sys.executable, "-m", "ipykernel_launcher", *kernel_args])


if __name__ == "__main__":
    main()
