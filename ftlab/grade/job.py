"""What the grader tells one sandbox: a typed job, written to the staging folder as job.json.

    job = Job(learner="alice", notebook_name="lesson.ipynb", timeout_s=600, ...)
    (staging / "job.json").write_text(job.to_json())
    job = Job.from_json(text)        # in the runner; unknown or missing keys fail, naming them

batch makes it, sandbox probes with it, runner and workdir read it. Kept light (no ftlab imports
beyond the view plan): the runner reads it before anything else.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from .view import ViewPlan

__all__ = ["Job"]


@dataclass(frozen=True)
class Job:
    learner: str  # the CSV's first column (only for logs: nothing in the sandbox depends on it)
    notebook_name: str  # the file name the notebook expects (otter.Notebook("lesson.ipynb"))
    timeout_s: float  # wall clock for the whole submission: cells, then tests
    memory_mb: int  # RLIMIT_DATA of the runner and the kernel
    disk_mb: int  # its /tmp, and the largest file it may write
    output_limit_mb: float  # notebook output kept; more is dropped
    config: dict  # otter's autograder config (seed, seed_variable...)
    seed: int  # random/numpy seed before the first cell
    quiet_otter: bool  # the notebook uses otter: make its own checks no-ops
    has_files: bool  # the autograder has support files (staged in files/)
    ftlab_home: str  # the grader's FTLAB_HOME: data and models shown read-only
    threads: int  # OMP/MKL threads of the kernel
    view: ViewPlan  # what the sandbox may see (namespaces only)
    mode: str = "process"  # "namespaces" or "process", chosen by probe_isolation
    uid: int | None = None  # as root: the kernel's own uid for this job slot
    save_notebook: bool = False  # send back the executed notebook
    probe: bool = False  # a probe run: start a kernel, report uid and network, grade nothing

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["view"] = dataclasses.asdict(self.view)
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> "Job":
        data = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        unknown, missing = sorted(set(data) - names), sorted(required - set(data))
        if unknown or missing:
            raise ValueError(f"job.json does not match this ftlab's Job: unknown keys {unknown}, missing {missing} "
                             "(the grader and the sandbox run different ftlab versions?)")
        view = data["view"]
        data["view"] = ViewPlan(**{**view, "covered": [tuple(c) for c in view.get("covered", [])]})
        return cls(**data)

    def replace(self, **changes) -> "Job":
        """A copy with `changes` (dataclasses.replace, spelled as a method for the batch's one-liners)."""
        return dataclasses.replace(self, **changes)
