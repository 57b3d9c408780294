"""The course, graded end to end with otter: every lesson found in notebooks/source/.

Once per session, every lesson is assigned into a temporary folder (the same code as `make assign`,
scripts/assign.py) and three submissions per lesson are graded by otter against the autograder zip
just made, in parallel (one grading process per CPU core, one thread each):

  solution   the solution notebook (with its check cells): full marks on every autograded question;
  untouched  the committed student notebook, answers left at `...`: zero on every autograded
             question, and no cell raises;
  wrong      the solution with the lesson's one deliberate mistake: exactly that question loses points;
  trivial    the trivially wrong answers (empty, constant, copied from the prose, wrong type): the
             solution is executed once, then each one's answer cell is re-run in place with it, the
             question's tests (public and hidden) run, and it must score zero; the original cell is
             re-run before the next (cells after the answer are not re-run: tests must see the answer
             through the answer cell's own variables). Every autograded question needs at least one, and
             each replaces the question's whole answer (every value it asks for).

The deliberate mistake is declared in the source notebook's metadata, next to the lesson it breaks:

  "metadata": {"ftlab": {"wrong_answer": {
      "question": "probe_setup",                                        # the question that must lose points
      "find": "ftlab.freeze(model, len(ftlab.blocks(model)))",          # text of the solution (exactly once)
      "replace": "ftlab.freeze(model, 4)",                              # what a learner wrongly wrote
      "why": "freezes only 4 of the 5 blocks"},                        # for the reader
    "trivial_answers": [{"question": "probe_setup", "kind": "empty",   # kind: empty, constant,
                         "find": "...", "replace": "...", "why": "..."}]}}  # copied or wrong_type

Also checked without grading: the committed student notebooks are what `make assign` makes now,
hidden tests and solutions never reach them, and each lesson follows the course conventions (Colab
badge and set-up cell, seeding, stated run time, 3-6 exercises).

FTLAB_LESSONS=04,05 checks only the lessons whose names start so (while writing one).
FTLAB_COURSE_WORKERS sets the number of grading processes (default: the CPU count);
The first lesson's solution is graded three times and must get identical scores each time;
FTLAB_COURSE_REPEAT=3 does that for every lesson.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_assign():
    """scripts/assign.py, the `make assign` driver (loaded by path: scripts/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ftlab_course_assign", ROOT / "scripts" / "assign.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


course = _load_assign()

# FTLAB_LESSONS=04,05 limits a run to some lessons (by name prefix), e.g. while one is being written
_ONLY = [prefix for prefix in os.environ.get("FTLAB_LESSONS", "").split(",") if prefix]
LESSONS = [path.stem for path in course.lessons() if not _ONLY or path.stem.startswith(tuple(_ONLY))]
KINDS = ("solution", "untouched", "wrong")
# Determinism: each lesson's solution is graded REPEAT times and must get the same scores every time.
# By default the first lesson (the quickest) is graded three times, the others once (each extra grading
# costs a full run of the lesson); FTLAB_COURSE_REPEAT=3 repeats every lesson.
_REPEAT_ALL = os.environ.get("FTLAB_COURSE_REPEAT")
_FIRST = course.lessons()[0].stem if course.lessons() else None
REPEATED = [lesson for lesson in LESSONS if _REPEAT_ALL or lesson == _FIRST]


def repeats(lesson: str) -> int:
    return int(_REPEAT_ALL) if _REPEAT_ALL else (3 if lesson in REPEATED else 1)
GRADE_TIMEOUT = 1800  # seconds for one grading: a lesson runs in 1-3 minutes, 10-17 on a machine at load 10


# --- grading one submission, in its own process ---------------------------------------------

def _grade_here(notebook: str, autograder: str, out: str) -> None:
    """Grade `notebook` with otter in this process; write scores and cell errors to `out` (JSON)."""
    import otter.api

    started = time.perf_counter()
    results = otter.api.grade_submission(notebook, autograder, quiet=True)
    errors = []
    for cell in (results.notebook.cells if results.notebook is not None else []):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                errors.append(f"{output['ename']}: {output['evalue']} in cell starting {cell.source[:80]!r}")
    scores = {name: {"score": r["score"], "possible": r["possible"]} for name, r in results.to_dict().items()}
    Path(out).write_text(json.dumps({
        "scores": scores, "errors": errors, "seconds": time.perf_counter() - started,
        "catastrophic": repr(results.catastrophic_error) if results.catastrophic_error else None,
        "report": results.to_report_str()}))


def _grade(notebook: Path, autograder: Path, out: Path, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), MPLBACKEND="Agg")
    done = subprocess.run([sys.executable, __file__, "grade", str(notebook), str(autograder), str(out)],
                          env=env, cwd=out.parent, capture_output=True, text=True, timeout=GRADE_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"grading {notebook.name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


# --- the session: assign once, grade everything in parallel -----------------------------------

def _wrong_answer(lesson: str) -> dict:
    meta = json.loads((course.SOURCE / f"{lesson}.ipynb").read_text())["metadata"].get("ftlab", {})
    spec = meta.get("wrong_answer")
    if not (isinstance(spec, dict) and {"question", "find", "replace"} <= set(spec)):
        raise AssertionError(
            f"{lesson} declares no deliberate wrong answer: add to the source notebook's metadata "
            '"ftlab": {"wrong_answer": {"question": ..., "find": ..., "replace": ..., "why": ...}} '
            "(see tests/test_course.py)")
    return spec


def _cell_with(notebook: dict, find: str, what: str, name: str) -> dict:
    """The one cell of the solution notebook whose source holds `find` (exactly once in the notebook)."""
    hits = [cell for cell in notebook["cells"] if find in "".join(cell["source"])]
    found = sum("".join(cell["source"]).count(find) for cell in hits)
    if found != 1:
        raise AssertionError(f"{name}: {what} {find!r} occurs {found} times in the solution notebook; "
                             "it must occur exactly once")
    return hits[0]


def _with_wrong_answer(solution: Path, spec: dict, target: Path) -> Path:
    notebook = json.loads(solution.read_text())
    cell = _cell_with(notebook, spec["find"], "wrong_answer.find", solution.name)
    cell["source"] = "".join(cell["source"]).replace(spec["find"], spec["replace"])
    target.write_text(json.dumps(notebook))
    return target


TRIVIAL_KINDS = ("empty", "constant", "copied", "wrong_type")


def _trivial_answers(lesson: str) -> list[dict]:
    meta = json.loads((course.SOURCE / f"{lesson}.ipynb").read_text())["metadata"].get("ftlab", {})
    entries = meta.get("trivial_answers")
    form = ('"ftlab": {"trivial_answers": [{"question": ..., "kind": ..., "find": ..., "replace": ..., "why": ...}]} '
            f"with kind one of {TRIVIAL_KINDS} (see tests/test_course.py)")
    if not isinstance(entries, list) or not entries:
        raise AssertionError(f"{lesson} declares no trivially wrong answers: add to the source notebook's metadata {form}")
    for entry in entries:
        if not (isinstance(entry, dict) and {"question", "kind", "find", "replace"} <= set(entry)
                and entry["kind"] in TRIVIAL_KINDS):
            raise AssertionError(f"{lesson}: a trivial answer {entry!r} is not of the form {form}")
    return entries


# Runs after the solution's last cell, in its kernel: each trivial answer's cell re-run with the
# replacement, the question's test file (hidden cases included) run on the kernel's globals, the
# original cell re-run. Names start with _ftlab_probe_ so no lesson variable is touched.
_PROBE_CELL = """
import contextlib as _ftlab_probe_contextlib, io as _ftlab_probe_io, json as _ftlab_probe_json
from otter.test_files import ExceptionTestFile as _ftlab_probe_TestFile

def _ftlab_probe_run(source):
    try:
        with _ftlab_probe_contextlib.redirect_stdout(_ftlab_probe_io.StringIO()):
            exec(compile(get_ipython().transform_cell(source), "<answer cell>", "exec"), globals())
    except BaseException as error:
        return f"{type(error).__name__}: {error}"

_ftlab_probe_results = []
for _ftlab_probe_entry in _ftlab_probe_json.loads(%r):
    _ftlab_probe_error = _ftlab_probe_run(_ftlab_probe_entry["modified"])
    _ftlab_probe_test = _ftlab_probe_TestFile.from_file("tests/" + _ftlab_probe_entry["question"] + ".py")
    _ftlab_probe_test.run(globals())
    _ftlab_probe_results.append({"score": _ftlab_probe_test.score, "possible": _ftlab_probe_test.possible,
                                 "cell_error": _ftlab_probe_error, "summary": _ftlab_probe_test.summary()})
    _ftlab_probe_restore = _ftlab_probe_run(_ftlab_probe_entry["original"])
    assert _ftlab_probe_restore is None, "re-running the original answer cell failed: " + _ftlab_probe_restore
with open(%r, "w") as _ftlab_probe_file:
    _ftlab_probe_json.dump(_ftlab_probe_results, _ftlab_probe_file)
"""


def _probe_notebook(solution: Path, entries: list[dict], target: Path, out: Path) -> Path:
    """The solution notebook with one last cell that grades each trivial answer in place."""
    notebook = json.loads(solution.read_text())
    probes = []
    for entry in entries:
        original = "".join(_cell_with(notebook, entry["find"], "trivial answer find", solution.name)["source"])
        probes.append({"question": entry["question"], "original": original,
                       "modified": original.replace(entry["find"], entry["replace"])})
    notebook["cells"].append({"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                              "source": _PROBE_CELL % (json.dumps(probes), str(out))})
    target.write_text(json.dumps(notebook))
    return target


def _probe_here(notebook: str, workdir: str) -> None:
    """Execute the probe notebook in a fresh kernel in `workdir` (where its tests/ folder is)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(nb, timeout=GRADE_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": workdir}}).execute()


def _probe(made: "course.Assigned", entries: list[dict], work: Path, threads: int) -> list[dict]:
    import zipfile

    with zipfile.ZipFile(made.autograder) as bundle:
        for name in bundle.namelist():
            if name.startswith("tests/") and name.endswith(".py"):
                (work / "tests").mkdir(exist_ok=True)
                (work / name).write_bytes(bundle.read(name))
    out = work / "trivial.json"
    notebook = _probe_notebook(made.solution, entries, work / made.solution.name, out)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), MPLBACKEND="Agg")
    done = subprocess.run([sys.executable, __file__, "probe", str(notebook), str(work)], env=env, cwd=work,
                          capture_output=True, text=True, timeout=GRADE_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"running the trivial answers of {made.lesson} failed:\n{done.stdout[-3000:]}\n"
                           f"{done.stderr[-3000:]}")
    return [dict(entry, **result) for entry, result in zip(entries, json.loads(out.read_text()))]


def assign_all(folder: Path) -> dict[str, course.Assigned]:
    """Every lesson assigned into `folder`, as `make assign` would."""
    return {lesson: course.assign(course.SOURCE / f"{lesson}.ipynb", notebooks=folder / "notebooks",
                                  autograder=folder / "autograder") for lesson in LESSONS}


class Course:
    """Assigned lessons and their gradings (futures, started together so they run in parallel)."""

    def __init__(self, folder: Path, assigned: dict[str, course.Assigned] | None = None,
                 lessons: list[str] | None = None):
        self.folder = folder
        self.assigned = assigned if assigned is not None else assign_all(folder)
        workers = int(os.environ.get("FTLAB_COURSE_WORKERS", os.cpu_count() or 1))
        threads = max(1, (os.cpu_count() or 1) // workers)
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.gradings: dict[tuple[str, str], Future] = {}
        for lesson, made in self.assigned.items():
            if lessons is not None and lesson not in lessons:
                continue
            submissions = {"solution": made.solution, "untouched": ROOT / "notebooks" / f"{lesson}.ipynb"}
            try:
                (folder / "wrong").mkdir(exist_ok=True)  # a submission keeps the lesson's file name:
                submissions["wrong"] = _with_wrong_answer(  # otter.Notebook("<lesson>.ipynb") reads it
                    made.solution, _wrong_answer(lesson), folder / "wrong" / f"{lesson}.ipynb")
            except AssertionError as error:
                self.gradings[lesson, "wrong"] = _failed(error)
            try:
                entries = _trivial_answers(lesson)
            except AssertionError as error:
                self.gradings[lesson, "trivial"] = _failed(error)
            else:
                work = folder / "graded" / f"{lesson}-trivial"
                work.mkdir(parents=True)
                self.gradings[lesson, "trivial"] = self.pool.submit(_probe, made, entries, work, threads)
            for i in range(1, repeats(lesson)):
                submissions[f"solution-{i}"] = made.solution
            for kind, notebook in submissions.items():
                work = folder / "graded" / f"{lesson}-{kind}"
                work.mkdir(parents=True)
                self.gradings[lesson, kind] = self.pool.submit(_grade, notebook, made.autograder,
                                                               work / "results.json", threads)

    def result(self, lesson: str, kind: str) -> dict:
        return self.gradings[lesson, kind].result()


def _failed(error: Exception) -> Future:
    future: Future = Future()
    future.set_exception(error)
    return future


@pytest.fixture(scope="session")
def assigned(tmp_path_factory) -> dict[str, course.Assigned]:
    """Every lesson assigned once per session, into a temporary folder."""
    if not LESSONS:
        pytest.skip("no lessons in notebooks/source")
    folder = tmp_path_factory.mktemp("course")
    return assign_all(folder)


@pytest.fixture(scope="session")
def graded(assigned, request) -> Course:
    """Every grading of the session, started at once (the first grading test waits for its own);
    only for the lessons whose grading tests were selected (`pytest -k 01_what` grades one lesson)."""
    selected = {item.callspec.params["lesson"] for item in request.session.items
                if getattr(item, "module", None) is sys.modules[__name__] and "graded" in item.fixturenames
                and "lesson" in getattr(getattr(item, "callspec", None), "params", {})}
    folder = next(iter(assigned.values())).autograder.parent.parent
    state = Course(folder, assigned, sorted(lesson for lesson in selected if lesson in assigned))
    yield state
    state.pool.shutdown(wait=True, cancel_futures=True)


def _autograded(result: dict) -> dict:
    return {name: s for name, s in result["scores"].items() if s["possible"] > 0}


def _table(result: dict) -> str:
    return ", ".join(f"{name} {s['score']:g}/{s['possible']:g}" for name, s in result["scores"].items())


# --- before grading: the committed notebooks and the conventions -------------------------------

def test_there_are_lessons():
    assert LESSONS, "no source notebooks in notebooks/source/"


@pytest.mark.parametrize("lesson", LESSONS)
def test_student_notebook_is_up_to_date(assigned, lesson):
    fresh = json.loads(assigned[lesson].student.read_text())
    committed_path = ROOT / "notebooks" / f"{lesson}.ipynb"
    assert committed_path.exists(), f"{committed_path} is missing: run `make assign`"
    committed = json.loads(committed_path.read_text())
    cells = lambda nb: [(c["cell_type"], "".join(c["source"])) for c in nb["cells"]]  # noqa: E731
    assert cells(committed) == cells(fresh), (
        f"notebooks/{lesson}.ipynb is out of date with notebooks/source/{lesson}.ipynb: run `make assign`")
    assert committed["metadata"].get("otter") == fresh["metadata"].get("otter"), (
        f"the public tests in notebooks/{lesson}.ipynb are out of date: run `make assign`")


@pytest.mark.parametrize("lesson", LESSONS)
def test_no_solutions_or_hidden_tests_reach_learners(assigned, lesson):
    import zipfile

    student = (ROOT / "notebooks" / f"{lesson}.ipynb").read_text()
    for marker in ("# BEGIN SOLUTION", "# SOLUTION", "BEGIN TEST CONFIG", "wrong_answer", "trivial_answers",
                   "hidden=True"):
        assert marker not in student, f"notebooks/{lesson}.ipynb contains {marker!r}"
    public = json.loads(student)["metadata"]["otter"]["tests"]
    with zipfile.ZipFile(assigned[lesson].autograder) as bundle:
        every = {Path(name).stem: bundle.read(name).decode() for name in bundle.namelist() if name.startswith("tests/")}
    assert set(public) <= set(every)
    assert any("hidden=True" in text for text in every.values()), f"{lesson} has no hidden tests"


@pytest.mark.parametrize("lesson", LESSONS)
def test_lesson_follows_the_course_conventions(lesson):
    notebook = json.loads((course.SOURCE / f"{lesson}.ipynb").read_text())
    cells = [(c["cell_type"], "".join(c["source"])) for c in notebook["cells"]]
    markdown = "\n".join(text for kind, text in cells if kind == "markdown")
    code = [text for kind, text in cells if kind == "code"]
    assert f"colab.research.google.com/github/" in markdown and f"notebooks/{lesson}.ipynb" in markdown, \
        "an 'Open in Colab' badge linking to notebooks/<lesson>.ipynb is missing"
    assert "FTLAB_GIT_URL" in code[0] and '"google.colab" in sys.modules' in code[0], \
        "the first code cell must be the Colab set-up cell (FTLAB_GIT_URL, only on Colab)"
    assert f'otter.Notebook("{lesson}.ipynb")' in code[1], "the second code cell must start otter's grader"
    assert "manual_seed" in code[2], "the third code cell must import and seed (torch.manual_seed ...)"
    assert "Run time:" in markdown, "state the expected run time (\"**Run time:** about ...\")"
    questions = [text for kind, text in cells if kind == "raw" and text.startswith("# BEGIN QUESTION")]
    assert 3 <= len(questions) <= 6, f"{len(questions)} exercises; a lesson has 3 to 6"
    assert any("manual: true" in q for q in questions), "at least one written (manual) question"
    config = next(text for kind, text in cells if kind == "raw" and text.startswith("# ASSIGNMENT CONFIG"))
    assert f"name: {lesson}" in config and "generate: true" in config


# --- grading ----------------------------------------------------------------------------------

@pytest.mark.parametrize("lesson", LESSONS)
def test_solution_gets_full_marks(graded, lesson):
    result = graded.result(lesson, "solution")
    assert result["catastrophic"] is None, result["catastrophic"]
    assert not result["errors"], f"the solution notebook raised: {result['errors']}"
    scores = _autograded(result)
    assert scores, "no autograded questions"
    lost = {name: s for name, s in scores.items() if s["score"] != s["possible"]}
    assert not lost, f"the solution loses points: {_table(result)}\n{result['report']}"


@pytest.mark.parametrize("lesson", LESSONS)
def test_untouched_student_notebook_scores_zero_without_crashing(graded, lesson):
    result = graded.result(lesson, "untouched")
    assert result["catastrophic"] is None, result["catastrophic"]
    assert not result["errors"], f"a cell of the untouched student notebook raised: {result['errors']}"
    earned = {name: s for name, s in _autograded(result).items() if s["score"] != 0}
    assert not earned, f"unanswered questions earn points (tests must check the learner's answer): {_table(result)}"


@pytest.mark.parametrize("lesson", LESSONS)
def test_one_wrong_answer_loses_only_its_points(graded, lesson):
    spec = _wrong_answer(lesson)
    result = graded.result(lesson, "wrong")
    assert not result["errors"], f"the notebook with the wrong answer raised: {result['errors']}"
    scores = _autograded(result)
    assert spec["question"] in scores, f"wrong_answer names {spec['question']!r}; the questions are {list(scores)}"
    wrong = scores[spec["question"]]
    assert wrong["score"] < wrong["possible"], (
        f"{spec['question']} keeps all its points with the wrong answer ({spec.get('why', spec['replace'])}): "
        f"its tests do not catch it")
    others = {name: s for name, s in scores.items() if name != spec["question"] and s["score"] != s["possible"]}
    assert not others, f"other questions lose points too: {_table(result)}"


@pytest.mark.parametrize("lesson", LESSONS)
def test_trivially_wrong_answers_score_zero(graded, lesson):
    probed = graded.result(lesson, "trivial")
    questions = set(_autograded(graded.result(lesson, "solution")))
    named = {entry["question"] for entry in probed}
    problems = [f"trivial answers name {sorted(named - questions)}; the autograded questions are {sorted(questions)}"
                ] if named - questions else []
    if questions - named:
        problems.append(f"autograded questions without a trivially wrong answer: {sorted(questions - named)}")
    problems += [f"{e['question']} ({e['kind']}: {e['replace']!r}) scores {e['score']:g}/{e['possible']:g}"
                 + (f" [its cell raised {e['cell_error']}]" if e["cell_error"] else "")
                 for e in probed if e["score"] != 0]
    assert not problems, ("trivially wrong answers (each must score 0 on its whole question: replace every "
                          "value the question asks for):\n" + "\n".join(problems))


@pytest.mark.parametrize("lesson", REPEATED)
def test_grading_is_deterministic(graded, lesson):
    assert repeats(lesson) >= 2, f"FTLAB_COURSE_REPEAT={_REPEAT_ALL}: grade at least twice to compare"
    first = graded.result(lesson, "solution")["scores"]
    for i in range(1, repeats(lesson)):
        assert graded.result(lesson, f"solution-{i}")["scores"] == first, f"grading {i + 1} differs from the first"


if __name__ == "__main__" and sys.argv[1:2] == ["grade"]:
    _grade_here(*sys.argv[2:5])
elif __name__ == "__main__" and sys.argv[1:2] == ["probe"]:
    _probe_here(*sys.argv[2:4])
