"""The course as learners get it: its address written in, and the lessons' Colab install.

    ftlab course build --repo https://github.com/you/ftlab-course OUT    # or: make course URL=...
    python -m ftlab.course colab-install /content/ftlab                 # what a lesson's first cell runs

`build` writes the publishable course into OUT: the student notebooks, the library, the data cards
and a README, with the Colab badges and `FTLAB_GIT_URL` pointing at the given repository. The
committed notebooks keep the placeholder (`OWNER/ftlab`); their first cell stops on Colab until it
is replaced. Never in OUT: `notebooks/source/` and `build/` (solutions, hidden tests, autograder
zips); `build` checks every file it wrote for them.

`colab_install` installs ftlab and otter-grader on Colab without replacing anything Colab
preinstalls (COLAB_KEEPS are held at their installed versions by pip constraints). otter-grader 6
and 7 declare ipywidgets>=8.1.5, which Colab cannot show (colabtools #3020, #4525); what a learner
runs of otter (`otter.Notebook`, `grader.check`) needs only Button, HTML, Output and VBox, which
ipywidgets 7.7 has. So otter goes in with `--no-deps`, after its other requirements.

Only the standard library at import time: the Colab cell runs this from the clone, before ftlab
and its requirements are installed.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

__all__ = ["build", "Course", "colab_install", "colab_commands", "keep_pins", "otter_requirements",
           "parse_repo", "COLAB_KEEPS", "OTTER", "PLACEHOLDER_REPO", "PLACEHOLDER_URL"]

ROOT = Path(__file__).resolve().parent.parent
PLACEHOLDER_REPO = "OWNER/ftlab"  # in the committed notebooks' badges and FTLAB_GIT_URL
PLACEHOLDER_URL = f"https://github.com/{PLACEHOLDER_REPO}.git"
# What Colab preinstalls and the first cell must leave as it is (a second torch is GBs; ipywidgets 8
# does not render on Colab; the rest would change what the learner's runtime was tested with).
COLAB_KEEPS = ("torch", "torchvision", "transformers", "ipywidgets", "ipykernel", "ipython", "matplotlib",
               "numpy", "pandas", "scikit-learn", "peft")
OTTER = "otter-grader>=6,<8"  # as in pyproject.toml's course extra (ftlab.grade reads otter's internals)
NOT_FOR_LEARNERS = ("# BEGIN SOLUTION", "# SOLUTION", "BEGIN TEST CONFIG", "hidden=True", "wrong_answer")
LIBRARY_SKIP = ("__pycache__", "*.pyc")


# --- installing on Colab ------------------------------------------------------------------------


PIP = (sys.executable, "-m", "pip")  # the pip of the running Python (the kernel's, on Colab)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def keep_pins(names: Iterable[str] = COLAB_KEEPS, *, path: Sequence[str] | None = None) -> list[str]:
    """pip constraints that hold each of `names` installed here (or in the site-packages folders
    `path`) at its version: ['torch==2.9.0', ...]. Names not installed are left free."""
    from importlib import metadata

    found = {_canonical(d.metadata["Name"]): d.version
             for d in (metadata.distributions(path=list(path)) if path is not None else metadata.distributions())}
    return [f"{name}=={found[_canonical(name)]}" for name in names if _canonical(name) in found]


def otter_requirements(requires: Iterable[str]) -> list[str]:
    """otter-grader's own requirements (its `Requires-Dist` lines) as pip arguments, without
    ipywidgets, without extras, and without those whose markers exclude this platform.

    >>> otter_requirements(['ipywidgets (>=8.1.5,<9.0.0)', 'pyyaml (>=6,<7)', 'rpy2 ; extra == "r"'])
    ['pyyaml<7,>=6']
    """
    from packaging.requirements import Requirement  # pip's and transformers' own; on Colab too

    kept = []
    for line in requires:
        requirement = Requirement(line)
        if requirement.name.lower() == "ipywidgets":
            continue
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        # extras of a requirement (nbconvert[webpdf]: PDFs via a browser) are for export, which
        # does not work on Colab anyway
        kept.append(f"{requirement.name}{requirement.specifier}")
    return kept


def colab_commands(repo: str | Path, *, otter_version: str, otter_requires: Sequence[str],
                   constraints: str | Path) -> list[list[str]]:
    """The pip commands (arguments after `pip`) that colab_install runs, in order: ftlab and
    otter's requirements with COLAB_KEEPS held, then otter itself without its requirements."""
    return [["install", "--constraint", str(constraints), str(repo), *otter_requirements(otter_requires)],
            ["install", "--no-deps", "--no-warn-conflicts", f"otter-grader=={otter_version}"]]


