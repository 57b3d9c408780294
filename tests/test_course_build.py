"""The publishable course (ftlab/course.py, `ftlab course build`, `make course`): what learners get,
with the course's address written in, and nothing meant for instructors.

The oracle for "nothing for instructors" is the source notebooks themselves: every hidden test's
name and every solution line found there must be absent from what was built.
"""
from __future__ import annotations

import json
import re
import shutil
import sys
import types
from pathlib import Path

import pytest

from ftlab import cli, course

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks" / "source").glob("*.ipynb"))
URL = "https://github.com/teach-ml/ftlab-course"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> course.Course:
    return course.build(URL, tmp_path_factory.mktemp("published") / "ftlab-course")


def cells(path: Path, kind: str = "code") -> list[str]:
    return ["".join(c["source"]) for c in json.loads(path.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == kind]


def instructors_only(source: Path) -> tuple[set[str], set[str]]:
    """(hidden tests' function names, solution lines) of a source notebook; a solution line that a
    public test, the lesson's own code or its text also has (a test building the same set, a hint
    quoting it) is no secret."""
    hidden, solutions, public = set(), set(), []
    for text in cells(source):
        if re.search(r"^hidden:\s*true", text, re.M):
            hidden.update(re.findall(r"^def (test_\w+)", text, re.M))
            continue
        public.append(re.sub(r"# BEGIN SOLUTION.*?# END SOLUTION", "", text, flags=re.S))
        inside = False
        for line in text.splitlines():
            stripped = line.strip()
            if stripped == "# BEGIN SOLUTION":
                inside = True
            elif stripped == "# END SOLUTION":
                inside = False
            elif inside or stripped.endswith("# SOLUTION"):
                solutions.add(stripped.removesuffix("# SOLUTION").strip())
    public_text = "\n".join([line for text in public for line in text.splitlines() if not line.strip().endswith("# SOLUTION")]
                            + cells(source, "markdown"))  # the exercise's own hints
    # short lines (`return x`) are not telling
    return hidden, {line for line in solutions if len(line) >= 20 and line not in public_text}


def test_the_course_has_what_learners_need(built):
    names = {str(path) for path in built.files}
    lessons = {f"notebooks/{path.name}" for path in SOURCES}
    assert lessons <= names and "notebooks/00_setup.ipynb" in names and "notebooks/README.md" in names
    assert {"README.md", "pyproject.toml", "ftlab/__init__.py", "ftlab/course.py", "datasets/fashion-mnist.md"} <= names
    assert not [n for n in names if n.startswith(("notebooks/source", "build/", "tests/", "scripts/", "colab/", "bench/"))]
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert built.repo == "teach-ml/ftlab-course" and built.git_url == URL + ".git"


def test_no_hidden_test_or_solution_reaches_the_course(built):
    """Each lesson's secrets, looked for in its published notebook and the READMEs (another lesson may
    use the same test name publicly; the library may well contain what a learner writes)."""
    readmes = "\n".join((built.out / path).read_text(encoding="utf-8") for path in built.files if path.suffix == ".md")
    checked = 0
    for source in SOURCES:
        text = (built.out / "notebooks" / source.name).read_text(encoding="utf-8") + readmes
        hidden, solutions = instructors_only(source)
        assert hidden and solutions, f"{source.name}: the oracle found no hidden tests or solutions to look for"
        leaked = sorted(name for name in hidden if name in text) + sorted(line for line in solutions if line in text)
        assert not leaked, f"{source.name}: {leaked} reached the published course"
        checked += len(hidden) + len(solutions)
    assert checked > 50


def test_the_badges_and_the_url_come_from_the_url_given(built):
    for source in SOURCES:
        notebook = built.out / "notebooks" / source.name
        text = notebook.read_text(encoding="utf-8")
        assert course.PLACEHOLDER_REPO not in text
        badge = f"https://colab.research.google.com/github/teach-ml/ftlab-course/blob/main/notebooks/{source.name}"
        assert badge in cells(notebook, "markdown")[0]
        first = cells(notebook)[0]
        assert f'FTLAB_GIT_URL = "{URL}.git"' in first and '"google.colab" in sys.modules' in first
        assert badge in (built.out / "README.md").read_text()
    assert course.PLACEHOLDER_REPO in cells(ROOT / "notebooks" / SOURCES[0].name)[0]  # the committed ones keep it


def run_colab_cell(source: str, monkeypatch) -> list[list[str]]:
    """Execute a Colab cell as on Colab (google.colab imported), recording its commands; nothing runs."""
    import subprocess

    import ftlab.grading

    calls = []
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(subprocess, "run", lambda command, **kw: calls.append((list(command), kw)))
    monkeypatch.setattr(ftlab.grading, "prepare_colab", lambda lesson, repo: calls.append((["prepare", lesson, repo], {})))
    monkeypatch.setattr("os.path.isdir", lambda path: False)
    exec(compile(source, "<colab cell>", "exec"), {})
    return calls


def test_the_committed_colab_cell_stops_and_says_what_to_set(monkeypatch):
    for source in [*SOURCES, ROOT / "notebooks" / "00_setup.ipynb"]:
        with pytest.raises(RuntimeError, match=r"FTLAB_GIT_URL \(above\) is still the placeholder: set it to the git URL"):
            run_colab_cell(cells(source)[0], monkeypatch)


def test_the_built_colab_cell_clones_the_course_and_installs_it(built, monkeypatch):
    lesson = SOURCES[2].stem
    calls = run_colab_cell(cells(built.out / "notebooks" / f"{lesson}.ipynb")[0], monkeypatch)
    (clone, _), (install, options), (prepare, _) = calls
    assert clone[:2] == ["git", "clone"] and clone[-2:] == [URL + ".git", "/content/ftlab"]
    assert install == [sys.executable, "-m", "ftlab.course", "colab-install", "/content/ftlab"]
    assert options == {"cwd": "/content/ftlab", "check": True}
    assert prepare == ["prepare", lesson, "/content/ftlab"]


def test_the_setup_notebook_on_colab_installs_ftlab_and_its_data_without_a_lesson(built, monkeypatch):
    calls = run_colab_cell(cells(built.out / "notebooks" / "00_setup.ipynb")[0], monkeypatch)
    (clone, _), (install, _), (setup, options) = calls
    assert clone[-2:] == [URL + ".git", "/content/ftlab"]
    assert install == [sys.executable, "-m", "ftlab.course", "colab-install", "/content/ftlab"]
    assert setup == [sys.executable, "-m", "ftlab", "setup"] and options == {"check": True}


def test_outside_colab_the_cell_does_nothing(monkeypatch):
    import subprocess

    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setattr(subprocess, "run", lambda *a, **kw: pytest.fail("ran a command outside Colab"))
    exec(compile(cells(SOURCES[0])[0], "<colab cell>", "exec"), {})


def test_a_second_build_replaces_the_first_and_keeps_git(tmp_path):
    out = tmp_path / "course"
    course.build(URL, out)
    (out / ".git").mkdir()
    (out / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (out / "notebooks" / "stale.ipynb").write_text("{}")
    again = course.build("teach-ml/other", out, branch="spring-2027")
    assert (out / ".git" / "HEAD").exists() and not (out / "notebooks" / "stale.ipynb").exists()
    assert "github/teach-ml/other/blob/spring-2027/notebooks/" in (out / "README.md").read_text()
    assert again.git_url == "https://github.com/teach-ml/other.git"


@pytest.mark.parametrize("url, message", [
    ("https://github.com/OWNER/ftlab", "not the placeholder OWNER/ftlab"),
    ("https://gitlab.com/you/ftlab", "must be a GitHub repository"),
    ("ftlab", "https://github.com/OWNER/NAME or OWNER/NAME"),
])
def test_bad_urls_are_refused(url, message, tmp_path):
    with pytest.raises(ValueError, match=re.escape(message)):
        course.build(url, tmp_path / "course")
    assert not (tmp_path / "course").exists()


def test_bad_folders_are_refused(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("mine")
    with pytest.raises(ValueError, match="holds other files"):
        course.build(URL, tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "mine"
    with pytest.raises(ValueError, match="outside the project"):
        course.build(URL, ROOT / "build" / "course")


def test_stale_student_notebooks_are_refused(tmp_path):
    """A student notebook whose Colab cell differs from its source was not re-assigned."""
    root = tmp_path / "project"
    for folder in ("ftlab", "datasets"):
        shutil.copytree(ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "notebooks", root / "notebooks", ignore=shutil.ignore_patterns(".*"))
    shutil.copyfile(ROOT / "pyproject.toml", root / "pyproject.toml")
    student = root / "notebooks" / SOURCES[0].name
    notebook = json.loads(student.read_text())
    first = next(c for c in notebook["cells"] if c["cell_type"] == "code")
    first["source"] = "".join(first["source"]).replace("ftlab.course", "pip")
    student.write_text(json.dumps(notebook))
    with pytest.raises(RuntimeError, match=rf"\['{SOURCES[0].name}'\] have another Colab cell.*make assign"):
        course.build(URL, tmp_path / "course", root=root)


@pytest.mark.parametrize("path, text, message", [
    ("notebooks/x.ipynb", '{"source": "x = 1  # SOLUTION"}', "notebooks/x.ipynb: # SOLUTION (a solution or a hidden test)"),
    ("notebooks/x.ipynb", '{"source": "@test_case(points=1, hidden=True)"}', "hidden=True"),
    ("README.md", "open github/OWNER/ftlab", "README.md: still names the placeholder OWNER/ftlab"),
    ("notebooks/source/01.ipynb", "{}", "notebooks/source/01.ipynb: instructors' material"),
    ("build/autograder/01.zip", "", "build/autograder/01.zip: instructors' material"),
])
def test_the_build_checks_what_it_wrote(path, text, message, tmp_path):
    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / path).write_text(text)
    with pytest.raises(RuntimeError, match=re.escape(message)):
        course._check(tmp_path, [Path(path)])


def test_the_command_line(tmp_path, capsys):
    assert cli.main(["course", "build", "--repo", URL, str(tmp_path / "c")]) == 0
    said = capsys.readouterr().out
    assert "notebooks for teach-ml/ftlab-course" in said and f"git push {URL}.git main" in said
    assert cli.main(["course", "build", "--repo", "https://github.com/OWNER/ftlab", str(tmp_path / "d")]) == 1
    assert "not the placeholder" in capsys.readouterr().err
