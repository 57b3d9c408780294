"""ftlab grade: a crafted class graded in one batch, the reports it writes, resuming, exit status.

The lesson (tests/grading_fixtures/tiny-lesson) is assigned with `otter assign` once per session;
tests/grading_fixtures/class_spec.py makes the class and says what each submission must get.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

from ftlab.cli import main
from ftlab.grade.autograder import AutograderError, find_lesson_autograder
from ftlab.grade.in_kernel import cell_source
from ftlab.grade.job import Job
from ftlab.grade.reports import SubmissionResult, spreadsheet_text, summary_table, write_csv, write_junit
from ftlab.grade.submissions import find_submissions, notebook_file_name, precheck, slug
from ftlab.grade.view import plan_view

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "grading_fixtures"
QUESTIONS = ["q1", "q2", "q3"]
TIMEOUT_S = 30  # per submission in the batch: two crafted notebooks run into it
SECRET = "assert square(-4) == 16"  # in the grader's environment; no notebook may see it


def _load_spec():
    spec = importlib.util.spec_from_file_location("class_spec", FIXTURES / "class_spec.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class_spec = _load_spec()


def _cli(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ftlab", "grade", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def _csv(path: Path) -> dict[str, dict]:
    with open(path, newline="") as handle:
        return {row["learner"]: row for row in csv.DictReader(handle)}


# --- one assignment and one batch per session ------------------------------------------------

def _assign(source: Path, folder: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "otter", "assign", str(source), str(folder / "dist")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (zip_path,) = (folder / "dist" / "autograder").glob("*-autograder_*.zip")
    return {"zip": zip_path, "student": folder / "dist" / "student" / source.name}


@pytest.fixture(scope="session")
def assignment(tmp_path_factory):
    """The tiny lesson (exception-style tests) run through `otter assign`: autograder zip, student notebook."""
    return _assign(FIXTURES / "tiny-lesson" / "tiny-lesson.ipynb", tmp_path_factory.mktemp("assigned"))


@pytest.fixture(scope="session")
def ok_assignment(tmp_path_factory):
    """The same lesson with otter's other test format (OK-format doctests)."""
    folder = tmp_path_factory.mktemp("assigned-ok")
    source = folder / "source" / "tiny-lesson.ipynb"
    source.parent.mkdir()
    (source.parent / "data.txt").write_bytes((FIXTURES / "tiny-lesson" / "data.txt").read_bytes())
    return _assign(class_spec.ok_format_variant(FIXTURES / "tiny-lesson" / "tiny-lesson.ipynb", source), folder)


@pytest.fixture(scope="session")
def batch(assignment, tmp_path_factory):
    """The whole crafted class, graded once by the command line with two jobs."""
    base = tmp_path_factory.mktemp("batch")
    folder = class_spec.build_class(assignment["student"], base / "class")
    env = {**os.environ, "GRADER_SECRET_TOKEN": SECRET}
    started = time.monotonic()
    done = _cli(str(folder), "--autograder", str(assignment["zip"]), "--out", str(base / "out"), "--jobs", "2",
                "--timeout", str(TIMEOUT_S), "--save-notebooks", "--quiet", env=env)
    return {"done": done, "out": base / "out", "class": folder, "seconds": time.monotonic() - started,
            "namespaces": "protections (namespaces)" in done.stdout}


def test_batch_runs_and_exits_zero_whatever_the_scores(batch):
    done = batch["done"]
    assert done.returncode == 0, done.stderr[-3000:]
    assert "protections (" in done.stdout and f"time limit: {TIMEOUT_S} s" in done.stdout
    for learner in class_spec.EXPECTED:
        assert learner in done.stdout  # the summary table lists everyone


@pytest.mark.parametrize("learner", sorted(class_spec.EXPECTED))
def test_each_submission_gets_its_expected_score_and_a_reason(batch, learner):
    spec = class_spec.EXPECTED[learner]
    if spec.get("needs_namespaces") and not batch["namespaces"]:
        pytest.skip("this machine cannot hide the grader's files (no Linux namespaces)")
    row = _csv(batch["out"] / "grades.csv")[spreadsheet_text(learner)]  # "=HYPERLINK(1+2)" -> "'=HYPERLINK..."
    assert [float(row[q]) for q in QUESTIONS] == list(spec["scores"]), row
    assert float(row["total"]) == sum(spec["scores"]) and float(row["possible"]) == 5
    assert row["status"] == spec["status"], row
    if spec.get("reason"):
        assert spec["reason"] in row["reason"], row
    if spec["status"] == "graded" and sum(spec["scores"]) == 5 and "reason" not in spec:
        assert row["reason"] == ""


