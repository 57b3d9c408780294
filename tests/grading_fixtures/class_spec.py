"""A crafted class for tests/test_grade.py: what real submissions contain, with the score each must get.

The lesson is tiny-lesson/tiny-lesson.ipynb (q1 1 point, q2 2, q3 2; each question has one public
and one hidden test case worth half its points), with exception-style tests as the course's lessons;
`ok_format_variant` turns it into otter's other (doctest) format. `build_class(student_notebook,
folder)` writes every submission below into `folder`, made from the student notebook that
`otter assign` wrote.

WRONG answers fail q1 and q2 entirely and pass only q3's public case: honest score 1 of 5.
Tampering submissions answer WRONG (or partly) and must get exactly their honest score; so must
answers that lie (subclasses whose comparisons always say yes: their plain value is what counts).
Learner names are as the grader names them; in grades.csv a name starting with = + - @ carries a
leading apostrophe (reports.spreadsheet_text).
"""
from __future__ import annotations

import copy
import json
import zipfile
from pathlib import Path

RIGHT = ["def square(x):\n    return x * x", "mean = sum(numbers) / len(numbers)",
         "forgot = ftlab.measures.forgetting(history)"]
WRONG = ["def square(x):\n    return x + x", "mean = 2", "forgot = 12.0  # forgot the best epoch was restored"]

DELETES_FILES = r'''
import os, shutil
from pathlib import Path
for folder in (Path("."), Path(".."), Path(os.environ.get("HOME", "."))):
    for path in list(folder.iterdir()):
        try:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        except OSError:
            pass
Path("data.txt").write_text("100\n200\n")   # rewrite the support file with other numbers
Path("tests").mkdir(exist_ok=True)
Path("tests/q1.py").write_text("OK_FORMAT = True\ntest = {'name': 'q1', 'points': 1, 'suites': []}\n")
'''

READS_HIDDEN_TESTS = r'''
import os, zipfile
from pathlib import Path
import ftlab
MARK = "square(" + "-4)"   # text that only the hidden tests contain (not this cell's own source)
found = [f"environment variable {k}" for k, v in os.environ.items() if MARK in v]
roots = [Path.cwd(), Path.cwd().parent, Path(os.environ.get("HOME", "/")), Path("/tmp"), Path("/root"),
         Path("/work"), Path("/home"), Path(ftlab.__file__).resolve().parents[1]]
seen = 0
for root in roots:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in (".venv", "site-packages", ".git", "proc")]
        if dirpath.count(os.sep) - str(root).count(os.sep) > 6:
            dirnames[:] = []
        for name in filenames:
            seen += 1
            if seen > 20000 or not name.endswith((".py", ".ipynb", ".zip", ".json")):
                continue
            path = os.path.join(dirpath, name)
            try:
                if name.endswith(".zip"):
                    with zipfile.ZipFile(path) as z:
                        if any(MARK.encode() in z.read(n) for n in z.namelist() if n.endswith(".py")):
                            found.append(path)
                elif os.path.getsize(path) < 5_000_000 and MARK.encode() in open(path, "rb").read():
                    found.append(path)
            except Exception:
                pass
print("found", found[:5])
'''

# a learner who could read the hidden tests would now write what passes them
IF_FOUND = ["if found:\n" + "\n".join("    " + line for line in right.splitlines()) + "\nelse:\n"
            + "\n".join("    " + line for line in wrong.splitlines()) for right, wrong in zip(RIGHT, WRONG)]

TAMPER_OTTER = r'''
import otter.test_files.ok_test as ok_test
import otter.test_files.exception_test as exception_test
from otter.test_files.abstract_test import TestCaseResult, TestFile
from otter.execute import Checker
import doctest

def run(self, env):
    self.test_case_results = [TestCaseResult(test_case=t, message="passed", passed=True) for t in self.test_cases]

ok_test.OKTestFile.run = run
exception_test.ExceptionTestFile.run = run
TestFile.score = property(lambda self: self.possible)
Checker.check_if_not_already_checked = classmethod(lambda cls, *args, **kwargs: None)
doctest.DocTestRunner.summarize = lambda self, verbose=None: doctest.TestResults(0, 1)
grader.check = lambda *args, **kwargs: print("All tests passed!")
'''

