"""`ftlab grade`: batch grading of otter-grader assignments that is fair, robust and keeps hidden tests hidden.

    from ftlab.grade import grade_batch
    report = grade_batch(["submissions/"], autograder="build/autograder/02_x-autograder_....zip", jobs=2)

One module per job:
    autograder   read the otter autograder zip (tests, points, support files); find a lesson's zip
    submissions  find submissions (files, folders, zips), name learners, turn away what cannot run
    view         plan what a sandbox may see (mounts), a pure function
    job          what the grader tells one sandbox (a typed Job, job.json)
    sandbox      the grader's side of one sandbox: probe what the machine allows, run, time limit
    runner       the sandbox's inside: run the notebook with nbclient, then the tests
    kernel       start the learner's kernel with fewer rights
    in_kernel    the code sent into the kernel before the first and after the last learner cell
    plain_values sent with it: the values tests use made plain (answers that cannot lie)
    linux        mount, loopback, privileges (ctypes wrappers)
    workdir      the sandbox's folders, mounts, limits and environment (runner's first steps)
    scoring      from a sandbox's report to a learner's grade and otter's results dict
    reports      results JSON, CSV, JUnit, the terminal table
    batch        the batch: resume, parallel jobs, progress, exit status
    public       the public tests a student notebook carries, for the learners' own CI
docs/grading.md explains the protections and their limits.
"""
from __future__ import annotations

__all__ = ["grade_batch", "SubmissionResult", "BatchReport", "Limits"]


def __getattr__(name: str):  # keep `python -m ftlab.grade.kernel` light: nothing heavy at import
    if name in ("grade_batch", "BatchReport"):
        from . import batch

        return getattr(batch, name)
    if name == "SubmissionResult":
        from .reports import SubmissionResult

        return SubmissionResult
    if name == "Limits":
        from .sandbox import Limits

        return Limits
    raise AttributeError(f"module 'ftlab.grade' has no attribute {name!r}")