def test_junit_has_a_suite_per_learner_and_a_failing_case_per_lost_point(batch):
    root = ET.parse(batch["out"] / "junit.xml").getroot()
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert set(suites) == set(class_spec.EXPECTED)
    assert int(root.get("tests")) == 3 * len(suites)
    failures = 0
    for learner, spec in class_spec.EXPECTED.items():
        suite = suites[learner]
        cases = {c.get("name"): c for c in suite.iter("testcase")}
        assert list(cases) == QUESTIONS
        for q, points, possible in zip(QUESTIONS, spec["scores"], (1, 2, 2)):
            failure = cases[q].find("failure")
            assert (failure is None) == (points == possible), (learner, q)
            if failure is not None:
                failures += 1
                assert failure.get("message").startswith(f"{points:g} of {possible:g} points")
        props = {p.get("name"): p.get("value") for p in suite.iter("property")}
        assert props["score"] == f"{sum(spec['scores']):g}/5" and props["status"] == spec["status"]
    assert int(root.get("failures")) == failures and int(root.get("errors")) == 0


def test_results_json_per_submission_in_otter_format_with_the_file_hash(batch):
    files = sorted((batch["out"] / "results").glob("*.json"))
    assert len(files) == len(class_spec.EXPECTED)
    by_learner = {json.loads(f.read_text())["ftlab"]["learner"]: json.loads(f.read_text()) for f in files}
    correct = by_learner["correct"]
    assert {t["name"] for t in correct["tests"] if "max_score" in t} == set(QUESTIONS)
    assert next(t for t in correct["tests"] if t["name"] == "q2")["score"] == 2.0
    import hashlib

    assert correct["ftlab"]["sha256"] == hashlib.sha256((batch["class"] / "correct.ipynb").read_bytes()).hexdigest()
    assert by_learner["empty"]["ftlab"]["status"] == "rejected"
    assert not list((batch["out"] / "results").glob(".*.tmp"))  # no half-written files


def test_the_same_submission_graded_twice_gets_the_same_score(batch):
    rows = _csv(batch["out"] / "grades.csv")
    assert rows["correct"]["total"] == rows["correct_copy"]["total"] == rows["section_b/zed"]["total"] == "5"
    assert rows["one_wrong"]["total"] == rows["section_b/yan"]["total"] == "4"


def test_hidden_tests_and_secrets_never_reach_the_notebook(batch):
    if not batch["namespaces"]:
        pytest.skip("needs Linux namespaces")
    (saved,) = (batch["out"] / "notebooks").glob("reads_hidden_tests-*.ipynb")
    printed = "".join("".join(o.get("text", "")) for c in json.loads(saved.read_text())["cells"]
                      for o in c.get("outputs", []))
    assert "found []" in printed


def test_tampering_is_reported_in_the_reason(batch):
    rows = _csv(batch["out"] / "grades.csv")
    assert "ftlab.measures.forgetting" in rows["tamper_ftlab"]["reason"]
    assert "abs" in rows["tamper_ftlab"]["reason"]
    assert "ftlab.measures" in rows["replaces_ftlab_modules"]["reason"]
    lies = rows["lies_about_values"]["reason"]
    assert "square() returned (Yes -> int)" in lies and "mean (AlwaysClose -> float)" in lies
    assert "forgot (AlsoClose -> float)" in lies
    assert "mean (a Mean that claims to be a float)" in rows["lies_about_types"]["reason"]


def test_no_learner_vanishes_and_no_cell_starts_a_formula(batch):
    """A zip member climbing out of the archive gets a rejected row (it used to vanish from every
    report); a file named like a formula is shown as text in the CSV, as it is in JUnit and the table."""
    with open(batch["out"] / "grades.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert len(rows) == 1 + len(class_spec.EXPECTED)
    for row in rows:
        for cell in [row[0], *row[-2:]]:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), row
    names = [row[0] for row in rows[1:]]
    assert "'=HYPERLINK(1+2)" in names and "section_b/../../tmp/climbs_out" in names
    suites = {s.get("name") for s in ET.parse(batch["out"] / "junit.xml").getroot().iter("testsuite")}
    assert "=HYPERLINK(1+2)" in suites and "section_b/../../tmp/climbs_out" in suites
    assert "=HYPERLINK(1+2)" in batch["done"].stdout and "section_b/../../tmp/climbs_out" in batch["done"].stdout


# --- resuming a batch that was killed ----------------------------------------------------------

