"""Grading throughput of `ftlab grade`: a class of submissions graded with --jobs 1, then --jobs 2.

    python bench/grading.py                                   # tests' tiny lesson, a class of 30
    python bench/grading.py --autograder build/autograder/02_...-autograder_....zip --submissions DIR
    python bench/grading.py --jobs 1 2 4 --size 60
    python bench/grading.py --otter-run 10                   # plain `otter run` on 10 of them too
    python bench/grading.py --lesson 02 --size 30 --jobs 2   # a class of a real lesson (make assign's code)

Without --submissions the class is made from tests/grading_fixtures (correct, wrong, raising,
syntax-error, tampering... but no time-limit cases, which would measure the time limit instead),
repeated to --size notebooks. Without --autograder the tiny lesson is assigned with `otter assign`.
With --lesson the class is made from that course lesson: its solution, the untouched student
notebook, the course test's deliberate wrong answer, the solution with a cell that raises, and the
solution with a syntax error, in turn.
Each run grades every submission from scratch (--regrade, a fresh results folder) through the
command line, as CI would. Reports submissions per minute and seconds per submission, including the
batch's fixed costs (reading the autograder, probing the sandbox), and how each kind of submission
scored: copies of one notebook must all score the same, and none may crash or time out (else exit 1);
written to bench/results/grading.json (grading-lessonNN-SIZE.json with --lesson).
The machine is shared and noisy (±25%): repeat for a range.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "grading_fixtures"
RESULTS = ROOT / "bench" / "results"
BENCH_CASES = ["correct", "one_wrong", "raises", "syntax_error", "prints_megabytes", "deletes_files",
               "tamper_otter", "tamper_ftlab", "tamper_tests", "reads_hidden_tests"]


def _load(path: Path, name: str):
    """A Python file that is not in a package (tests' fixtures, scripts/), loaded as a module."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _class_spec():
    return _load(FIXTURES / "class_spec.py", "class_spec")


def assign_tiny_lesson(folder: Path) -> tuple[Path, Path]:
    """(autograder zip, student notebook) of the tests' tiny lesson."""
    subprocess.run([sys.executable, "-m", "otter", "assign", str(FIXTURES / "tiny-lesson" / "tiny-lesson.ipynb"),
                    str(folder / "dist")], check=True, capture_output=True)
    (zip_path,) = (folder / "dist" / "autograder").glob("*-autograder_*.zip")
    return zip_path, folder / "dist" / "student" / "tiny-lesson.ipynb"


def make_class(student: Path, folder: Path, size: int) -> Path:
    spec = _class_spec()
    notebook = json.loads(student.read_text())
    folder.mkdir(parents=True)
    for i in range(size):
        case = BENCH_CASES[i % len(BENCH_CASES)]
        (folder / f"learner{i:03d}-{case}.ipynb").write_bytes(spec.make_notebook(notebook, spec.SUBMISSIONS[case]))
    return folder


def make_lesson_class(prefix: str, folder: Path, size: int) -> tuple[Path, Path]:
    """(autograder zip, class folder) for the course lesson whose name starts with `prefix`."""
    assign = _load(ROOT / "scripts" / "assign.py", "ftlab_assign")
    (source,) = [path for path in assign.lessons() if path.stem.startswith(prefix)] or [None]
    if source is None:
        raise SystemExit(f"no lesson {prefix!r} in notebooks/source")
    made = assign.assign(source, notebooks=folder / "student", autograder=folder / "autograder")
    solution = json.loads(made.solution.read_text())
    wrong_spec = json.loads(source.read_text())["metadata"]["ftlab"]["wrong_answer"]

    def variant(kind: str) -> dict:
        notebook = json.loads(json.dumps(solution))
        cells = notebook["cells"]
        code = [i for i, cell in enumerate(cells) if cell["cell_type"] == "code"]
        if kind == "untouched":
            return json.loads(made.student.read_text())
        if kind == "wrong":
            for cell in cells:
                text = "".join(cell["source"])
                if wrong_spec["find"] in text:
                    cell["source"] = text.replace(wrong_spec["find"], wrong_spec["replace"])
        elif kind in ("raises", "syntax_error"):
            source_text = "raise RuntimeError('a learner left this in')" if kind == "raises" else "def broken(:\n"
            cells.insert(code[len(code) // 2], {"cell_type": "code", "metadata": {}, "execution_count": None,
                                                "outputs": [], "source": source_text})
        return notebook

    kinds = ["solution", "untouched", "wrong", "raises", "syntax_error"]
    (folder / "class").mkdir()
    for i in range(size):
        kind = kinds[i % len(kinds)]
        (folder / "class" / f"learner{i:03d}-{kind}.ipynb").write_text(json.dumps(variant(kind)))
    return made.autograder, folder / "class"



def grade(submissions: Path, autograder: Path, jobs: int, out: Path, timeout: float) -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ftlab", "grade", str(submissions), "--autograder", str(autograder),
                           "--out", str(out), "--jobs", str(jobs), "--timeout", str(timeout), "--regrade", "--quiet"],
                          cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"ftlab grade failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    count = sum(1 for _ in (out / "results").glob("*.json"))
    isolation = re.search(r"protections \((\w+)\)", done.stdout)
    return {"jobs": jobs, "submissions": count, "seconds": round(seconds, 1),
            "per_minute": round(count / seconds * 60, 1), "seconds_each": round(seconds / count, 2),
            "isolation": isolation.group(1) if isolation else "?", **scores_by_kind(out / "grades.csv")}