TAMPER_TESTS = r'''
import os, subprocess, sys
from pathlib import Path
FAKE = ("OK_FORMAT = True\ntest = {'name': '%s', 'points': 5, 'suites': [{'cases': [{'code': '>>> True\\nTrue', "
        "'hidden': False, 'locked': False}], 'scored': True, 'setup': '', 'teardown': '', 'type': 'doctest'}]}\n")
for folder in (Path("tests"), Path("..") / "tests"):
    try:
        folder.mkdir(exist_ok=True)
        for q in ("q1", "q2", "q3"):
            (folder / f"{q}.py").write_text(FAKE % q)
    except OSError:
        pass
# a process left running that rewrites every test file it can find, while the grader grades
LOOP = f"""
import glob, os, time
end = time.time() + 30
while time.time() < end:
    for pattern in ("tests/q*.py", "../tests/q*.py", "../.tests-*/q*.py"):
        for path in glob.glob(pattern):
            try:
                open(path, "w").write({FAKE!r} % os.path.basename(path)[:-3])
            except OSError:
                pass
    time.sleep(0.02)
"""
subprocess.Popen([sys.executable, "-c", LOOP], start_new_session=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
'''

TAMPER_FTLAB = r'''
import builtins
import ftlab.history, ftlab.measures
ftlab.measures.forgetting = lambda history: 12.0                       # ftlab's check function, replaced
ftlab.measures.final_row.__code__ = (lambda history: history.rows[-1]).__code__   # changed in place
ftlab.history.History.best = lambda self: self.rows[-1]
builtins.abs = lambda x: 0.0                                          # every comparison passes
def isinstance(obj, kind):                                             # and so does every type check
    return True
'''

# answers whose comparisons always say yes: subclasses of int, float and numpy.float64, returned by a
# function or stored in a global; plain, they are WRONG's values (x + x, 2.0, 12.0)
LIES_ABOUT_VALUES = [r'''
class Yes(int):
    def __eq__(self, other):
        return True
    __hash__ = int.__hash__
def square(x):
    return Yes(x + x)
''', r'''
class AlwaysClose(float):
    def __eq__(self, other): return True
    def __lt__(self, other): return True
    def __sub__(self, other): return self
    def __rsub__(self, other): return self
    def __abs__(self): return self
    def __float__(self): return 2.5
mean = AlwaysClose(2)
''', r'''
import numpy as np
class AlsoClose(np.float64):
    def __sub__(self, other): return self
    def __rsub__(self, other): return self
    def __abs__(self): return self
    def __lt__(self, other): return True
forgot = AlsoClose(12.0)
''']

# objects that say they are numbers (`__class__`) and are not: refused; q3 is answered honestly
LIES_ABOUT_TYPES = [r'''
class Nine:
    __class__ = property(lambda self: int)
    def __eq__(self, other): return True
def square(x):
    return Nine()
''', r'''
class Mean:
    __class__ = property(lambda self: float)
    def __sub__(self, other): return 0.0
    def __rsub__(self, other): return 0.0
mean = Mean()
''', RIGHT[2]]

# ftlab's modules swapped in sys.modules (and as the package's attribute) for ones whose checks agree
REPLACES_FTLAB_MODULES = r'''
import sys, types
import ftlab
fake = types.ModuleType("ftlab.measures")
fake.forgetting = lambda history: 12.0
sys.modules["ftlab.measures"] = ftlab.measures = fake
grading = types.ModuleType("ftlab.grading")
grading.assert_in_band = lambda *args, **kwargs: None
sys.modules["ftlab.grading"] = ftlab.grading = grading
'''

# a library function the hidden tests use, patched to agree with everything (the tests' own imports
# find the patched module: sys.modules is the notebook's)
PATCHES_LIBRARIES = r'''
import math
math.isclose = lambda *args, **kwargs: True
'''

