"""A learner's notebooks checked against the public tests they carry, the way the grader will run them.

    python -m ftlab.grade.public notebooks/02_fine_tuning.ipynb [...] --out public-results

`otter assign` stores each question's public tests in the student notebook's metadata
(metadata.otter.tests). For each notebook this writes an autograder zip holding only those tests
and grades the notebook with it through ftlab grade: same sandbox, same checks at the
`grader.check` cells, and per lesson a CSV and a JUnit file (a testcase per question) that CI shows.
Hidden tests are not involved: they never are in the learners' repository.

Exit status as `ftlab grade`: 0 when the checks ran (whatever passed), 1 when they could not run;
with --strict, 3 when a public test failed (for CI without a JUnit reporter).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import zipfile
from pathlib import Path

__all__ = ["write_public_autograder", "main"]


def write_public_autograder(notebook: str | Path, zip_path: str | Path, *, files=()) -> Path:
    """An otter autograder zip with the public tests stored in `notebook`, and support `files`."""
    metadata = json.loads(Path(notebook).read_text(encoding="utf-8")).get("metadata", {}).get("otter", {})
    tests = metadata.get("tests") or {}
    if not tests:
        raise ValueError(f"{notebook} carries no public tests (metadata.otter.tests): is it a student "
                         "notebook written by `otter assign`?")
    config = {"assignment_name": metadata["assignment_name"]} if metadata.get("assignment_name") else {}
    with zipfile.ZipFile(zip_path, "w") as archive:
        for question, test in tests.items():
            text = test if isinstance(test, str) else f"OK_FORMAT = True\n\ntest = {test!r}\n"
            archive.writestr(f"tests/{question}.py", text)
        archive.writestr("otter_config.json", json.dumps(config))
        for file in map(Path, files):
            archive.write(file, f"files/{file.name}")
    return Path(zip_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ftlab.grade.public", description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("public-results"), help="one folder per notebook in it")
    parser.add_argument("--files", nargs="*", default=[], help="support files the notebooks open")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per notebook")
    parser.add_argument("--isolation", choices=["auto", "namespaces", "process"], default="auto")
    parser.add_argument("--strict", action="store_true", help="exit 3 when a public test failed")
    args = parser.parse_args(argv)
    from .batch import GradingCannotRun, format_report, grade_batch
    from .sandbox import Limits, SandboxError

    lost, broken = [], False
    with tempfile.TemporaryDirectory(prefix="ftlab-public-") as folder:
        for notebook in args.notebooks:
            print(f"== {notebook}", flush=True)
            try:
                zip_path = write_public_autograder(notebook, Path(folder) / f"{notebook.stem}.zip", files=args.files)
                report = grade_batch([notebook], autograder=zip_path, out=args.out / notebook.stem, regrade=True,
                                     limits=Limits(timeout_s=args.timeout), isolation=args.isolation)
            except (ValueError, OSError, SandboxError, GradingCannotRun) as error:
                print(f"public tests could not run on {notebook}: {error}", file=sys.stderr)
                broken = True
                continue
            print(format_report(report), flush=True)
            broken |= bool(report.grader_errors)
            lost += [r.learner for r in report.results if r.total < r.max_total]
    if broken:
        return 1
    return 3 if args.strict and lost else 0


if __name__ == "__main__":
    sys.exit(main())