def scores_by_kind(csv_path: Path) -> dict:
    """How each kind of submission scored ("learner007-wrong": kind "wrong"). Every copy of one kind is
    the same notebook, so every copy must get the same score: a difference is a grading failure."""
    import csv
    from collections import Counter, defaultdict

    seen = defaultdict(Counter)
    with open(csv_path, newline="") as handle:
        for row in csv.DictReader(handle):
            kind = row["learner"].split("-", 1)[-1]
            seen[kind][f"{row['total']}/{row['possible']} {row['status']}"] += 1
    failures = [f"{kind}: {dict(counts)}" for kind, counts in seen.items() if len(counts) > 1]
    failures += [f"{kind}: {status}" for kind, counts in seen.items() for status in counts
                 if status.split()[1] in ("crashed", "timed-out", "grader-error")]
    return {"scores": {kind: dict(counts) for kind, counts in seen.items()}, "failures": failures}


def otter_run(submissions: Path, autograder: Path, count: int, out: Path) -> dict:
    """The baseline: plain `otter run`, one notebook after the other (no sandbox, no parallelism)."""
    notebooks = sorted(submissions.glob("*.ipynb"))[:count]
    out.mkdir(parents=True, exist_ok=True)
    started, hung = time.perf_counter(), []
    for notebook in notebooks:
        try:  # otter run has no time limit; a notebook that deletes otter's folders makes it wait forever
            subprocess.run([sys.executable, "-m", "otter", "run", "-a", str(autograder), "-o", str(out),
                            str(notebook)], capture_output=True, timeout=120)
        except subprocess.TimeoutExpired:
            hung.append(notebook.name)
    seconds = time.perf_counter() - started
    return {"jobs": "otter run", "submissions": len(notebooks), "seconds": round(seconds, 1),
            "per_minute": round(len(notebooks) / seconds * 60, 1), "seconds_each": round(seconds / len(notebooks), 2),
            "isolation": "none", "hung_and_killed_after_120_s": hung}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--autograder", type=Path, help="an otter autograder zip (default: the tiny test lesson)")
    parser.add_argument("--submissions", type=Path, help="a folder of submissions (default: a made-up class)")
    parser.add_argument("--lesson", help="make the class from this course lesson (e.g. 02)")
    parser.add_argument("--size", type=int, default=30, help="size of the made-up class")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--otter-run", type=int, default=0, metavar="N",
                        help="also time plain `otter run` on the first N submissions, for comparison")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]  # the machine is shared: say how busy it was
    with tempfile.TemporaryDirectory(prefix="ftlab-bench-grading-") as tmp:
        tmp = Path(tmp)
        autograder, student = args.autograder, None
        if autograder is None:
            autograder, student = assign_tiny_lesson(tmp)
        submissions = args.submissions
        if args.lesson:
            autograder, submissions = make_lesson_class(args.lesson, tmp, args.size)
        if submissions is None:
            if student is None:
                raise SystemExit("with --autograder, pass --submissions too (the made-up class fits the tiny lesson)")
            submissions = make_class(student, tmp / "class", args.size)
        runs = []
        for jobs in args.jobs:
            run = grade(submissions, autograder, jobs, tmp / f"out-{jobs}", args.timeout)
            runs.append(run)
            print(f"jobs {jobs}: {run['submissions']} submissions in {run['seconds']:.0f} s = "
                  f"{run['per_minute']:.1f} per minute ({run['seconds_each']:.2f} s each, {run['isolation']}); "
                  f"failures: {'; '.join(run['failures']) or 'none'}", flush=True)
        if args.otter_run:
            run = otter_run(submissions, autograder, args.otter_run, tmp / "otter-run")
            runs.append(run)
            print(f"plain otter run: {run['submissions']} submissions in {run['seconds']:.0f} s = "
                  f"{run['per_minute']:.1f} per minute ({run['seconds_each']:.2f} s each; hung: "
                  f"{', '.join(run['hung_and_killed_after_120_s']) or 'none'})", flush=True)
    made_up = f"made-up class of {args.size}" + (f" from lesson {args.lesson}" if args.lesson else "")
    result = {"autograder": autograder.name, "submissions": str(args.submissions or made_up),
              "cpus": os.cpu_count(), "machine": platform.machine(), "load_before": load_before,
              "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    name = f"grading-lesson{args.lesson}-{args.size}.json" if args.lesson else "grading.json"
    (RESULTS / name).write_text(json.dumps(result, indent=1))
    return 1 if any(run.get("failures") for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
