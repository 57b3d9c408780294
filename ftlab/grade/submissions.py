"""Finding the submissions of a class, naming their learners, and turning away what cannot be graded.

    subs = find_submissions(["class/", "late/bob.ipynb", "section_b.zip"], staging=Path(tmp))
    [s.learner for s in subs]   -> ["alice", "carol", "late/bob"... "section_b/zed"]
    precheck(subs[0], autograder)   -> None, or the reason it gets zero without running

A folder gives every file in it (a PDF or an empty file is a submission too: it gets zero and a
reason, so nobody silently disappears from the class list). A zip holding one notebook is one
learner's `otter export`; a zip holding several is a class. A zip member whose path leaves the
archive (`../../tmp/x.ipynb`) is never unpacked: it is a learner of its own, rejected with that
reason. Nothing here runs learner code.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = ["Submission", "find_submissions", "precheck", "notebook_file_name", "slug", "NoSubmissions"]

MAX_NOTEBOOK_BYTES = 256 * 2**20  # bigger than any honest lesson notebook with its plots
_MAX_ZIP_BYTES = 4 * 2**30
_SKIP_NAMES = {".ipynb_checkpoints", "__MACOSX", ".DS_Store", "Thumbs.db", ".git"}


class NoSubmissions(ValueError):
    """Nothing to grade was found (grading cannot run)."""


@dataclass(frozen=True)
class Submission:
    learner: str  # "alice", "section_b/zed": unique in the batch, the CSV's first column
    path: Path  # the file to grade (zip members are extracted to the batch's staging folder)
    origin: str  # where it came from, as the instructor gave it
    sha256: str  # of the file's bytes: a result is reused only for the same bytes
    problem: str | None = None  # why it cannot be read at all (a symbolic link, a broken zip)

    def __repr__(self) -> str:
        return f"Submission({self.learner!r} from {self.origin})"


def _digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def _learner_name(relative: str) -> str:
    return relative[:-len(".ipynb")] if relative.endswith(".ipynb") else relative


def _skipped(parts) -> bool:
    return any(part in _SKIP_NAMES or part.startswith(".") for part in parts)


def _leaves_archive(name: str) -> bool:
    """A member path that would be written outside the folder it is unpacked in (`../x`, `/etc/x`)."""
    path = PurePosixPath(name.replace("\\", "/"))  # zips made on Windows may use backslashes
    return path.is_absolute() or ".." in path.parts or (len(name) > 1 and name[1] == ":")


def _from_zip(path: Path, staging: Path, prefix: str) -> list[tuple[str, Path, str, str | None]]:
    """(learner, extracted file, origin, problem) for each member: one learner for an otter export.
    A member whose path leaves the archive is never unpacked; it is a learner of its own, rejected."""
    with zipfile.ZipFile(path) as archive:
        files = [m for m in archive.infolist() if not m.is_dir()]
        climbing = [m for m in files if _leaves_archive(m.filename)]  # before _skipped: ".." starts with a dot
        members = [m for m in files if m not in climbing and not _skipped(PurePosixPath(m.filename).parts)]
        if sum(m.file_size for m in members) > _MAX_ZIP_BYTES:
            raise ValueError(f"{path} would unpack to more than {_MAX_ZIP_BYTES >> 30} GiB")
        notebooks = [m for m in members if m.filename.endswith(".ipynb")]
        # a class or one learner's export: counted with the climbing members (two notebooks: a class)
        single = len(notebooks) + sum(m.filename.endswith(".ipynb") for m in climbing) == 1 \
            and not any(m.filename.endswith(".zip") for m in members)
        chosen = notebooks if single else members
        folder = staging / f"zip-{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
        out = [(f"{prefix}/{_learner_name(m.filename)}", path, f"{path}:{m.filename}",
                 f"path leaves the archive ({m.filename!r}): not unpacked, not graded") for m in climbing]
        for member in chosen:
            target = folder / member.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as source, open(target, "wb") as sink:
                for block in iter(lambda: source.read(1 << 20), b""):
                    sink.write(block)
            learner = prefix if single else f"{prefix}/{_learner_name(member.filename)}"
            out.append((learner, target, f"{path}:{member.filename}", None))
        return out


def _expand(path: Path, staging: Path, learner: str) -> list[tuple[str, Path, str, str | None]]:
    """(learner, file, origin, problem) for a file, or for each member of a zip."""
    if path.is_symlink():  # a learner's link could point at a solution notebook or a secret
        return [(_learner_name(learner), path, str(path), f"a symbolic link (to {os.readlink(path)}), not followed")]
    if path.suffix.lower() == ".zip" and zipfile.is_zipfile(path):
        try:
            return _from_zip(path, staging, learner[:-len(".zip")] if learner.endswith(".zip") else learner)
        except (zipfile.BadZipFile, RuntimeError, ValueError, OSError, EOFError) as error:
            return [(_learner_name(learner), path, str(path), f"a zip file that cannot be unpacked: {error}")]
    return [(_learner_name(learner), path, str(path), None)]


def find_submissions(paths, *, staging: Path, exclude=()) -> list[Submission]:
    """Every submission in `paths` (files, folders, zips), sorted by learner name; files inside
    `exclude` (the results folder, the autograder) are left out, symbolic links are not followed.

    Raises NoSubmissions when a path does not exist or nothing at all is found."""
    exclude = [Path(e).resolve() for e in exclude]
    found: list[tuple[str, Path, str, str | None]] = []
    for given in map(Path, paths):
        if given.is_dir() and not given.is_symlink():
            for root, dirs, files in os.walk(given):  # does not enter linked folders
                dirs.sort()
                for name in sorted(files):
                    file = Path(root) / name
                    relative = file.relative_to(given)
                    resolved = file.resolve()
                    if not _skipped(relative.parts) and not any(resolved == e or e in resolved.parents
                                                                for e in exclude):
                        found += _expand(file, staging, relative.as_posix())
        elif given.exists() or given.is_symlink():
            found += _expand(given, staging, given.name)
        else:
            raise NoSubmissions(f"{given} does not exist (pass notebooks, folders of them, or zips)")
    if not found:
        raise NoSubmissions(f"no files found in {', '.join(map(str, paths))}")
    names: dict[str, int] = {}
    submissions = []
    for learner, file, origin, problem in found:
        if learner in names:  # the same name from two places: tell them apart by where they came from
            names[learner] += 1
            learner = f"{learner} ({names[learner]})"
        names.setdefault(learner, 1)
        digest = hashlib.sha256(str(problem).encode()).hexdigest() if problem else _digest(file)
        submissions.append(Submission(learner, file, origin, digest, problem))
    return sorted(submissions, key=lambda s: s.learner)


def slug(learner: str) -> str:
    """A file name for a learner's results: readable, unique (a short hash), no path separators."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", learner).strip("._")[:80] or "learner"
    return f"{readable}-{hashlib.sha256(learner.encode()).hexdigest()[:8]}"