def otter_release(*, pip: Sequence[str] = PIP) -> dict:
    """The otter-grader release pip would install (OTTER): its metadata, from a dry run (nothing is
    downloaded but the metadata)."""
    done = subprocess.run([*pip, "install", "--dry-run", "--no-deps", "--ignore-installed",
                           "--quiet", "--report", "-", OTTER], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pip could not find {OTTER} (is PyPI reachable?):\n{done.stderr.strip()}")
    return json.loads(done.stdout)["install"][0]["metadata"]


def colab_install(repo: str | Path, *, pip: Sequence[str] = PIP, quiet: bool = True) -> None:
    """Install ftlab from `repo` (a clone of the course) and otter-grader, leaving COLAB_KEEPS at
    the versions installed (what a lesson's first cell runs on Colab)."""
    otter = otter_release(pip=pip)
    with tempfile.TemporaryDirectory(prefix="ftlab-colab-") as folder:
        constraints = Path(folder) / "keep.txt"
        constraints.write_text("\n".join(keep_pins()) + "\n")
        for command in colab_commands(repo, otter_version=otter["version"],
                                      otter_requires=otter.get("requires_dist", []), constraints=constraints):
            subprocess.run([*pip, *command, *(["--quiet"] if quiet else [])], check=True)


# --- building the publishable course ------------------------------------------------------------


@dataclass(frozen=True)
class Course:
    """What `build` wrote."""

    out: Path
    repo: str  # "owner/name" on GitHub
    git_url: str  # what FTLAB_GIT_URL says
    files: tuple[Path, ...]  # every file written, relative to out

    def __repr__(self) -> str:
        return f"Course({self.repo}: {len(self.files)} files in {self.out})"


def parse_repo(url: str) -> tuple[str, str]:
    """('owner/name', clone URL) from a GitHub repository's URL or 'owner/name'.

    Colab opens notebooks from GitHub by owner/name, so the badges need a GitHub repository.

    >>> parse_repo("https://github.com/you/ftlab-course")
    ('you/ftlab-course', 'https://github.com/you/ftlab-course.git')
    """
    found = re.fullmatch(r"(?:https://github\.com/|git@github\.com:)?([\w.-]+)/([\w.-]+?)(?:\.git)?/?", url.strip())
    if not found or PLACEHOLDER_REPO.lower() == f"{found[1]}/{found[2]}".lower():
        raise ValueError(f"the course's repository must be a GitHub repository, as "
                         f"https://github.com/OWNER/NAME or OWNER/NAME (Colab's badges open notebooks from GitHub), "
                         f"and not the placeholder {PLACEHOLDER_REPO}; got {url!r}")
    repo = f"{found[1]}/{found[2]}"
    return repo, f"https://github.com/{repo}.git"


def _addressed(text: str, repo: str, git_url: str, branch: str) -> str:
    """`text` with the placeholder URL and badges pointing at the course's repository."""
    text = text.replace(PLACEHOLDER_URL, git_url)
    text = text.replace(f"github/{PLACEHOLDER_REPO}/blob/main/", f"github/{repo}/blob/{branch}/")
    return text.replace(PLACEHOLDER_REPO, repo)


def _readme(lessons: list[Path], repo: str, branch: str, course_readme: str) -> str:
    badge = "https://colab.research.google.com/assets/colab-badge.svg"
    rows = "\n".join(f"| [{path.stem}](notebooks/{path.name}) | "
                     + (f"[![Open In Colab]({badge})](https://colab.research.google.com/github/{repo}/blob/{branch}/"
                        f"notebooks/{path.name})" if _colab_cell(path) else "on your own machine")
                     + " |" for path in lessons)
    # the course's own README (notebooks/README.md) from its lesson table on, its links made relative
    # to the top folder (its opening speaks of the project's Makefile, which the course has not)
    table = course_readme.find("\n| #")
    body = re.sub(r"\]\((\d\d_\w+\.ipynb)\)", r"](notebooks/\1)", course_readme[table:] if table >= 0 else "")
    return (f"# The ftlab course\n\nOpen a lesson on Colab with its badge: its first cell installs ftlab and its "
            f"data there (a GPU runtime is used when chosen). On your own machine (Python 3.10 or newer):\n\n"
            f"```\npython3 -m venv .venv && .venv/bin/pip install . jupyterlab \"otter-grader>=6,<8\"\n"
            f".venv/bin/ftlab setup          # the offline data and pretrained models (a few minutes, once)\n"
            f".venv/bin/jupyter lab notebooks/\n```\n\n| lesson | Colab |\n| --- | --- |\n{rows}\n\n## The lessons\n{body}")


def _copy_tree(source: Path, target: Path) -> None:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*LIBRARY_SKIP))


