"""Grades to a learning management system without copying: a Canvas gradebook import CSV.

    report = canvas_gradebook("grading-results", roster="canvas-export.csv",
                              assignment="Lesson 02 (12345)")     # writes grading-results/canvas.csv
    report.missing      -> roster students without a submission (their cell is left blank)
    report.unmatched    -> submissions no roster row claims (not in the file: fix the roster)

Canvas imports a CSV whose first columns are Student, ID, SIS User ID, SIS Login ID, Section (in that
order), then one column per assignment: "Name (id)" updates the assignment with that Canvas id, a
bare name creates a new assignment. Canvas's own gradebook export has exactly these columns and a
"Points Possible" row under the header, so the export itself is the roster: each roster row is a
student, and the column `match` (default "SIS Login ID") holds what the grader calls that learner
(the submission's file name without .ipynb). A learner "section_b/zed", "zed/lesson02" or "zed (2)"
also matches "zed" (a folder part; the duplicate marker dropped); letter case is ignored. Nothing
here talks to Canvas: the instructor imports the file (Grades > Import).
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from .reports import SubmissionResult, read_result, spreadsheet_text, write_atomic
from .shards import learner_key

__all__ = ["canvas_gradebook", "format_canvas_report", "CanvasReport", "CANVAS_COLUMNS", "read_batch_results"]

CANVAS_COLUMNS = ("Student", "ID", "SIS User ID", "SIS Login ID", "Section")
_POINTS_ROW = "Points Possible"


@dataclass
class CanvasReport:
    path: Path
    students: int  # roster rows written
    scored: int  # of them with a score
    missing: list[str] = field(default_factory=list)  # roster students without a submission
    unmatched: list[str] = field(default_factory=list)  # learners no roster row claims
    several: list[str] = field(default_factory=list)  # "student: a, a (2) -> 5": the best counted
    not_graded: list[str] = field(default_factory=list)  # grader errors: left blank


def read_batch_results(out: str | Path) -> tuple[list[SubmissionResult], list[str]]:
    """The results of the learners in OUT/grades.csv (a batch's or a merge's), and the learners of the
    CSV without a saved result (grader errors). Result files of learners no longer in the CSV (an
    earlier run's) are left out."""
    out = Path(out)
    try:
        with open(out / "grades.csv", newline="", encoding="utf-8") as handle:
            listed = [row[0] for row in list(csv.reader(handle))[1:] if row]
    except OSError as error:
        raise ValueError(f"{out} holds no grades.csv ({error.strerror}): pass a folder `ftlab grade` or "
                         "`ftlab grade merge` wrote") from None
    results = {}
    for path in sorted((out / "results").glob("*.json")):
        read = read_result(path)
        if read is not None and spreadsheet_text(read[0].learner) in listed:  # the CSV's cells are guarded
            results[spreadsheet_text(read[0].learner)] = read[0]
    return [results[name] for name in listed if name in results], [name for name in listed if name not in results]


def _keys(learner: str) -> list[str]:
    """What a learner may be called in the roster, most specific first: the whole name, then each
    folder part from the file's up ("section_b/zed" -> zed, "zed/lesson02" -> lesson02, then zed)."""
    name = learner_key(learner)
    return list(dict.fromkeys(k.casefold() for k in (name, *reversed(name.split("/"))) if k))


def _number(value: float) -> str:
    return f"{value:g}"


def canvas_gradebook(out: str | Path, *, roster: str | Path, assignment: str, match: str = "SIS Login ID",
                     path: str | Path | None = None) -> CanvasReport:
    """Write a Canvas gradebook import CSV (default OUT/canvas.csv) with each roster student's total
    for `assignment` ("Lesson 02 (12345)" as Canvas's export names it, or a new name), from the
    results in OUT. Every text cell is guarded as in grades.csv (reports.spreadsheet_text)."""
    out = Path(out)
    path = Path(path) if path else out / "canvas.csv"
    if not assignment.strip():
        raise ValueError("the assignment column needs a name: as Canvas's export writes it, e.g. "
                         "'Lesson 02 (12345)', or a new name to create an assignment")
    try:
        text = Path(roster).read_text(encoding="utf-8-sig")  # Canvas and Excel may start with a BOM
    except OSError as error:
        raise ValueError(f"cannot read the roster {roster}: {error.strerror}") from None
    reader = csv.DictReader(io.StringIO(text))
    columns = reader.fieldnames or []
    if match not in columns:
        raise ValueError(f"the roster {roster} has no column {match!r} to match learners by; its columns: "
                         f"{', '.join(map(repr, columns)) or 'none'} (--match COLUMN)")
    students = [row for row in reader if (row.get("Student") or "").strip() != _POINTS_ROW]
    results, not_graded = read_batch_results(out)
    by_key: dict[str, list[int]] = {}
    for i, row in enumerate(students):
        by_key.setdefault((row.get(match) or "").strip().casefold(), []).append(i)
    claimed: dict[int, list[SubmissionResult]] = {}
    report = CanvasReport(path, len(students), 0, not_graded=not_graded)
    for result in results:
        rows = next((by_key[k] for k in _keys(result.learner) if k in by_key), None)
        if rows is None:
            report.unmatched.append(result.learner)
        else:
            for i in rows:
                claimed.setdefault(i, []).append(result)
    possible = max((r.max_total for r in results), default=0.0)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([spreadsheet_text(c) for c in (*CANVAS_COLUMNS, assignment)])
    writer.writerow([_POINTS_ROW, "", "", "", "", _number(possible)])
    for i, row in enumerate(students):
        mine = claimed.get(i, [])
        best = max(mine, key=lambda r: r.total, default=None)
        if len(mine) > 1:
            report.several.append(f"{row.get(match)}: {', '.join(r.learner for r in mine)} -> {best.total:g} "
                                  "(the highest counts)")
        if best is None:
            report.missing.append(row.get(match) or row.get("Student") or f"row {i + 2}")
        else:
            report.scored += 1
        writer.writerow([spreadsheet_text(row.get(c) or "") for c in CANVAS_COLUMNS]
                        + ["" if best is None else _number(best.total)])  # blank: Canvas leaves it as it was
    write_atomic(path, buffer.getvalue())
    return report


def format_canvas_report(report: CanvasReport) -> str:
    lines = [f"wrote {report.path}: {report.scored} of {report.students} roster students scored"]
    for title, names in (("no submission (left blank)", report.missing),
                         ("submissions no roster row matches (not in the file: add them to the roster, or "
                          "use --match)", report.unmatched),
                         ("several submissions for one student", report.several),
                         ("not graded, the grader failed (left blank; grade again)", report.not_graded)):
        if names:
            more = f" and {len(names) - 20} more" if len(names) > 20 else ""
            lines.append(f"{title}: {', '.join(names[:20])}{more}")
    return "\n".join(lines)