def test_a_killed_batch_resumes_without_regrading_and_ends_with_the_same_csv(assignment, batch, tmp_path):
    names = ["correct", "empty", "not_a_notebook", "one_wrong", "raises"]
    folder = class_spec.build_class(assignment["student"], tmp_path / "class", names=names)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "ftlab", "grade", str(folder), "--autograder", str(assignment["zip"]),
            "--out", str(out), "--quiet"]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    deadline = time.monotonic() + 120
    while len(list((out / "results").glob("*.json"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # as harsh as it gets: no clean-up runs
    process.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in (out / "results").glob("*.json")}
    assert 3 <= len(done_before) < len(names), "kill it midway"
    for path in (out / "results").glob("*.json"):
        json.loads(path.read_text())  # every result file is whole
    resumed = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"kept {len(done_before)} results" in resumed.stdout
    for name, mtime in done_before.items():
        assert (out / "results" / name).stat().st_mtime_ns == mtime  # not graded again
    assert not list(Path(tempfile.gettempdir()).glob(f"ftlab-grade-{process.pid}-*"))  # its copies removed
    full = _csv(batch["out"] / "grades.csv")
    final = _csv(out / "grades.csv")
    assert list(final) == names
    for learner in names:  # same scores, status and reason as the uninterrupted batch
        assert final[learner] == full[learner]


def test_sigterm_stops_the_batch_at_once_and_a_rerun_completes_it(assignment, batch, tmp_path):
    """A cancelled CI job sends SIGTERM: the batch stops now (it used to grade every queued notebook
    first), saves nothing for the notebook it interrupted, and the next run finishes the class."""
    names = ["correct", "empty", "not_a_notebook", "one_wrong", "raises", "syntax_error"]
    folder = class_spec.build_class(assignment["student"], tmp_path / "class", names=names)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "ftlab", "grade", str(folder), "--autograder", str(assignment["zip"]),
            "--out", str(out), "--quiet", "--jobs", "1"]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((out / "results").glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr
    saved = list((out / "results").glob("*.json"))
    assert 1 <= len(saved) < len(names), f"{len(saved)} of {len(names)} graded: it went on after SIGTERM"
    for path in saved:
        assert json.loads(path.read_text())["ftlab"]["status"] != "crashed"  # nothing saved as the learner's fault
    resumed = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    full, final = _csv(batch["out"] / "grades.csv"), _csv(out / "grades.csv")
    assert list(final) == names
    for learner in names:
        assert final[learner] == full[learner]



@pytest.mark.parametrize("isolation", ["auto", "process"])
def test_grader_code_changing_mid_batch_stops_it_without_blaming_a_learner(assignment, batch, tmp_path, capsys,
                                                                           monkeypatch, isolation):
    """ftlab upgraded or edited while a class is graded (seen here: an edit to ftlab/pretrain.py during
    a batch of 30 made ftlab's in-kernel check restore "tampered" functions, and a correct notebook
    scored 5/11). With namespaces notebooks cannot write the grader's files, so the notebook graded at
    that moment is not saved and the batch stops; without them the notebook may be the culprit."""
    import ftlab.grade.batch

    names = ["correct", "one_wrong", "raises"]
    folder = class_spec.build_class(assignment["student"], tmp_path / "class", names=names)
    calls = []

    def digest():  # the batch's starting digest and the check after the first notebook agree; then it changes
        calls.append(1)
        return "the code the batch started with" if len(calls) <= 2 else "edited"

    monkeypatch.setattr(ftlab.grade.batch, "_grader_files_digest", digest)
    args = ["grade", str(folder), "--autograder", str(assignment["zip"]), "--out", str(tmp_path / "out"),
            "--jobs", "1", "--quiet", "--isolation", isolation]
    assert main(args) == 1
    err = capsys.readouterr().err
    saved = [json.loads(path.read_text())["ftlab"] for path in (tmp_path / "out" / "results").glob("*.json")]
    saved = {result["learner"]: result for result in saved}
    namespaces = batch["namespaces"] and isolation == "auto"
    if namespaces:
        assert "changed during the batch" in err and "run the same command again" in err
        assert list(saved) == ["correct"] and saved["correct"]["status"] == "graded"  # the rest: next run
    else:
        assert "changed the grader's own files" in err
        assert saved["one_wrong"]["status"] == "crashed" and "tampering" in saved["one_wrong"]["reason"]
    assert "raises" not in saved  # nothing started after the change
    monkeypatch.undo()
    assert main(args) == 0  # the same command, unchanged code: the class is finished
    if namespaces:
        final, full = _csv(tmp_path / "out" / "grades.csv"), _csv(batch["out"] / "grades.csv")
        assert {k: final[k] for k in names} == {k: full[k] for k in names}

# --- exit status: 0 when grading ran, 1 when it could not -----------------------------------

def test_only_unrunnable_submissions_still_grade_and_exit_zero(assignment, tmp_path, capsys):
    (tmp_path / "class").mkdir()
    (tmp_path / "class" / "empty.ipynb").write_bytes(b"")
    (tmp_path / "class" / "essay.pdf").write_bytes(b"%PDF-1.4 ...")
    code = main(["grade", str(tmp_path / "class"), "--autograder", str(assignment["zip"]), "--out", str(tmp_path / "out"),
                 "--quiet"])
    assert code == 0
    rows = _csv(tmp_path / "out" / "grades.csv")
    assert {r["status"] for r in rows.values()} == {"rejected"} and "essay.pdf" in rows


@pytest.mark.parametrize("case", ["bad autograder", "no submissions", "output not writable", "no lesson zip"])
def test_grading_that_cannot_run_exits_one_with_a_clear_message(assignment, tmp_path, capsys, case):
    notebook = tmp_path / "a.ipynb"
    notebook.write_text("{}")
    args = {"bad autograder": [str(notebook), "--autograder", str(notebook)],
            "no submissions": [str(tmp_path / "missing"), "--autograder", str(assignment["zip"])],
            "output not writable": [str(notebook), "--autograder", str(assignment["zip"]), "--out", str(notebook)],
            "no lesson zip": [str(notebook), "--lesson", "7", "--autograders", str(tmp_path)]}[case]
    if case != "output not writable":
        args += ["--out", str(tmp_path / "out")]
    assert main(["grade", *args, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "grading could not run" in err
    expected = {"bad autograder": "not a zip file", "no submissions": "does not exist",
                "output not writable": "cannot write results", "no lesson zip": "no autograder for lesson 07"}
    assert expected[case] in err


def test_process_isolation_still_undoes_tampering_with_ok_format_tests(ok_assignment, tmp_path):
    folder = class_spec.build_class(ok_assignment["student"], tmp_path / "class",
                                    names=["correct", "tamper_otter", "tamper_ftlab", "lies_about_values",
                                           "replaces_ftlab_modules", "rewrites_results", "patches_libraries"])
    done = _cli(str(folder), "--autograder", str(ok_assignment["zip"]), "--out", str(tmp_path / "out"),
                "--isolation", "process", "--jobs", "2", "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _csv(tmp_path / "out" / "grades.csv")
    expected = {"correct": "5", "tamper_otter": "1", "tamper_ftlab": "4", "lies_about_values": "2",
                "replaces_ftlab_modules": "4", "rewrites_results": "5", "patches_libraries": "1"}
    assert {k: r["total"] for k, r in rows.items()} == expected
    assert "[ ] no network" in done.stdout  # the summary says what is off
    # the detached process that gives every result file 5/5 died with its grading, and what it
    # rewrote meanwhile was put back: each results/*.json says what the CSV says, also a while later
    time.sleep(1.0)
    for path in (tmp_path / "out" / "results").glob("*.json"):
        meta = json.loads(path.read_text())["ftlab"]
        assert f"{meta['total']:g}" == expected[meta["learner"]], (path.name, meta["total"])


# --- the parts, without a kernel ---------------------------------------------------------------

ORPHANS = r"""
import os, subprocess, sys, time
from ftlab.grade import sandbox
NAP = [sys.executable, "-c", "import signal; signal.pause()"]  # waits for a signal, not for a clock
own = subprocess.Popen(NAP)                        # the caller's own child, started before grading
time.sleep(0.1)
sandbox._adopt_orphans()
LEAVE = f"import subprocess as s; print(s.Popen({NAP!r}, stdout=s.DEVNULL, stderr=s.DEVNULL).pid)"
left = subprocess.run([sys.executable, "-c", LEAVE], capture_output=True, text=True)
orphan = int(left.stdout)                          # its parent is gone: adopted by this process
time.sleep(0.2)
killed = sandbox._kill_orphans()
try:
    os.kill(orphan, 0)
    alive = True
except ProcessLookupError:
    alive = False
# a detached chain 120 processes deep, whose leaf waits: all of it dies in one call
open("chain.sh", "w").write('if [ "$1" -gt 0 ]; then sh chain.sh $(($1-1)); else exec ' + sys.executable
                            + ' -c "import signal; signal.pause()" ftlab-test-chain-leaf; fi\n')
subprocess.run([sys.executable, "-c", "import subprocess as s; s.Popen(['sh', 'chain.sh', '120'], "
                "start_new_session=True, stdout=s.DEVNULL, stderr=s.DEVNULL)"])
time.sleep(1.0)
def leaves():
    found = 0
    for entry in os.listdir("/proc"):
        try:
            found += (entry.isdigit() and entry != str(os.getpid())  # this script names the leaf too
                      and b"ftlab-test-chain-leaf" in open(f"/proc/{entry}/cmdline", "rb").read())
        except OSError:
            pass
    return found
had = leaves()
chain_killed = sandbox._kill_orphans()
sandbox.stop_adopting()  # the batch is over: later orphans are not adopted any more
later = subprocess.run([sys.executable, "-c", LEAVE], capture_output=True, text=True)
time.sleep(0.2)
after = int(open(f"/proc/{int(later.stdout)}/stat").read().rsplit(")", 1)[1].split()[1])
os.kill(int(later.stdout), 9)
print(killed, alive, own.poll() is None, had, chain_killed > 120, leaves(), after != os.getpid())
own.kill()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_CHILD_SUBREAPER is Linux's")
def test_orphans_a_notebook_leaves_are_killed_and_the_callers_own_children_spared(tmp_path):
    done = subprocess.run([sys.executable, "-c", ORPHANS], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # the orphan killed, the caller's own child alive; the chain's leaf found, all 121 killed, none left;
    # after the batch, an orphan goes to init, not to the caller
    assert done.stdout.split() == ["1", "False", "True", "1", "True", "0", "True"]


def test_lesson_autograder_is_found_by_its_two_digit_prefix_newest_first(tmp_path):
    folder = tmp_path / "build" / "autograder"
    for name in ["02_fine_tuning/02_fine_tuning-autograder_2025_01_01T00_00_00_000000.zip",
                 "02_fine_tuning/02_fine_tuning-autograder_2025_02_01T00_00_00_000000.zip",
                 "12_lora-autograder_2025_03_01T00_00_00_000000.zip", "01_intro-autograder_2025_01_01T00_00_00_0.zip"]:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")
    assert find_lesson_autograder(2, folder).name.startswith("02_fine_tuning-autograder_2025_02")
    assert find_lesson_autograder(12, folder).name.startswith("12_lora")
    with pytest.raises(AutograderError, match="01_intro-autograder"):  # lists what exists
        find_lesson_autograder(3, folder)


def test_submissions_from_folders_and_zips_get_unique_learner_names(tmp_path):
    (tmp_path / "class" / "group").mkdir(parents=True)
    (tmp_path / "class" / "alice.ipynb").write_text("{}")
    (tmp_path / "class" / "group" / "bob.ipynb").write_text("{}")
    (tmp_path / "class" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "class" / ".ipynb_checkpoints" / "alice-checkpoint.ipynb").write_text("{}")
    with zipfile.ZipFile(tmp_path / "class" / "carol.zip", "w") as z:  # one learner's otter export
        z.writestr("lesson.ipynb", "{}")
        z.writestr(".OTTER_LOG", "log")
    with zipfile.ZipFile(tmp_path / "section.zip", "w") as z:  # a class
        z.writestr("dan.ipynb", "{}")
        z.writestr("erin.ipynb", "{}")
    (tmp_path / "late").mkdir()
    (tmp_path / "late" / "alice.ipynb").write_text('{"cells": []}')
    (tmp_path / "class" / "mallory.ipynb").symlink_to(tmp_path / "late" / "alice.ipynb")  # e.g. a solution
    (tmp_path / "class" / "results").mkdir()  # an earlier run's results inside the class folder
    (tmp_path / "class" / "results" / "grades.csv").write_text("learner\n")
    subs = find_submissions([tmp_path / "class", tmp_path / "section.zip", tmp_path / "late" / "alice.ipynb"],
                            staging=tmp_path / "staging", exclude=[tmp_path / "class" / "results"])
    assert [s.learner for s in subs] == ["alice", "alice (2)", "carol", "group/bob", "mallory", "section/dan",
                                         "section/erin"]
    assert len({slug(s.learner) for s in subs}) == len(subs) and "/" not in slug("group/bob")
    mallory = next(s for s in subs if s.learner == "mallory")
    assert "symbolic link" in precheck(mallory, None)  # never followed


def test_precheck_turns_away_what_cannot_be_graded(tmp_path, assignment):
    student = json.loads(assignment["student"].read_text())
    cases = {"empty.ipynb": (b"", "empty"), "pic.ipynb": (b"\x89PNG\r\n", "not a Jupyter notebook"),
             "list.ipynb": (b"[1, 2]", "JSON without a list of cells"),
             "ok.ipynb": (json.dumps(student).encode(), None)}
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        (sub,) = find_submissions([tmp_path / name], staging=tmp_path / "s")
        got = precheck(sub, "tiny-lesson")
        assert (got is None) if reason is None else (reason in got), (name, got)
    (sub,) = find_submissions([tmp_path / "ok.ipynb"], staging=tmp_path / "s")
    assert "different lesson" in precheck(sub, "another-lesson")
    assert notebook_file_name(student) == "tiny-lesson.ipynb"


def test_view_plan_hides_folders_but_shows_what_python_needs(tmp_path):
    repo, home = tmp_path / "repo", tmp_path / "home"
    for path in [repo / ".venv" / "lib", repo / "src" / "ftlab", repo / "notebooks" / "source", home / ".ssh"]:
        path.mkdir(parents=True)
    (repo / "autograder.zip").write_bytes(b"")
    plan = plan_view(hide=[repo, home, repo / "autograder.zip", repo / "notebooks"],
                     keep=[repo / ".venv", repo / "src" / "ftlab", "/usr"])
    assert plan.covered == [(str(repo), False), (str(home), False)]  # inner folders are covered already
    assert plan.exposed == [str(repo / ".venv"), str(repo / "src" / "ftlab")]
    assert plan.read_only == ["/usr"] and plan.hidden_files == []
    assert "a system folder" in plan_view(hide=["/"], keep=[]).skipped[0]


def test_junit_survives_control_characters_and_ansi_colours(tmp_path):
    result = SubmissionResult("a&b <c>", {"q1": 0.0}, {"q1": 1.0}, "graded", "bad \x00 byte",
                              outputs={"q1": "\x1b[31mred\x1b[0m \x08 failure"})
    write_junit(tmp_path / "j.xml", [result], ["q1"])
    case = ET.parse(tmp_path / "j.xml").getroot().find("testsuite/testcase/failure")
    assert case.text == "red  failure" and case.get("message") == "0 of 1 points"
    assert "a&b <c>" in summary_table([result], ["q1"])


def test_grading_cell_runs_in_its_own_namespace():
    source = cell_source("_ftlab_grade(['t.py'], {}, 'nonce', 1.0)")
    compile(source, "<cell>", "exec")
    assert source.startswith("import builtins as _ftlab_builtins") and "del _ftlab_builtins" in source


def test_no_ftlab_function_looks_changed_when_nothing_was(tmp_path):
    """The tamper check compares every loaded ftlab function with its source: none may differ."""
    import importlib
    import pkgutil
    import types

    import ftlab

    for info in pkgutil.walk_packages(ftlab.__path__, "ftlab."):
        if info.name != "ftlab.__main__":
            importlib.import_module(info.name)
    space = {"__builtins__": __builtins__}
    exec((ROOT / "ftlab" / "grade" / "in_kernel.py").read_text(), space)
    assert space["_ftlab_changed_functions"]() == []
    import ftlab.measures

    original = ftlab.measures.forgetting
    try:
        ftlab.measures.forgetting = types.FunctionType((lambda h: 0.0).__code__, {}, "forgetting")
        assert space["_ftlab_changed_functions"]() == ["ftlab.measures.forgetting"]
    finally:
        ftlab.measures.forgetting = original


def test_public_autograder_holds_only_the_public_tests(assignment, tmp_path):
    from ftlab.grade.autograder import load_autograder
    from ftlab.grade.public import write_public_autograder

    zip_path = write_public_autograder(assignment["student"], tmp_path / "public.zip")
    public = load_autograder(zip_path)
    assert public.questions == {"q1": 1.0, "q2": 2.0, "q3": 2.0} and public.assignment_name == "tiny-lesson"
    assert not any(b"square(-4)" in text for text in public.tests.values())  # no hidden case
    assert b"def test_public_square" in public.tests["q1.py"]


def test_learners_public_checks_and_an_autograder_piped_through_stdin(assignment, tmp_path):
    folder = class_spec.build_class(assignment["student"], tmp_path / "class", names=["tamper_otter"])
    public = subprocess.run([sys.executable, "-m", "ftlab.grade.public", str(folder / "tamper_otter.ipynb"),
                             "--out", str(tmp_path / "public"), "--strict"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert public.returncode == 3, public.stderr[-2000:]  # a public test failed: --strict says so
    row = _csv(tmp_path / "public" / "tamper_otter" / "grades.csv")["tamper_otter"]
    assert row["q1"] == "0" and row["q3"] == "2"  # public cases only: q3's public case passes
    piped = subprocess.run([sys.executable, "-m", "ftlab", "grade", str(folder), "--autograder", "-",
                            "--out", str(tmp_path / "out"), "--quiet"], cwd=ROOT, input=assignment["zip"].read_bytes(),
                           capture_output=True, timeout=300)
    assert piped.returncode == 0, piped.stderr[-2000:]
    assert _csv(tmp_path / "out" / "grades.csv")["tamper_otter"]["total"] == "1"


# --- fair against answers that lie, robust against names and paths: the parts, without a kernel ---

def _in_kernel_space() -> dict:
    """The namespace the grading cell makes in the kernel: in_kernel.py and plain_values.py."""
    space = {"__builtins__": __builtins__}
    for name in ("in_kernel.py", "plain_values.py"):
        exec((ROOT / "ftlab" / "grade" / name).read_text(), space)
    return space


def test_csv_text_cells_that_would_start_a_formula_get_an_apostrophe(tmp_path):
    texts = ["=HYPERLINK(1+2)", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "alice", "'already", ""]
    results = [SubmissionResult(text, {"q1": 1.0}, {"q1": 1.0}, "graded", reason=text) for text in texts]
    write_csv(tmp_path / "grades.csv", results, ["q1"])
    with open(tmp_path / "grades.csv", newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    for text, row in zip(texts, rows):
        formula = text[:1] in ("=", "+", "-", "@", "\t", "\r")
        expected = "'" + text if formula else text
        assert row == [expected, "1", "1", "1", "graded", expected], row
    write_junit(tmp_path / "junit.xml", results, ["q1"])  # JUnit and the table are not spreadsheets
    names = [s.get("name") for s in ET.parse(tmp_path / "junit.xml").getroot().iter("testsuite")]
    assert names[0] == "=HYPERLINK(1+2)" and "=HYPERLINK(1+2)" in summary_table(results, ["q1"])


def test_zip_members_whose_path_leaves_the_archive_are_rejected_rows_never_unpacked(tmp_path):
    with zipfile.ZipFile(tmp_path / "section.zip", "w") as z:
        z.writestr("dan.ipynb", "{}")
        z.writestr("../../escaped.ipynb", "{}")
        z.writestr("/abs/rooted.ipynb", "{}")
        z.writestr("..\\..\\windows.ipynb", "{}")
    with zipfile.ZipFile(tmp_path / "erin.zip", "w") as z:  # one learner's export, with a climbing extra
        z.writestr("lesson.ipynb", "{}")
        z.writestr("../notes.txt", "hi")
    staging = tmp_path / "deep" / "staging"
    subs = find_submissions([tmp_path / "section.zip", tmp_path / "erin.zip"], staging=staging)
    by_name = {s.learner: s for s in subs}
    assert sorted(by_name) == sorted(["erin", "erin/../notes.txt", "section/../../escaped", "section//abs/rooted",
                                      "section/..\\..\\windows", "section/dan"])
    for name in ["erin/../notes.txt", "section/../../escaped", "section//abs/rooted", "section/..\\..\\windows"]:
        assert "path leaves the archive" in precheck(by_name[name], None)
    assert precheck(by_name["section/dan"], None) is not None  # "{}" is no notebook, but it is unpacked
    assert by_name["section/dan"].path.is_relative_to(staging)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(staging)]
    assert sorted(p.name for p in written) == ["erin.zip", "section.zip"]  # nothing outside the staging folder


class _Yes(int):
    def __eq__(self, other):
        return True

    __hash__ = int.__hash__


class _Close(float):
    def __sub__(self, other):
        return self

    def __rsub__(self, other):
        return self

    def __abs__(self):
        return self

    def __lt__(self, other):
        return True

    def __float__(self):
        return 2.5


class _Always(str):
    def __eq__(self, other):
        return True

    __hash__ = str.__hash__

    def __str__(self):
        return "yes"


class _ClaimsFloat:
    __class__ = property(lambda self: float)


def test_values_the_tests_use_are_plain_values_of_their_base_type(tmp_path):
    """The notebook's own subclasses (here: this test file's, outside the installed roots) become plain
    values, found inside containers and dataclasses too; installed code's subclasses (enum's, torch's)
    are kept; an object lying about its class is refused; a function's results are made plain."""
    import dataclasses
    import signal as signal_module

    import numpy as np
    import torch

    from ftlab.grade.runner import grader_code
    from ftlab.history import History

    space = _in_kernel_space()
    history = History(rows=[{"epoch": 0, "source_acc": _Close(0.9)}], best_epoch=0)
    parameter = torch.nn.Parameter(torch.ones(2))
    lying_tensor = torch.ones(2).as_subclass(type("Lying", (torch.Tensor,), {"__eq__": lambda s, o: True}))
    env = {"a": _Yes(8), "f": _Close(2.0), "s": _Always("no"), "c": _ClaimsFloat(), "history": history,
           "nested": [1, {"k": (_Close(3.0), _Yes(1))}, {_Always("key")}], "square": lambda x: _Yes(x + x),
           "np_float": np.float64(2.0), "signal": signal_module.SIGINT, "parameter": parameter,
           "tensor": lying_tensor, "array": np.array([_Yes(4), 2], dtype=object), "untouched": "x"}
    notes = []
    space["_ftlab_make_plain"](env, sorted(env), notes, grader_code()["roots"])
    for name, base, value in [("a", int, 8), ("f", float, 2.0), ("s", str, "no")]:
        assert type(env[name]) is base and env[name] == value and not env[name] == value + base(1)
    assert type(history.rows[0]["source_acc"]) is float and history.rows[0]["source_acc"] == 0.9  # in place
    inner = env["nested"][1]["k"]
    assert [type(v) for v in inner] == [float, int] and type(next(iter(env["nested"][2]))) is str
    assert type(env["square"](3)) is int and env["square"](3) == 6
    assert type(env["tensor"]) is torch.Tensor and not torch.equal(env["tensor"], torch.zeros(2))
    assert type(env["array"][0]) is int
    assert env["np_float"] is not None and type(env["np_float"]) is np.float64  # a C type: plain already
    assert env["signal"] is signal_module.SIGINT and env["parameter"] is parameter  # installed code's own
    assert env["untouched"] == "x"
    with pytest.raises(AssertionError, match="claims to be a float"):
        env["c"] == 1.0  # noqa: B015 - the comparison itself must fail
    assert not isinstance(env["c"], float)
    text = " ".join(notes)
    assert "a (_Yes -> int)" in text and "c (a _ClaimsFloat that claims to be a float)" in text
    assert "what square() returned (_Yes -> int)" in text and "history (_Close -> float)" in text
    assert dataclasses.is_dataclass(history)


def test_values_too_large_to_check_are_refused_not_skipped():
    space = _in_kernel_space()
    space["_FTLAB_MAX_VALUES"] = 1000
    env = {"big": [[1.0] for _ in range(2000)], "fine": list(range(10_000))}  # plain numbers cost nothing
    notes = []
    space["_ftlab_make_plain"](env, ["big", "fine"], notes, [])
    assert "more than 1,000 values" in notes[0] and env["fine"] == list(range(10_000))
    with pytest.raises(AssertionError):
        len(env["big"])


_STAND_INS = {
    "sys.modules": "sys.modules['ftlab.measures'] = fake",
    "package attribute": "del sys.modules['ftlab.measures']; ftlab.measures = fake",
    "forged __file__": "fake.__file__ = ftlab.measures.__file__; sys.modules['ftlab.measures'] = ftlab.measures = fake",
    "blocked": "sys.modules['ftlab.measures'] = None",
    "fake package first on sys.path": "[sys.modules.pop(n) for n in list(sys.modules) if n.startswith('ftlab')]; "
                                      "sys.path.insert(0, str(tmp))",
}


@pytest.mark.parametrize("case", sorted(_STAND_INS))
def test_tests_import_ftlab_from_the_graders_own_files(case, tmp_path):
    """However the notebook swapped ftlab's modules, what a test imports is the module of ftlab's file."""
    (tmp_path / "ftlab").mkdir()
    (tmp_path / "ftlab" / "__init__.py").write_text("")
    (tmp_path / "ftlab" / "measures.py").write_text("def forgetting(history):\n    return 12.0\n")
    script = f"""
import sys, types, json, pathlib
tmp = pathlib.Path({str(tmp_path)!r})
space = {{"__builtins__": __builtins__}}
for name in ("in_kernel.py", "plain_values.py"):
    exec((pathlib.Path({str(ROOT / "ftlab" / "grade")!r}) / name).read_text(), space)
import ftlab, ftlab.measures
fake = types.ModuleType("ftlab.measures")
fake.forgetting = lambda history: 12.0
{_STAND_INS[case]}
notes = []
space["_ftlab_own_ftlab"]({str(ROOT / "ftlab")!r}, notes)
from ftlab import measures
import ftlab.measures as again
print(json.dumps({{"file": measures.__file__, "same": measures is again, "notes": notes}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["file"] == str(ROOT / "ftlab" / "measures.py") and seen["same"]
    if case != "fake package first on sys.path":  # that one is not in sys.modules: nothing to report
        assert any("tampering" in note and "ftlab.measures" in note for note in seen["notes"]), seen["notes"]


def test_job_is_typed_and_survives_json_exactly():
    view = plan_view(hide=["/root"], keep=["/usr"], scratch=["/tmp"])
    job = Job(learner="alice", notebook_name="lesson.ipynb", timeout_s=60.0, memory_mb=512, disk_mb=64,
              output_limit_mb=2.0, config={"seed": 3}, seed=3, quiet_otter=True, has_files=False,
              ftlab_home="/nowhere", threads=1, view=view).replace(mode="namespaces", uid=64001)
    assert Job.from_json(job.to_json()) == job and ("/root", False) in Job.from_json(job.to_json()).view.covered
    with pytest.raises(ValueError, match=r"unknown keys \['colour'\], missing \['seed'\]"):
        Job.from_json(json.dumps({**{k: v for k, v in json.loads(job.to_json()).items() if k != "seed"},
                                  "colour": "red"}))
