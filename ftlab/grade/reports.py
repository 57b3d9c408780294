"""What a batch writes: one results JSON per submission, the class CSV, JUnit XML, a terminal summary.

    write_result(path, result, otter_dict, meta)      # atomically: a killed batch leaves no half file
    write_csv(path, results, questions)               # learner, q1, q2, ..., total, possible, status, reason
                                                      # (text cells safe from spreadsheet formulas)
    write_junit(path, results, questions, name=...)   # a testsuite per learner, a testcase per question
    print(summary_table(results, questions))

Every file is written to a temporary name next to it, then renamed over it (os.replace), so readers
(and a resumed batch) see the old file or the new one, never half of one.
"""
from __future__ import annotations

import csv
import io
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .. import paths

__all__ = ["SubmissionResult", "write_atomic", "write_result", "read_result", "write_csv", "write_junit",
           "summary_table", "spreadsheet_text"]

STATUSES = ("graded", "rejected", "timed-out", "crashed", "grader-error")


@dataclass(frozen=True)
class SubmissionResult:
    """One learner's grade: points per question, and in words why any are missing."""

    learner: str
    scores: dict[str, float]  # question -> points earned
    possible: dict[str, float]  # question -> points possible
    status: str  # graded | rejected (not run) | timed-out | crashed | grader-error (not the learner's doing)
    reason: str = ""  # "" when there is nothing to say
    sha256: str = ""  # of the submitted file
    origin: str = ""  # where it came from
    seconds: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict, repr=False)  # question -> otter's feedback
    reused: bool = False  # read back from an earlier run (same file, same autograder)

    @property
    def total(self) -> float:
        return round(sum(self.scores.values()), 5)

    @property
    def max_total(self) -> float:
        return round(sum(self.possible.values()), 5)

    def __repr__(self) -> str:
        why = f", {self.reason!r}" if self.reason else ""
        return f"SubmissionResult({self.learner!r}: {self.total:g}/{self.max_total:g}, {self.status}{why})"


def write_atomic(path: Path, text: str) -> None:
    """`text` as UTF-8 (newlines untouched), atomically and readable by this account only (0600):
    these files hold learners' grades."""
    paths.write_atomic(path, text.encode("utf-8"), mode=0o600)


def write_result(path: Path, result: SubmissionResult, otter: dict, meta: dict) -> str:
    """otter's results dict, plus an "ftlab" section: learner, hashes, status, reason, scores.
    Returns the text written (the batch keeps it, to undo any later change by a notebook)."""
    document = dict(otter)
    document["ftlab"] = {**meta, "learner": result.learner, "origin": result.origin, "sha256": result.sha256,
                         "status": result.status, "reason": result.reason, "scores": result.scores,
                         "possible": result.possible, "total": result.total, "seconds": round(result.seconds, 2)}
    text = json.dumps(document, indent=1, ensure_ascii=False)
    write_atomic(path, text)
    return text


def read_result(path: Path) -> tuple[SubmissionResult, dict] | None:
    """A result written by write_result (and its "ftlab" section), or None if unreadable."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        meta = document["ftlab"]
        # feedback exists only where the notebook was graded; otherwise the batch made the result
        # without any (zero_result) and JUnit shows the reason: read back, it must show the same, so
        # that a resumed batch or merged shards write the JUnit file one uninterrupted batch writes
        outputs = {t["name"]: t.get("output", "") for t in document.get("tests", [])
                   if "max_score" in t} if meta["status"] == "graded" else {}
        result = SubmissionResult(meta["learner"], meta["scores"], meta["possible"], meta["status"],
                                  meta.get("reason", ""), meta["sha256"], meta.get("origin", ""),
                                  meta.get("seconds", 0.0), outputs, reused=True)
        return result, meta
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _number(value: float) -> str:
    return f"{value:g}"


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(text: str) -> str:
    """`text` as a CSV cell a spreadsheet shows and never evaluates: a cell starting with = + - @, tab or
    CR (a learner's file `=HYPERLINK(...).ipynb`, an error message) gets a leading apostrophe (OWASP's
    rule against CSV formula injection). Spreadsheets hide the apostrophe; a CSV reader sees it."""
    text = str(text)
    return "'" + text if text.startswith(_FORMULA_START) else text


def write_csv(path: Path, results: Sequence[SubmissionResult], questions: Sequence[str]) -> None:
    """One row per learner: a column per question, the total, what was possible, status, reason.
    Every text cell goes through spreadsheet_text; numbers are ours and written as they are. Lines end
    in CRLF (RFC 4180): then a CR inside a reason is quoted too (with "\n" endings it was not, and split
    the row in two for every CSV reader)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([spreadsheet_text(t) for t in ["learner", *questions, "total", "possible", "status", "reason"]])
    for r in results:
        writer.writerow([spreadsheet_text(r.learner), *(_number(r.scores.get(q, 0.0)) for q in questions),
                         _number(r.total), _number(r.max_total), spreadsheet_text(r.status),
                         spreadsheet_text(r.reason)])
    write_atomic(path, buffer.getvalue())


