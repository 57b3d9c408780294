"""The autograder: an otter-grader zip made by `otter assign`, read once per batch.

    ag = load_autograder("build/autograder/02_fine_tuning-autograder_2025_01_01T00_00_00_000000.zip")
    ag.questions        -> {"q1": 1.0, "q2": 2.0, ...}   points possible, in question order
    ag.tests            -> {"q1.py": b"...", ...}        public and hidden test cases
    find_lesson_autograder(2)   # build/autograder/02_*-autograder_*.zip, the newest

The tests are kept in memory and handed to each sandbox through a pipe; they are never written
where a submission's code runs before its last cell has finished (see ftlab.grade.runner).
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

__all__ = ["Autograder", "AutograderError", "load_autograder", "find_lesson_autograder", "natural_key"]


class AutograderError(ValueError):
    """The autograder zip cannot be used (grading cannot run at all)."""


def natural_key(name: str) -> list:
    """Sort q2 before q10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


@dataclass(frozen=True)
class Autograder:
    path: Path
    sha256: str  # of the zip: a result is reused only when graded by the same autograder
    config: dict  # otter_config.json
    tests: dict[str, bytes] = field(repr=False)  # tests/<question>.py -> content
    files: dict[str, bytes] = field(repr=False)  # support files given to every submission
    questions: dict[str, float] = field(default_factory=dict)  # question -> points possible
    cases: dict[str, tuple] = field(default_factory=dict, repr=False)  # question -> (otter TestCases, all_or_nothing)
    notes: tuple[str, ...] = ()  # otter settings ftlab grade does not follow

    @property
    def assignment_name(self) -> str | None:
        return self.config.get("assignment_name")

    @property
    def points_possible(self) -> float:
        return float(sum(self.questions.values()))

    def test_hashes(self) -> dict[str, str]:
        return {name: hashlib.sha256(data).hexdigest() for name, data in self.tests.items()}


def _safe_member(name: str) -> bool:
    path = PurePosixPath(name)
    return not path.is_absolute() and ".." not in path.parts


def _read_tests(tests: dict[str, bytes]) -> tuple[dict[str, float], dict[str, tuple]]:
    """Points and test cases per question, read by otter itself (OK and exception formats alike)."""
    import sys

    sys.modules.setdefault("rfc3987_syntax", None)  # jsonschema's optional `iri` format: 1.3 s to import
    from otter.nbmeta_config import NBMetadataConfig
    from otter.test_files import create_test_file

    points, cases = {}, {}
    with tempfile.TemporaryDirectory(prefix="ftlab-tests-") as folder:
        for name, data in tests.items():
            path = Path(folder) / name
            path.write_bytes(data)
            try:
                test = create_test_file(str(path), NBMetadataConfig())
            except Exception as error:  # noqa: BLE001 - any error means the autograder is broken
                raise AutograderError(f"test file tests/{name} cannot be read by otter: "
                                      f"{type(error).__name__}: {error}") from None
            points[test.name] = float(test.possible)
            cases[test.name] = (test.test_cases, test.all_or_nothing)
    return dict(sorted(points.items(), key=lambda item: natural_key(item[0]))), cases


STDIN = "-"  # `--autograder -`: the zip comes through a pipe (from a CI secret) and never touches disk


def load_autograder(path: str | Path) -> Autograder:
    """Read an otter autograder zip ("-": from stdin); AutograderError says what is wrong with a bad one."""
    if str(path) == STDIN:
        data, path = sys.stdin.buffer.read(), Path("<stdin>")
    else:
        path = Path(path)
        if not path.is_file():
            raise AutograderError(f"autograder {path} does not exist (make it with `otter assign`, "
                                  "or `make assign` for the course lessons)")
        data = path.read_bytes()
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise AutograderError(f"{path} is not a zip file; expected the autograder zip written by "
                              "`otter assign` (with `generate: true` in its ASSIGNMENT CONFIG)") from None
    with archive:
        names = [n for n in archive.namelist() if not n.endswith("/")]
        unsafe = [n for n in names if not _safe_member(n)]
        if unsafe:
            raise AutograderError(f"{path} has members outside its folder: {unsafe[:3]}")
        tests = {n[len("tests/"):]: archive.read(n) for n in names
                 if n.startswith("tests/") and n.endswith(".py") and n.count("/") == 1}
        files = {n[len("files/"):]: archive.read(n) for n in names if n.startswith("files/")}
        config = json.loads(archive.read("otter_config.json")) if "otter_config.json" in names else {}
    if not tests:
        raise AutograderError(f"{path} has no tests/*.py: is it an otter autograder zip? "
                              f"It holds: {', '.join(names[:8]) or 'nothing'}")
    if config.get("lang", "python") != "python":
        raise AutograderError(f"{path} is an autograder for {config['lang']}; ftlab grade handles Python only")
    ignored = [k for k in ("plugins", "grade_from_log", "pdf", "token", "zips") if config.get(k)]
    points, cases = _read_tests(tests)
    return Autograder(path, hashlib.sha256(data).hexdigest(), config, tests, files, points, cases,
                      tuple(f"the autograder's otter setting {k!r} is not used by ftlab grade" for k in ignored))


def find_lesson_autograder(lesson: int, root: str | Path = "build/autograder") -> Path:
    """The autograder zip of lesson `lesson` (by its two-digit prefix), the newest if several."""
    root = Path(root)
    prefix = f"{lesson:02d}"
    found = sorted(root.rglob("*-autograder_*.zip")) if root.is_dir() else []
    matches = [p for p in found if re.match(rf"{prefix}(?!\d)", p.name)]
    if not matches:
        have = ", ".join(str(p.relative_to(root)) for p in found) or "no autograder zips"
        where = root if root.is_dir() else f"{root} (which does not exist)"
        raise AutograderError(f"no autograder for lesson {prefix} in {where}; found: {have}. "
                              "Run `make assign` to build them, or pass --autograder PATH.")
    # otter names the zip <notebook>-autograder_<timestamp>.zip: the name orders by time
    return max(matches, key=lambda p: (p.name.split("-autograder_")[-1], str(p)))