def precheck(submission: Submission, assignment_name: str | None) -> str | None:
    """Why `submission` gets zero without running (empty, not a notebook, another lesson), or None."""
    if submission.problem:
        return submission.problem
    size = submission.path.stat().st_size
    if size == 0:
        return "empty file (0 bytes): nothing was submitted"
    if size > MAX_NOTEBOOK_BYTES:
        return f"the file is {size / 2**20:.0f} MB, more than the {MAX_NOTEBOOK_BYTES >> 20} MB a notebook may have"
    raw = submission.path.read_bytes()
    try:
        notebook = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return f"not a Jupyter notebook: the file is not JSON (it starts with {raw[:12]!r})"
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
        return "not a Jupyter notebook: JSON without a list of cells"
    if notebook.get("nbformat", 0) < 4:
        return f"an old notebook format (nbformat {notebook.get('nbformat')}); save it with Jupyter 4 or later"
    try:
        import warnings

        import nbformat

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # missing cell ids and the like: otter grades those fine
            nbformat.reads(raw.decode("utf-8"), as_version=4)
    except Exception as error:  # noqa: BLE001 - whatever nbformat dislikes, the reason says it
        return f"not a readable Jupyter notebook: {type(error).__name__}: {error}"[:300]
    if assignment_name:
        metadata = notebook.get("metadata") or {}
        got = (metadata.get("otter") or {}).get("assignment_name") if isinstance(metadata, dict) else None
        if got is None:
            return (f"the notebook has no otter assignment name: was it made from the student notebook of "
                    f"'{assignment_name}'? (a new notebook with copied cells lacks it)")
        if got != assignment_name:
            return f"a notebook of a different lesson ('{got}'); this autograder grades '{assignment_name}'"
    return None


_NOTEBOOK_CALL = re.compile(r"""Notebook\(\s*(?:nb_path\s*=\s*)?["']([A-Za-z0-9._ -]+\.ipynb)["']""")


def notebook_file_name(notebook: dict) -> str:
    """The file name the notebook expects to have (`otter.Notebook("lesson.ipynb")`), else a default."""
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") == "code":
            source = cell.get("source", "")
            match = _NOTEBOOK_CALL.search(source if isinstance(source, str) else "".join(source))
            if match:
                return match.group(1)
    return "submission.ipynb"