_NOT_XML = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _clean(text: str, limit: int = 20000) -> str:
    text = _NOT_XML.sub("", _ANSI.sub("", str(text)))
    return text if len(text) <= limit else text[:limit] + f"\n... ({len(text) - limit} more characters)"


def write_junit(path: Path, results: Sequence[SubmissionResult], questions: Sequence[str], *,
                name: str = "ftlab grade") -> None:
    """A testsuite per learner and a testcase per question: failure = points missing (the learner's
    work), error = the grader could not grade it (not the learner's doing)."""
    root = ET.Element("testsuites", name=_clean(name))
    totals = {"tests": 0, "failures": 0, "errors": 0}
    for r in results:
        suite = ET.SubElement(root, "testsuite", name=_clean(r.learner), time=f"{r.seconds:.2f}")
        props = ET.SubElement(suite, "properties")
        for key, value in (("score", f"{r.total:g}/{r.max_total:g}"), ("status", r.status),
                           ("reason", r.reason), ("origin", r.origin), ("sha256", r.sha256)):
            ET.SubElement(props, "property", name=key, value=_clean(value, 2000))
        counts = {"tests": 0, "failures": 0, "errors": 0}
        for q in questions:
            got, possible = r.scores.get(q, 0.0), r.possible.get(q, 0.0)
            case = ET.SubElement(suite, "testcase", classname=_clean(r.learner), name=q, time="0")
            counts["tests"] += 1
            detail = _clean(r.outputs.get(q) or r.reason)
            if r.status == "grader-error":
                counts["errors"] += 1
                ET.SubElement(case, "error", message=_clean(f"not graded: {r.reason}", 500), type=r.status).text = detail
            elif got < possible:
                counts["failures"] += 1
                message = f"{got:g} of {possible:g} points" + (f" ({r.status}: {r.reason})" if r.status != "graded" else "")
                ET.SubElement(case, "failure", message=_clean(message, 500), type=r.status).text = detail
        for key in counts:
            suite.set(key, str(counts[key]))
            totals[key] += counts[key]
    for key, value in totals.items():
        root.set(key, str(value))
    root.set("time", f"{sum(r.seconds for r in results):.2f}")
    ET.indent(root)
    write_atomic(path, '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n")


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def summary_table(results: Sequence[SubmissionResult], questions: Sequence[str], *, reason_width: int = 70) -> str:
    """A fixed-width table: learner, score, each question, status, reason."""
    name_width = min(32, max([len("learner"), *(len(r.learner) for r in results)]))
    q_width = max([5, *(len(q) for q in questions)])
    statuses = [r.status + (" (kept)" if r.reused else "") for r in results]
    status_width = max([6, *map(len, statuses)])
    header = f"{'learner':<{name_width}}  {'score':>9}  " + "  ".join(f"{q:>{q_width}}" for q in questions) \
        + f"  {'status':<{status_width}}  reason"
    lines = [header, "-" * len(header)]
    for r, status in zip(results, statuses):
        score = f"{r.total:g}/{r.max_total:g}"
        cells = "  ".join(f"{_number(r.scores.get(q, 0.0)):>{q_width}}" for q in questions)
        lines.append(f"{_shorten(r.learner, name_width):<{name_width}}  {score:>9}  {cells}  "
                     f"{status:<{status_width}}  {_shorten(r.reason, reason_width)}")
    return "\n".join(lines)