# a process left running, detached in its own session, that gives every result file it finds full
# marks; without a pid namespace only the grader's adopting and killing orphans stops it
REWRITES_RESULTS = r'''
import subprocess, sys
LOOP = """
import glob, json, time
end = time.time() + 60
while time.time() < end:
    for path in glob.glob("/tmp/**/results/*.json", recursive=True):
        try:
            document = json.load(open(path))
            if document["ftlab"]["total"] != 5:
                document["ftlab"].update(total=5, scores={"q1": 1, "q2": 2, "q3": 2})
                open(path, "w").write(json.dumps(document))
        except Exception:
            pass
    time.sleep(0.1)
"""
subprocess.Popen([sys.executable, "-c", LOOP], start_new_session=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
'''

IGNORES_INTERRUPTS = r'''
import time
while True:
    try:
        time.sleep(0.1)
    except KeyboardInterrupt:
        pass
'''

# learner -> how it is made, and what it must get. "answers": q1, q2, q3 answer cells;
# "first"/"last": extra cell(s) after the init cell / at the end; "replace": a whole file's bytes.
SUBMISSIONS = {
    "correct": dict(answers=RIGHT, scores=(1, 2, 2), status="graded"),
    "correct_copy": dict(answers=RIGHT, scores=(1, 2, 2), status="graded"),  # same bytes: same score
    "one_wrong": dict(answers=[RIGHT[0], "mean = sum(numbers) / len(numbers) + 1", RIGHT[2]],
                      scores=(1, 1, 2), status="graded"),
    "raises": dict(answers=['raise ValueError("I do not know how to square")', RIGHT[1], RIGHT[2]],
                   scores=(0, 2, 2), status="graded", reason="ValueError"),
    "syntax_error": dict(answers=[RIGHT[0], "mean = sum(numbers) /", RIGHT[2]], scores=(1, 0, 2),
                         status="graded", reason="SyntaxError"),
    "stops_at_time_limit": dict(answers=[RIGHT[0], RIGHT[1], "while True:\n    pass"], scores=(1, 2, 0),
                                status="graded", reason="time limit"),
    "never_ends": dict(answers=[RIGHT[0], RIGHT[1], IGNORES_INTERRUPTS], scores=(1, 2, 0), status="graded",
                       reason="did not stop"),  # q1 and q2 were checked before the endless cell
    # otter grades a question at its grader.check cell: later cells cannot undo it; the last check counts
    "reuses_names": dict(answers=RIGHT, last="mean = 'reused for something else'\nsquare = None", scores=(1, 2, 2),
                         status="graded"),
    "checks_twice": dict(answers=RIGHT, last=["def square(x):\n    return 0", 'grader.check("q1")'],
                         scores=(0, 2, 2), status="graded"),
    "prints_megabytes": dict(answers=RIGHT, last='for _ in range(24):\n    print("x" * 1_000_000)',
                             scores=(1, 2, 2), status="graded", reason="MB"),
    "not_a_notebook": dict(replace=b"I did the lesson on paper, see attached.\n", scores=(0, 0, 0),
                           status="rejected", reason="not a Jupyter notebook"),
    "empty": dict(replace=b"", scores=(0, 0, 0), status="rejected", reason="empty"),
    "other_lesson": dict(answers=RIGHT, assignment="another-lesson", scores=(0, 0, 0), status="rejected",
                         reason="different lesson"),
    "deletes_files": dict(answers=RIGHT, last=DELETES_FILES, scores=(1, 2, 2), status="graded"),
    # the cheats run first, so that every check comes after them
    "reads_hidden_tests": dict(answers=IF_FOUND, first=READS_HIDDEN_TESTS, scores=(0, 0, 1), status="graded",
                               needs_namespaces=True),
    "tamper_otter": dict(answers=WRONG, first=TAMPER_OTTER, scores=(0, 0, 1), status="graded"),
    "tamper_tests": dict(answers=WRONG, first=TAMPER_TESTS, scores=(0, 0, 1), status="graded",
                         needs_namespaces=True),
    "tamper_ftlab": dict(answers=[RIGHT[0], RIGHT[1], WRONG[2]], first=TAMPER_FTLAB, scores=(1, 2, 1),
                         status="graded", reason="tampering"),
    # plain, these are WRONG's values: q1 fails, q2 and q3 pass only their public isinstance case
    "lies_about_values": dict(answers=LIES_ABOUT_VALUES, scores=(0, 1, 1), status="graded",
                              reason="handed to the tests as plain values"),
    "lies_about_types": dict(answers=LIES_ABOUT_TYPES, scores=(0, 0, 2), status="graded",
                             reason="values refused for the tests"),
    "replaces_ftlab_modules": dict(answers=[RIGHT[0], RIGHT[1], WRONG[2]], first=REPLACES_FTLAB_MODULES,
                                   scores=(1, 2, 1), status="graded", reason="not ftlab's own"),
    "patches_libraries": dict(answers=WRONG, first=PATCHES_LIBRARIES, scores=(0, 0, 1), status="graded",
                              reason="changed libraries the tests use"),
    "rewrites_results": dict(answers=RIGHT, first=REWRITES_RESULTS, last="import time\ntime.sleep(3)",
                             scores=(1, 2, 2), status="graded"),
    # a spreadsheet formula as a file name, and an error message that is one: graded, shown as text
    "=HYPERLINK(1+2)": dict(answers=RIGHT, last='raise ValueError("=1+2")', scores=(1, 2, 2), status="graded",
                            reason="ValueError: =1+2"),
}
# a zip of a section of the class: each member is a learner "section_b/<name>"
ZIPPED = {"zed": "correct", "yan": "one_wrong"}
# members whose path leaves the archive: never unpacked, a rejected row each (they used to vanish)
CLIMBING = {"../../tmp/climbs_out": "correct"}
EXPECTED = {name: spec for name, spec in SUBMISSIONS.items()}
EXPECTED.update({f"section_b/{member}": SUBMISSIONS[source] for member, source in ZIPPED.items()})
EXPECTED.update({f"section_b/{member}": dict(scores=(0, 0, 0), status="rejected", reason="path leaves the archive")
                 for member in CLIMBING})


