"""Build the course from its source notebooks: what learners open, and what graders use (`make assign`).

    python scripts/assign.py                                      # every lesson in notebooks/source/
    python scripts/assign.py 01_what_a_pretrained_network_knows   # some lessons, by name
    python scripts/assign.py --notebooks DIR --autograder DIR     # somewhere else (tests/test_course.py)

For each `notebooks/source/<lesson>.ipynb` (otter-assign format: solutions, public and hidden tests)
`otter assign` makes
  notebooks/<lesson>.ipynb              the student notebook: solutions replaced by `...`, public
                                        tests only (in its metadata), committed, what learners open;
  build/autograder/<lesson>-autograder_<time>.zip
                                        every test, hidden ones included (otter's name, which
                                        `ftlab grade --lesson N` looks for; older ones are removed):
                                        never committed, never given to learners (anyone holding it
                                        can read the hidden tests);
  build/autograder/<lesson>.ipynb       the solution notebook with the check cells (what a learner
                                        who answered everything right would hand in).
The output is made reproducible: cell ids are numbered by position, and `metadata.ftlab.wrong_answer`
(the course test's deliberate mistake, which quotes a solution line) is dropped from the student notebook.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "notebooks" / "source"
NOTEBOOKS = ROOT / "notebooks"
AUTOGRADER = ROOT / "build" / "autograder"
PRIVATE_METADATA = ("wrong_answer", "trivial_answers")  # keys of metadata.ftlab that must not reach learners


@dataclass(frozen=True)
class Assigned:
    """What `assign` wrote for one lesson."""

    lesson: str
    student: Path  # the student notebook
    autograder: Path  # the autograder zip (all tests)
    solution: Path  # the solution notebook with check cells


def lessons(source: Path = SOURCE) -> list[Path]:
    """The source notebooks of the course, in lesson order (their names start with the number)."""
    return sorted(path for path in source.glob("*.ipynb") if not path.name.startswith("."))


def _stable(notebook: dict, *, student: bool) -> dict:
    """Position-numbered cell ids (otter invents random ones for the cells it adds), and no private
    metadata in what learners get."""
    for i, cell in enumerate(notebook["cells"]):
        cell["id"] = f"cell-{i:03d}"
    if student:
        ftlab_meta = notebook.get("metadata", {}).get("ftlab", {})
        for key in PRIVATE_METADATA:
            ftlab_meta.pop(key, None)
    return notebook


def _write_json(path: Path, notebook: dict) -> None:
    """Written by nbformat, as Jupyter saves notebooks: the same source gives the same bytes."""
    import nbformat

    nbformat.write(nbformat.from_dict(notebook), str(path))


def assign(source: Path, *, notebooks: Path = NOTEBOOKS, autograder: Path = AUTOGRADER,
           verbose: bool = False) -> Assigned:
    """Run otter assign on one source notebook; write the student notebook, the zip, the solution."""
    import otter.assign

    lesson = source.stem
    notebooks.mkdir(parents=True, exist_ok=True)
    autograder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"assign-{lesson}-") as tmp:
        out = Path(tmp) / "dist"
        quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
        with quiet:
            otter.assign.main(str(source), str(out), no_pdfs=True, no_run_tests=True)
        zips = sorted((out / "autograder").glob(f"{lesson}-autograder_*.zip"))
        if len(zips) != 1:
            raise RuntimeError(f"{source}: otter assign wrote {len(zips)} autograder zips; is `generate: true` "
                               "in the notebook's ASSIGNMENT CONFIG?")
        student = notebooks / f"{lesson}.ipynb"
        solution = autograder / f"{lesson}.ipynb"
        zip_path = autograder / zips[0].name
        for stale in autograder.glob(f"{lesson}-autograder_*.zip"):
            stale.unlink()
        for made, target, is_student in ((out / "student" / f"{lesson}.ipynb", student, True),
                                         (out / "autograder" / f"{lesson}.ipynb", solution, False)):
            _write_json(target, _stable(json.loads(made.read_text(encoding="utf-8")), student=is_student))
        shutil.copyfile(zips[0], zip_path)
    return Assigned(lesson, student, zip_path, solution)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("lessons", nargs="*", help="lesson names (default: every notebooks/source/*.ipynb)")
    parser.add_argument("--source", type=Path, default=SOURCE, help="folder of source notebooks")
    parser.add_argument("--notebooks", type=Path, default=NOTEBOOKS, help="where student notebooks go")
    parser.add_argument("--autograder", type=Path, default=AUTOGRADER, help="where autograder zips go")
    parser.add_argument("-v", "--verbose", action="store_true", help="show otter's own output")
    args = parser.parse_args(argv)
    found = {path.stem: path for path in lessons(args.source)}
    unknown = [name for name in args.lessons if name.removesuffix(".ipynb") not in found]
    if unknown:
        parser.error(f"no such lesson(s) {unknown} in {args.source}; lessons: {', '.join(found) or 'none'}")
    chosen = [found[name.removesuffix(".ipynb")] for name in args.lessons] or list(found.values())
    for source in chosen:
        made = assign(source, notebooks=args.notebooks, autograder=args.autograder, verbose=args.verbose)
        print(f"assign: {made.lesson}: {_relative(made.student)}, {_relative(made.autograder)}")
    return 0


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