def build(repo_url: str, out: str | Path, *, branch: str = "main", root: str | Path = ROOT) -> Course:
    """Write the publishable course into `out` (missing, empty, or an earlier build: then all but
    its .git is replaced). Raises ValueError for a bad URL or `out`, RuntimeError if anything meant
    for instructors would reach it."""
    repo, git_url = parse_repo(repo_url)
    if not re.fullmatch(r"[\w./-]+", branch):
        raise ValueError(f"branch must be a git branch name such as 'main', got {branch!r}")
    root, out = Path(root).resolve(), Path(out).resolve()
    if out == root or root in out.parents:
        raise ValueError(f"write the course outside the project ({root}), e.g. ../ftlab-course; got {out}")
    marker = out / ".ftlab-course"
    if out.exists() and any(p.name != ".git" for p in out.iterdir()) and not marker.exists():
        raise ValueError(f"{out} holds other files: give an empty folder, or one an earlier `ftlab course build` made")
    lessons = sorted(p for p in (root / "notebooks").glob("*.ipynb") if not p.name.startswith("."))
    if not lessons:
        raise ValueError(f"{root / 'notebooks'} has no student notebooks: run `make assign` first")

    stale = [path.name for path in lessons if (root / "notebooks" / "source" / path.name).exists()
             and _colab_cell(path) != _colab_cell(root / "notebooks" / "source" / path.name)]  # 00_setup has none
    if stale:
        raise RuntimeError(f"the student notebooks {stale} have another Colab cell than their source in "
                           f"notebooks/source/: run `make assign` first")

    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():  # an earlier build: replaced whole, its git history kept
        if old.name != ".git":
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    (out / "notebooks").mkdir()
    for path in lessons:
        (out / "notebooks" / path.name).write_text(_addressed(path.read_text(encoding="utf-8"), repo, git_url, branch),
                                                   encoding="utf-8")
    course_readme = (root / "notebooks" / "README.md").read_text(encoding="utf-8")
    (out / "notebooks" / "README.md").write_text(_addressed(course_readme, repo, git_url, branch), encoding="utf-8")
    _copy_tree(root / "ftlab", out / "ftlab")
    _copy_tree(root / "datasets", out / "datasets")
    shutil.copyfile(root / "pyproject.toml", out / "pyproject.toml")  # what the Colab cell's pip install reads
    (out / "README.md").write_text(_readme(lessons, repo, branch, course_readme), encoding="utf-8")
    (out / ".gitignore").write_text("__pycache__/\n*.pyc\n.venv/\n.ipynb_checkpoints/\n")
    marker.write_text(json.dumps({"repo": repo, "git_url": git_url, "branch": branch}) + "\n")
    files = tuple(sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file() and ".git" not in p.relative_to(out).parts))
    _check(out, files)
    return Course(out, repo, git_url, files)


def _colab_cell(notebook: Path) -> str | None:
    """The source of a notebook's Colab cell (its first code cell, if it is one); None without one."""
    if not notebook.exists():
        return None
    cells = [cell for cell in json.loads(notebook.read_text(encoding="utf-8"))["cells"] if cell["cell_type"] == "code"]
    source = "".join(cells[0]["source"]) if cells else ""
    return source if '"google.colab" in sys.modules' in source else None


def _check(out: Path, files: Sequence[Path]) -> None:
    """Nothing for instructors only, and no placeholder, in what was written."""
    problems = [f"{path}: instructors' material" for path in files
                if path.parts[:2] == ("notebooks", "source") or path.parts[0] in ("build", "tests")]
    for path in files:
        if path.suffix not in (".ipynb", ".md", ".py", ".toml", ".json", ".txt"):
            continue
        text = (out / path).read_text(encoding="utf-8", errors="replace")
        if path.suffix == ".ipynb":
            found = [marker for marker in NOT_FOR_LEARNERS if marker in text]
            if found:
                problems.append(f"{path}: {', '.join(found)} (a solution or a hidden test)")
        if PLACEHOLDER_REPO in text and path.parts[0] != "ftlab":  # ftlab/course.py names it, to replace it
            problems.append(f"{path}: still names the placeholder {PLACEHOLDER_REPO}")
    if problems:
        raise RuntimeError("the course build would publish what it must not: " + "; ".join(problems)
                           + " (run `make assign` to regenerate the student notebooks)")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m ftlab.course colab-install REPO`: the Colab cell's install, runnable from a clone."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "colab-install":
        print("usage: python -m ftlab.course colab-install REPO   (REPO: a clone of the course)", file=sys.stderr)
        return 2
    colab_install(args[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
