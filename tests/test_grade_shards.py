"""ftlab grade --shard K/N on several machines, `ftlab grade merge`, and the Canvas gradebook CSV.

One class (part of tests/grading_fixtures' crafted class, with a section zip and a second file of
one learner's name) is graded once as one batch and once as 3 shards, each shard a real batch of
its own; the merge must write what the one batch wrote, but for timing fields.
"""
from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

from ftlab.cli import main
from ftlab.grade.reports import spreadsheet_text
from ftlab.grade.shards import MANIFEST, Shard, learner_key, shard_of

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "grading_fixtures"
SHARDS = 3
# quick notebooks only (none runs into the time limit): rejected ones, right, wrong, raising, lying
NAMES = ["correct", "correct_copy", "one_wrong", "raises", "syntax_error", "lies_about_values", "=HYPERLINK(1+2)",
         "not_a_notebook", "empty", "other_lesson"]


def _load_spec():
    spec = importlib.util.spec_from_file_location("class_spec", FIXTURES / "class_spec.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class_spec = _load_spec()


def _grade(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ftlab", "grade", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """The class graded as one batch, and as 3 shards (each its own batch, its own OUT)."""
    base = tmp_path_factory.mktemp("shards")
    done = subprocess.run([sys.executable, "-m", "otter", "assign", str(FIXTURES / "tiny-lesson" / "tiny-lesson.ipynb"),
                           str(base / "dist")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (autograder,) = (base / "dist" / "autograder").glob("*-autograder_*.zip")
    student_path = base / "dist" / "student" / "tiny-lesson.ipynb"
    folder = class_spec.build_class(student_path, base / "class", names=NAMES)
    student = json.loads(student_path.read_text())
    with zipfile.ZipFile(folder / "section_b.zip", "w") as archive:  # a section: learners section_b/zed...
        for member, source in {**class_spec.ZIPPED, **class_spec.CLIMBING}.items():
            archive.writestr(f"{member}.ipynb", class_spec.make_notebook(student, class_spec.SUBMISSIONS[source]))
    (base / "late").mkdir()  # a second file named correct: the learner "correct (2)"
    (base / "late" / "correct.ipynb").write_bytes(class_spec.make_notebook(student, class_spec.SUBMISSIONS["raises"]))
    common = [str(folder), str(base / "late"), "--autograder", str(autograder), "--jobs", "2", "--timeout", "60",
              "--save-notebooks", "--quiet"]
    whole = _grade(*common, "--out", str(base / "whole"))
    shards = [_grade(*common, "--out", str(base / f"shard-{k}"), "--shard", f"{k}/{SHARDS}")
              for k in range(1, SHARDS + 1)]
    return {"base": base, "whole": whole, "shards": shards, "autograder": autograder}


def _shard_dirs(graded, order=range(1, SHARDS + 1)) -> list[str]:
    return [str(graded["base"] / f"shard-{k}") for k in order]


def _learners(csv_path: Path) -> list[str]:
    with open(csv_path, newline="") as handle:
        return [row[0] for row in list(csv.reader(handle))[1:]]


def _without_times(path: Path) -> bytes:
    root = ET.parse(path).getroot()
    for element in root.iter():
        element.attrib.pop("time", None)
    return ET.tostring(root)


def _result_without_times(path: Path) -> dict:
    document = json.loads(path.read_text())
    document["ftlab"].pop("seconds")
    return document


def _notebook_without_times(path: Path) -> dict:
    notebook = json.loads(path.read_text())
    for cell in notebook.get("cells", []):
        cell.get("metadata", {}).pop("execution", None)  # nbclient's timestamps
        cell.pop("id", None)  # nbformat invents a random id, each run anew, for cells saved without one
    return notebook


def test_the_batch_and_every_shard_run_and_say_which_share_they_graded(graded):
    assert graded["whole"].returncode == 0, graded["whole"].stderr[-3000:]
    total = len(_learners(graded["base"] / "whole" / "grades.csv"))
    assert total == len(NAMES) + 4  # + section_b's three members + "correct (2)"
    for k, done in enumerate(graded["shards"], start=1):
        assert done.returncode == 0, done.stderr[-3000:]
        share = len(_learners(graded["base"] / f"shard-{k}" / "grades.csv"))
        assert f"shard {k}/{SHARDS}: {share} of the class's {total} submissions" in done.stdout


def test_shares_are_disjoint_cover_the_class_and_follow_the_documented_rule(graded):
    everyone = _learners(graded["base"] / "whole" / "grades.csv")
    seen: dict[str, int] = {}
    for k in range(1, SHARDS + 1):
        manifest = json.loads((graded["base"] / f"shard-{k}" / MANIFEST).read_text())
        assert (manifest["index"], manifest["count"]) == (k, SHARDS)
        shard_csv = graded["base"] / f"shard-{k}" / "grades.csv"
        assert [spreadsheet_text(n) for n in manifest["learners"]] == _learners(shard_csv)
        for learner in manifest["learners"]:
            assert learner not in seen, f"{learner} in shards {seen[learner]} and {k}"
            seen[learner] = k
            # the rule docs/grading.md states, computed here independently
            key = learner[:-len(" (2)")] if learner.endswith(" (2)") else learner
            assert int(hashlib.sha256(key.encode()).hexdigest()[:16], 16) % SHARDS + 1 == k
    assert sorted(spreadsheet_text(n) for n in seen) == sorted(everyone)
    assert seen["correct"] == seen["correct (2)"]  # one learner's files never split


def test_merged_shards_equal_one_batch_but_for_timing(graded, tmp_path, capsys):
    whole = graded["base"] / "whole"
    for order in ([1, 2, 3], [3, 1, 2]):  # the order the shards are given in does not matter
        merged = tmp_path / f"merged-{''.join(map(str, order))}"
        assert main(["grade", "merge", *_shard_dirs(graded, order), "--out", str(merged)]) == 0
        assert f"merged {SHARDS} shards: {len(_learners(whole / 'grades.csv'))} submissions" in capsys.readouterr().out
        assert (merged / "grades.csv").read_bytes() == (whole / "grades.csv").read_bytes()
        assert _without_times(merged / "junit.xml") == _without_times(whole / "junit.xml")
        names = sorted(p.name for p in (whole / "results").iterdir())
        assert sorted(p.name for p in (merged / "results").iterdir()) == names
        for name in names:
            assert _result_without_times(merged / "results" / name) == _result_without_times(whole / "results" / name)
        notebooks = sorted(p.name for p in (whole / "notebooks").iterdir())
        assert notebooks and sorted(p.name for p in (merged / "notebooks").iterdir()) == notebooks
        for name in notebooks:
            assert _notebook_without_times(merged / "notebooks" / name) == \
                _notebook_without_times(whole / "notebooks" / name)
            (shard,) = [p for p in _shard_dirs(graded) if (Path(p) / "notebooks" / name).exists()]
            assert (merged / "notebooks" / name).read_bytes() == (Path(shard) / "notebooks" / name).read_bytes()
        assert not (merged / MANIFEST).exists()  # a merged folder is a batch's folder
    again = main(["grade", "merge", *_shard_dirs(graded), "--out", str(tmp_path / "merged-123")])
    assert again == 0  # merging into the same folder again is fine


def _edit_manifest(folder: Path, change) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    change(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest))


def _copy_shard(graded, k: int, tmp_path: Path, change=None) -> str:
    copy = tmp_path / f"copy-of-shard-{k}"
    shutil.copytree(graded["base"] / f"shard-{k}", copy)
    if change:
        _edit_manifest(copy, change)
    return str(copy)


def _refusal(case: str, graded, tmp_path) -> tuple[list[str], str]:
    """The folders given to merge, and what the refusal must say."""
    s1, s2, s3 = _shard_dirs(graded)
    copy = lambda k, change=None: _copy_shard(graded, k, tmp_path, change)  # noqa: E731
    if case == "a shard missing":
        return [s1, s3], "missing shard 2/3"
    if case == "a shard twice":
        return [s1, s2, s3, copy(1)], "are both shard 1/3"
    if case == "another autograder":
        return [s1, copy(2, lambda m: m.update(autograder_sha256="0" * 64)), s3], "another autograder"
    if case == "another class":
        return [s1, s2, copy(3, lambda m: m["class"].update(submissions=99))], "saw another class (99 submissions"
    if case == "another N":
        return [s1, s2, copy(3, lambda m: m.update(count=4, shard="3/4"))], "is a share of 4 machines"
    if case == "learners overlap":
        first_of_1 = json.loads((Path(s1) / MANIFEST).read_text())["learners"][0]
        return ([s1, copy(2, lambda m: m["learners"].append(first_of_1)), s3],
                f"learners graded in more than one shard: {first_of_1}")
    if case == "not a shard":
        return [s1, s2, s3, str(graded["base"] / "whole")], "has no shard.json"
    if case == "grader errors":
        return ([s1, copy(2, lambda m: m.update(grader_errors=["bob"])), s3],
                "the grader failed on (bob): run that shard again")
    assert case == "into a shard"
    return [s1, s2, s3], "is one of the shards"


@pytest.mark.parametrize("case", ["a shard missing", "a shard twice", "another autograder", "another class",
                                  "another N", "learners overlap", "not a shard", "grader errors", "into a shard"])
def test_merge_refuses_what_is_not_one_batch_and_says_why(graded, tmp_path, capsys, case):
    folders, expected = _refusal(case, graded, tmp_path)
    out = folders[0] if case == "into a shard" else str(tmp_path / "merged")
    before = sorted(p.name for p in Path(folders[0]).rglob("*"))
    assert main(["grade", "merge", *folders, "--out", out]) == 1
    err = capsys.readouterr().err
    assert "ftlab grade merge: cannot merge:" in err and expected in err, err
    assert not (tmp_path / "merged").exists()  # refused before writing anything
    assert sorted(p.name for p in Path(folders[0]).rglob("*")) == before


def test_merge_refuses_a_folder_holding_other_learners_results(graded, tmp_path, capsys):
    (tmp_path / "merged" / "results").mkdir(parents=True)
    (tmp_path / "merged" / "results" / "someone-else-0123abcd.json").write_text("{}")
    assert main(["grade", "merge", *_shard_dirs(graded), "--out", str(tmp_path / "merged")]) == 1
    assert "already holds results of learners not in these shards" in capsys.readouterr().err
    assert not (tmp_path / "merged" / "grades.csv").exists()


@pytest.mark.parametrize("value, says", [("0/3", "1 <= K <= N"), ("4/3", "1 <= K <= N"), ("-1/3", "1 <= K <= N"),
                                         ("1/0", "must be at least 1"), ("3", "write K/N"), ("a/b", "write K/N"),
                                         ("1/3/5", "write K/N"), ("", "write K/N")])
def test_bad_shard_values_are_refused_with_what_is_valid(value, says, capsys, tmp_path):
    with pytest.raises(SystemExit) as stopped:
        main(["grade", str(tmp_path), "--lesson", "1", f"--shard={value}"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "--shard" in err and says in err, err
    with pytest.raises(ValueError, match=re.escape(says)):
        Shard.parse(value)


def test_shares_depend_on_the_learner_alone():
    """Disjoint and covering for every N; a learner's files stay together; adding learners moves nobody;
    shares are even enough to be worth it."""
    names = [f"learner{i:04d}" for i in range(3000)] + ["section_b/zed", "=HYPERLINK(1+2)", "alice", "alice (2)"]
    for count in (1, 2, 3, 7):
        shards = [Shard(k, count) for k in range(1, count + 1)]
        for name in names:
            assert sum(s.holds(name) for s in shards) == 1
        assert shard_of("alice", count) == shard_of("alice (2)", count) == shard_of("alice (13)", count)
    before = {name: shard_of(name, 5) for name in names}
    more = names + [f"new{i}" for i in range(500)] + ["aaa"]  # new learners anywhere in the sorted order
    assert all(shard_of(name, 5) == before[name] for name in more if name in before)
    sizes = [sum(shard_of(n, 4) == k for n in names[:3000]) for k in range(1, 5)]
    assert all(650 <= size <= 850 for size in sizes), sizes  # 750 each, with hashing's spread
    assert learner_key("group/bob (2)") == "group/bob" and learner_key("x (2) y") == "x (2) y"


def test_canvas_gradebook_csv_from_the_merged_results(graded, tmp_path, capsys):
    merged = tmp_path / "merged"
    assert main(["grade", "merge", *_shard_dirs(graded), "--out", str(merged)]) == 0
    with open(merged / "grades.csv", newline="") as handle:
        totals = {row["learner"]: row["total"] for row in csv.DictReader(handle)}
    roster = tmp_path / "export.csv"  # as Canvas exports a gradebook: BOM, a Points Possible row
    rows = [["Student", "ID", "SIS User ID", "SIS Login ID", "Section", "Lesson 1 (42)"],
            ["    Points Possible", "", "", "", "", "5"],
            ["Lee, Correct", "101", "S101", "CORRECT", "Section A", ""],  # case ignored; and "correct (2)"
            ["Zed, Zoe", "102", "S102", "zed", "Section B", ""],  # learner section_b/zed
            ["=cmd|' /C calc'!A0", "103", "S103", "=HYPERLINK(1+2)", "@Section", ""],  # cells that are formulas
            ["Absent, Al", "104", "S104", "al", "Section A", "3"],  # no submission
            ["Wrong, One", "105", "S105", "one_wrong", "Section A", ""]]
    with open(roster, "w", newline="", encoding="utf-8-sig") as handle:
        csv.writer(handle).writerows(rows)
    assert main(["grade", "canvas", str(merged), "--roster", str(roster), "--assignment", "Lesson 1 (42)"]) == 0
    out = capsys.readouterr().out
    with open(merged / "canvas.csv", newline="", encoding="utf-8") as handle:
        written = list(csv.reader(handle))
    assert written[0] == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section", "Lesson 1 (42)"]
    assert written[1] == ["Points Possible", "", "", "", "", "5"]
    best_correct = max(float(totals["correct"]), float(totals["correct (2)"]))
    assert written[2] == ["Lee, Correct", "101", "S101", "CORRECT", "Section A", f"{best_correct:g}"]
    assert written[3][-1] == totals["section_b/zed"] and written[6][-1] == totals["one_wrong"]
    assert written[4] == ["'=cmd|' /C calc'!A0", "103", "S103", "'=HYPERLINK(1+2)", "'@Section",
                          totals["'=HYPERLINK(1+2)"]]
    assert written[5] == ["Absent, Al", "104", "S104", "al", "Section A", ""]  # blank: Canvas keeps its grade
    assert len(written) == 2 + 5
    assert "4 of 5 roster students scored" in out and "no submission (left blank): al" in out
    assert "correct, correct (2)" in out  # two submissions for one student: said, the best counted
    assert "submissions no roster row matches" in out and "section_b/yan" in out and "raises" in out
    bad = tmp_path / "bad.csv"
    bad.write_text("name,email\nA,a@x\n")
    assert main(["grade", "canvas", str(merged), "--roster", str(bad), "--assignment", "L1"]) == 1
    err = capsys.readouterr().err
    assert "no column 'SIS Login ID'" in err and "'name', 'email'" in err, err


def test_canvas_matches_folder_parts_and_leaves_grader_errors_blank(tmp_path, capsys):
    """Without a kernel: a results folder written by the batch's own writers."""
    from ftlab.grade.reports import SubmissionResult, write_csv, write_result

    possible = {"q1": 1.0, "q2": 2.0}
    results = [SubmissionResult("zed/lesson02", {"q1": 1.0, "q2": 1.5}, possible, "graded"),
               SubmissionResult("section_a/kim", {"q1": 0.0, "q2": 0.0}, possible, "rejected", "empty file"),
               SubmissionResult("broken", {"q1": 0.0, "q2": 0.0}, possible, "grader-error", "runner died"),
               SubmissionResult("old", {"q1": 1.0, "q2": 2.0}, possible, "graded")]
    for r in results:
        if r.status != "grader-error":  # as the batch: a grader error is not saved, only listed in the CSV
            write_result(tmp_path / "results" / f"{r.learner.replace('/', '_')}.json", r, {"tests": []}, {})
    write_csv(tmp_path / "grades.csv", results[:3], list(possible))  # "old": an earlier run's, not in the CSV
    roster = tmp_path / "roster.csv"
    roster.write_text("Student,ID,SIS User ID,SIS Login ID,Section\nZ,1,,Zed,\nK,2,,kim,\nB,3,,broken,\nO,4,,old,\n")
    assert main(["grade", "canvas", str(tmp_path), "--roster", str(roster), "--assignment", "New lab",
                 "--csv", str(tmp_path / "to-canvas.csv")]) == 0
    with open(tmp_path / "to-canvas.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][-1] == "New lab" and rows[1] == ["Points Possible", "", "", "", "", "3"]
    assert [row[-1] for row in rows[2:]] == ["2.5", "0", "", ""]  # kim's rejected file is a 0; broken, old: blank
    out = capsys.readouterr().out
    assert "not graded, the grader failed (left blank; grade again): broken" in out
    assert "no submission (left blank): broken, old" in out
