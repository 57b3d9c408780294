"""Grading a class: every submission in its own sandbox, several at once, resumable.

    report = grade_batch(["submissions/"], autograder="build/autograder/02_x-autograder_....zip",
                         out="grading-results", jobs=2)
    report.results        -> [SubmissionResult("alice": 5/5, graded), ...]

Writes into `out`: results/<learner>-<hash>.json per submission (otter's format plus an "ftlab"
section), grades.csv, junit.xml. A submission whose result file already holds the same file hash and
autograder hash is not graded again (a killed batch resumes where it stopped); --regrade grades all.
`shard=Shard(2, 3)` grades one machine's share of the class and adds shard.json (ftlab.grade.shards).
`ftlab grade` (grade_from_cli) exits 0 when grading ran, whatever the scores, and 1 when grading
itself could not run, so CI can tell "a learner lost points" from "the grader broke".
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import queue
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .autograder import Autograder, AutograderError, find_lesson_autograder, load_autograder
from .reports import SubmissionResult, read_result, summary_table, write_csv, write_junit, write_result
from .sandbox import (Isolation, Limits, SandboxError, default_ftlab_home, kill_running, probe_isolation,
                      run_sandbox, sandbox_environment, stop_adopting)
from .scoring import interpret, otter_results, zero_result
from .shards import MANIFEST, Shard, write_manifest
from .submissions import NoSubmissions, Submission, find_submissions, notebook_file_name, precheck, slug
from .job import Job
from .view import SYSTEM_DIRS, ViewPlan, plan_view

__all__ = ["grade_batch", "BatchReport", "GradingCannotRun", "grade_from_cli", "GRADER_VERSION"]

GRADER_VERSION = "1"  # part of what a kept result must match: bump when grading itself changes


class GradingCannotRun(RuntimeError):
    """The batch cannot run (output folder, grader files changed mid-batch...)."""


@dataclass
class BatchReport:
    results: list[SubmissionResult]
    questions: list[str]
    isolation: Isolation
    limits: Limits
    seconds: float
    graded: int  # graded in this run (not kept from an earlier one)
    out: Path
    notes: list[str] = field(default_factory=list)

    @property
    def grader_errors(self) -> list[SubmissionResult]:
        return [r for r in self.results if r.status == "grader-error"]


def _grader_files_digest() -> str:
    """sha256 over the code that grades (ftlab, otter): a notebook outside namespaces could rewrite it."""
    import otter

    import ftlab

    hasher = hashlib.sha256()
    for package in (Path(ftlab.__file__).parent, Path(otter.__file__).parent):
        for path in sorted(package.rglob("*.py")):
            hasher.update(str(path).encode())
            hasher.update(path.read_bytes())
    return hasher.hexdigest()


def _view_inputs(paths: Sequence[Path], out: Path, ag_path: Path, work_root: Path, allow_read: Sequence[Path]):
    import ftlab

    package = Path(ftlab.__file__).resolve().parent
    keep = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, str(package), *map(str, allow_read)}
    hide = [Path.cwd(), Path.home(), *paths, out, default_ftlab_home(), work_root]
    if ag_path.name != "<stdin>":
        hide.append(ag_path.resolve().parent)  # the zip, and what `otter assign` wrote next to it (solutions)
    # the checkout ftlab runs from, and the project around a virtual environment: a course repository
    # holds solutions and hidden tests (system folders among these are left alone by plan_view)
    if not any(str(package.parent).startswith(str(Path(k).resolve())) for k in keep - {str(package)}):
        hide.append(package.parent)
    if sys.prefix != sys.base_prefix:
        hide.append(Path(sys.prefix).resolve().parent)
    # every other top-level folder that is not the operating system's (/work, /root, /data, /builds...):
    # another checkout of the course elsewhere on the grading machine holds the hidden tests too
    hide += [p for p in Path("/").iterdir() if p.is_dir() and not p.is_symlink() and str(p) not in SYSTEM_DIRS
             and str(p) not in ("/tmp", "/lost+found")]
    scratch = ["/tmp", "/var/tmp", "/dev/shm", tempfile.gettempdir()]
    return plan_view(hide=hide, keep=sorted(keep), scratch=scratch)


def _job(sub: Submission, ag: Autograder, limits: Limits, view: ViewPlan, threads: int) -> Job:
    notebook = json.loads(sub.path.read_bytes())
    return Job(learner=sub.learner, notebook_name=notebook_file_name(notebook), timeout_s=limits.timeout_s,
               memory_mb=limits.memory_mb, disk_mb=limits.disk_mb, output_limit_mb=limits.output_mb,
               config=ag.config, seed=ag.config.get("seed") or 0,
               quiet_otter="otter" in json.dumps(notebook.get("cells", [])), has_files=bool(ag.files),
               ftlab_home=str(default_ftlab_home()), threads=threads, view=view)


def _stage(folder: Path, sub: Submission, ag: Autograder, job: Job) -> None:
    folder.mkdir(mode=0o700)
    shutil.copyfile(sub.path, folder / "submission")
    for name, data in ag.files.items():
        target = folder / "files" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    (folder / "job.json").write_text(job.to_json(), encoding="utf-8")


def _remove_stale_work_folders() -> None:
    """Work folders (copies of submissions) left by batches that were killed outright."""
    for folder in Path(tempfile.gettempdir()).glob("ftlab-grade-*-*"):
        try:
            pid = int(folder.name.split("-")[2])
            if folder.stat().st_uid != os.getuid():
                continue
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (ValueError, IndexError, OSError):
            continue


def grade_batch(paths: Sequence[str | Path], *, autograder: str | Path, out: str | Path = "grading-results",
                jobs: int = 1, limits: Limits = Limits(), isolation: str = "auto", regrade: bool = False,
                allow_read: Sequence[str | Path] = (), save_notebooks: bool = False,
                progress: bool = True, shard: Shard | None = None) -> BatchReport:
    """Grade every submission in `paths` with the otter autograder zip `autograder`; see the module.
    With `shard` (Shard(2, 3)), only that share of the learners (ftlab.grade.shards), plus OUT/shard.json."""
    started = time.monotonic()
    ag = load_autograder(autograder)
    out = Path(out)
    try:
        (out / "results").mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise GradingCannotRun(f"cannot write results to {out}: {error}") from None
    out = out.resolve()
    (out / MANIFEST).unlink(missing_ok=True)  # written again only when this run finishes as a shard
    _remove_stale_work_folders()
    work_root = Path(tempfile.mkdtemp(prefix=f"ftlab-grade-{os.getpid()}-"))
    try:
        return _grade(paths, ag, out, jobs, limits, isolation, regrade, allow_read, save_notebooks, progress,
                      work_root, started, shard)
    finally:
        shutil.rmtree(work_root, ignore_errors=True)


def _grade(paths, ag, out, jobs, limits, isolation, regrade, allow_read, save_notebooks, progress, work_root,
           started, shard):
    everyone = find_submissions(paths, staging=work_root / "unpacked", exclude=[out, ag.path])
    # names come from the whole class (so "alice (2)" is the same on every machine), then the share
    subs = [s for s in everyone if shard.holds(s.learner)] if shard else everyone
    meta = {"autograder": str(ag.path), "autograder_sha256": ag.sha256, "grader_version": GRADER_VERSION}
    results: dict[str, SubmissionResult] = {}
    written: dict[Path, str] = {}  # every result file this run wrote or kept, as it was then
    to_run: list[Submission] = []
    kept_count = 0
    for sub in subs:
        path = out / "results" / f"{slug(sub.learner)}.json"
        kept = None if regrade else read_result(path)
        if kept and kept[0].sha256 == sub.sha256 and kept[1].get("autograder_sha256") == ag.sha256 \
                and kept[1].get("grader_version") == GRADER_VERSION and kept[0].status != "grader-error":
            results[sub.learner] = kept[0]
            written[path] = path.read_text(encoding="utf-8")  # kept as read: a later notebook cannot change it
            kept_count += 1
            continue
        reason = precheck(sub, ag.assignment_name)
        if reason:
            result = zero_result(sub, ag, "rejected", reason)
            written[path] = write_result(path, result, otter_results({}, dict.fromkeys(ag.questions, reason), ag),
                                         meta)
            results[sub.learner] = result
        else:
            to_run.append(sub)
    notes = [f"kept {kept_count} results from an earlier run (same file, same autograder)"] if kept_count else []
    if shard:
        notes.insert(0, f"shard {shard}: {len(subs)} of the class's {len(everyone)} submissions "
                        "(by sha256 of the learner's name; `ftlab grade merge` joins the shards)")
    view = _view_inputs([Path(p).resolve() for p in paths], out, ag.path, work_root,
                        [Path(p).resolve() for p in allow_read])
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = sandbox_environment(threads)
    chosen = Isolation("process")
    if to_run:
        probe_job = _job(to_run[0], ag, limits, view, threads)
        chosen = probe_isolation(isolation, job=probe_job, slots=jobs, env=env, work_root=work_root)
    # the grading code must stay the same for the whole batch: without namespaces a notebook could
    # rewrite it; with them it is read-only to notebooks, so a change is an upgrade or an edit from outside
    # (ftlab's in-kernel check would then take the new source for tampering, and mis-score the notebook)
    before = _grader_files_digest() if to_run else None
    slots: queue.Queue[int] = queue.Queue()
    for k in range(jobs):
        slots.put(k)
    broken = threading.Event()
    stopping = threading.Event()  # interrupted: what is still running is killed, and not saved

    def grade_one(index: int, sub: Submission) -> SubmissionResult:
        slot = slots.get()
        try:
            if stopping.is_set() or broken.is_set():
                return zero_result(sub, ag, "grader-error", "interrupted before it was graded")
            job = _job(sub, ag, limits, view, threads).replace(
                mode=chosen.mode, uid=None if chosen.uid_base is None else chosen.uid_base + slot,
                save_notebook=save_notebooks)
            staging = work_root / f"job-{index}"
            _stage(staging, sub, ag, job)
            outcome = run_sandbox(staging, {n: d.decode("utf-8") for n, d in ag.tests.items()}, isolation=chosen,
                                  timeout_s=limits.timeout_s, env=env, log=work_root / f"job-{index}.log")
            if stopping.is_set():  # killed by the interruption, not by its own doing: graded next run
                shutil.rmtree(staging, ignore_errors=True)
                return zero_result(sub, ag, "grader-error", "interrupted while graded")
            result, otter = interpret(outcome, sub, ag, limits)
            if before is not None and _grader_files_digest() != before:
                broken.set()
                if chosen.mode != "process":  # not the notebook's doing: not saved, graded on the next run
                    shutil.rmtree(staging, ignore_errors=True)
                    return zero_result(sub, ag, "grader-error", "ftlab's or otter's files changed while it was "
                                       "graded (an upgrade or an edit); graded again on the next run")
                result = zero_result(sub, ag, "crashed", "tampering: the notebook changed the grader's own files "
                                                   "(ftlab or otter); the batch stops", outcome.seconds)
                otter = None
            if save_notebooks and outcome.result and outcome.result.get("notebook"):
                from .reports import write_atomic

                write_atomic(out / "notebooks" / f"{slug(sub.learner)}.ipynb", outcome.result["notebook"])
            if result.status != "grader-error":  # a grader error is retried next time
                otter = otter or otter_results({}, dict.fromkeys(ag.questions, result.reason), ag)
                path = out / "results" / f"{slug(sub.learner)}.json"
                written[path] = write_result(path, result, otter, meta)
            shutil.rmtree(staging, ignore_errors=True)
            return result
        except Exception as error:  # noqa: BLE001 - one submission's trouble never stops the batch
            return zero_result(sub, ag, "grader-error", f"{type(error).__name__}: {error}")
        finally:
            slots.put(slot)

    bar = None
    if progress and to_run:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(to_run), desc="grading", unit="notebook", file=sys.stderr, mininterval=1.0,
                   dynamic_ncols=True)
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(grade_one, i, sub): sub for i, sub in enumerate(to_run)}
            try:
                _collect(futures, results, bar, broken)
            except BaseException:  # Ctrl-C or SIGTERM (a cancelled CI job): stop now, don't drain the queue
                stopping.set()
                pool.shutdown(wait=False, cancel_futures=True)
                kill_running()
                raise
    except BaseException:
        kill_running()
        raise
    finally:
        stop_adopting()  # nothing a notebook started outlives the batch; the caller's later children are its own
        if bar is not None:
            bar.close()
    if broken.is_set():
        raise GradingCannotRun(
            "a notebook changed the grader's own files (ftlab or otter) while graded without namespaces; "
            "reinstall them and grade again (results so far are kept)" if chosen.mode == "process" else
            "ftlab's or otter's files changed during the batch (an upgrade or an edit of the installed code), so "
            "the rest would be graded by different code; results so far are kept: run the same command again "
            "to grade the rest with the new code")
    ordered = [results[s.learner] for s in subs if s.learner in results]
    changed = _write_again_if_changed(written)
    if changed:
        notes.append(f"{len(changed)} result file(s) changed after they were written (by a notebook graded later: "
                     f"{', '.join(p.name for p in changed[:5])}); written again from the grades")
    questions = list(ag.questions)
    report_name = f"ftlab grade: {ag.assignment_name or ag.path.name}"
    write_csv(out / "grades.csv", ordered, questions)
    write_junit(out / "junit.xml", ordered, questions, name=report_name)
    if shard:
        write_manifest(out, shard=shard, everyone=everyone, results=ordered, autograder_sha256=ag.sha256,
                       questions=dict(ag.questions), report_name=report_name, grader_version=GRADER_VERSION)
    return BatchReport(ordered, questions, chosen, limits, time.monotonic() - started,
                       len(to_run), out, notes + list(ag.notes) + [f"isolation: {n}" for n in chosen.notes])


def _write_again_if_changed(written: dict[Path, str]) -> list[Path]:
    """Without namespaces a notebook can write anywhere the grader can, other learners' result files
    included: each file is put back as the grader wrote it. Returns those that had changed."""
    from .reports import write_atomic

    changed = []
    for path, text in written.items():
        try:
            same = path.read_text(encoding="utf-8") == text
        except (OSError, UnicodeDecodeError):
            same = False
        if not same:
            write_atomic(path, text)
            changed.append(path)
    return changed


def format_report(report: BatchReport) -> str:
    """The terminal summary: the table, counts, protections, where the files are."""
    lines = [summary_table(report.results, report.questions), ""]
    counts = {}
    for r in report.results:
        counts[r.status] = counts.get(r.status, 0) + 1
    total = sum(r.total for r in report.results)
    possible = sum(r.max_total for r in report.results) or 1
    lines.append(f"{len(report.results)} submissions: " + ", ".join(f"{n} {s}" for s, n in counts.items())
                 + f"; mean {100 * total / possible:.0f}% of the points")
    rate = report.graded / report.seconds * 60 if report.graded and report.seconds else 0
    lines.append(f"graded {report.graded} in {report.seconds:.0f} s ({rate:.1f} per minute)" if report.graded
                 else "nothing needed grading")
    lines.append(f"protections ({report.isolation.mode}):")
    for name, active, detail in report.isolation.protections(report.limits):
        lines.append(f"  [{'x' if active else ' '}] {name}: {detail}")
    lines += [f"note: {n}" for n in report.notes]
    lines.append(f"wrote {report.out / 'grades.csv'}, {report.out / 'junit.xml'}, {report.out / 'results'}/")
    return "\n".join(lines)


def _collect(futures: dict, results: dict, bar, broken: threading.Event) -> None:
    """Take each submission's result as it finishes; after tampering with the grader, stop the rest."""
    for future in concurrent.futures.as_completed(futures):
        result = future.result()
        results[result.learner] = result
        if bar is not None:
            bar.set_postfix_str(f"{result.learner}: {result.total:g}/{result.max_total:g}", refresh=False)
            bar.update()
        if broken.is_set():
            for other in futures:
                other.cancel()
            kill_running()


def grade_from_cli(args) -> int:
    """`ftlab grade`: 0 when grading ran (whatever the scores), 1 when it could not run."""
    def stop(signum, frame):
        raise KeyboardInterrupt

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stop) if in_main else None
    try:
        path = args.autograder or find_lesson_autograder(args.lesson, args.autograders)
        limits = Limits(timeout_s=args.timeout, memory_mb=args.memory_mb)
        report = grade_batch(args.submissions, autograder=path, out=args.out, jobs=args.jobs, limits=limits,
                             isolation=args.isolation, regrade=args.regrade, allow_read=args.allow_read or (),
                             save_notebooks=args.save_notebooks, progress=not args.quiet,
                             shard=getattr(args, "shard", None))
    except (AutograderError, NoSubmissions, SandboxError, GradingCannotRun) as error:
        print(f"ftlab grade: grading could not run: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ftlab grade: interrupted; results written so far are kept (run again to resume)", file=sys.stderr)
        return 130
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    print(format_report(report))
    if report.grader_errors:
        print(f"ftlab grade: the grader failed on {len(report.grader_errors)} submissions "
              f"({', '.join(r.learner for r in report.grader_errors[:5])}): see the reason column; "
              "run again to retry them", file=sys.stderr)
        return 1
    return 0