def _code_cell(source: str) -> dict:
    return {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": source}


def make_notebook(student: dict, spec: dict) -> bytes:
    """A submission: the student notebook with answers filled in and any extra cells."""
    if "replace" in spec:
        return spec["replace"]
    notebook = copy.deepcopy(student)
    answers = iter(spec["answers"])
    for cell in notebook["cells"]:
        if "otter_answer_cell" in cell.get("metadata", {}).get("tags", []):
            cell["source"] = next(answers)
    if spec.get("first"):
        notebook["cells"].insert(1, _code_cell(spec["first"]))
    last = spec.get("last") or []
    for source in [last] if isinstance(last, str) else last:
        notebook["cells"].append(_code_cell(source))
    if spec.get("assignment"):
        notebook["metadata"]["otter"]["assignment_name"] = spec["assignment"]
    return json.dumps(notebook, indent=1).encode()


def ok_format_variant(source: Path, target: Path) -> Path:
    """The lesson with OK-format (doctest) tests: each test function's body becomes the test cell."""
    notebook = json.loads(Path(source).read_text())
    for cell in notebook["cells"]:
        text = "".join(cell["source"])
        if cell["cell_type"] == "raw" and "ok_format: false" in text:
            text = "\n".join(line for line in text.splitlines() if "ok_format" not in line) + "\n"
        elif cell["cell_type"] == "code" and "def test_" in text:
            lines = text.splitlines()
            hidden = lines[:1] == ["# HIDDEN"]
            body = [line[4:] for line in lines[2 if hidden else 1:]]
            text = "\n".join((["# HIDDEN"] if hidden else []) + body)
        cell["source"] = text
    target.write_text(json.dumps(notebook, indent=1))
    return target


def build_class(student_notebook: Path, folder: Path, names=None) -> Path:
    """Write the submissions (all, or `names`) into `folder`, plus section_b.zip when all are asked."""
    student = json.loads(Path(student_notebook).read_text())
    folder.mkdir(parents=True, exist_ok=True)
    for name in names or SUBMISSIONS:
        (folder / f"{name}.ipynb").write_bytes(make_notebook(student, SUBMISSIONS[name]))
    if names is None:
        with zipfile.ZipFile(folder / "section_b.zip", "w") as archive:
            for member, source in {**ZIPPED, **CLIMBING}.items():
                archive.writestr(f"{member}.ipynb", make_notebook(student, SUBMISSIONS[source]))
    return folder
