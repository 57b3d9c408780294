"""The Python versions the code needs: at most the oldest pyproject.toml claims, and nothing that
Python 3.12 or 3.13 removed. Colab runs 3.12-3.13; only 3.11 runs here, so these are static checks.

The lowest version: vermin (PyPI, in the course extra) over ftlab/, scripts/, tests/ and the
lessons' code cells. The highest: vermin does not know what later versions removed, so the modules
and names removed in 3.12 and 3.13 are looked for in the syntax trees of the same code.
"""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("ftlab", "scripts", "tests")
# tomllib is new in 3.11; every import of it falls back to tomli (checked below), so vermin may skip it
GUARDED = ("tomllib",)
REMOVED_MODULES = {  # module -> the version that removed it (PEP 594, PEP 632, What's New)
    **dict.fromkeys(["distutils", "imp", "asynchat", "asyncore", "smtpd"], "3.12"),
    **dict.fromkeys(["aifc", "audioop", "cgi", "cgitb", "chunk", "crypt", "imghdr", "mailcap", "msilib", "nis",
                     "nntplib", "ossaudiodev", "pipes", "sndhdr", "spwd", "sunau", "telnetlib", "uu", "xdrlib",
                     "lib2to3", "typing.io", "typing.re", "tkinter.tix"], "3.13"),
}
REMOVED_NAMES = {  # module.name -> the version that removed it
    "configparser.SafeConfigParser": "3.12", "configparser.readfp": "3.12", "ssl.wrap_socket": "3.12",
    "ssl.match_hostname": "3.12", "pkgutil.ImpImporter": "3.12", "pkgutil.ImpLoader": "3.12",
    "locale.format": "3.12", "importlib.find_loader": "3.12", "unittest.findTestCases": "3.13",
    "unittest.makeSuite": "3.13", "unittest.getTestCaseNames": "3.13", "locale.resetlocale": "3.13",
    "re.template": "3.13", "configparser.LegacyInterpolation": "3.13", "pathlib.Path.link_to": "3.12",
}
REMOVED_METHODS = {  # unittest.TestCase's old aliases, removed in 3.12, as attributes of anything
    name: "3.12" for name in ("assertEquals", "assertNotEquals", "assertAlmostEquals", "assertNotAlmostEquals",
                              "assert_", "failUnless", "failIf", "failUnlessEqual", "failIfEqual",
                              "failUnlessRaises", "failUnlessAlmostEqual", "failIfAlmostEqual",
                              "assertRegexpMatches", "assertNotRegexpMatches", "assertRaisesRegexp",
                              "assertDictContainsSubset")}


def claimed_minimum() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    return re.search(r'^requires-python\s*=\s*">=\s*(3\.\d+)"', text, re.M)[1]


def python_files() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def lesson_code(notebook: Path) -> str:
    """A lesson's code cells as one Python file (IPython's `%magic` and `!shell` lines dropped)."""
    cells = ["".join(c["source"]) for c in json.loads(notebook.read_text(encoding="utf-8"))["cells"]
             if c["cell_type"] == "code"]
    return "\n\n".join("\n".join(line for line in cell.splitlines() if not line.lstrip().startswith(("%", "!")))
                       for cell in cells)


@pytest.fixture(scope="module")
def lessons(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("lessons")
    written = []
    for notebook in sorted((ROOT / "notebooks" / "source").glob("*.ipynb")) + [ROOT / "notebooks" / "00_setup.ipynb"]:
        path = folder / f"{notebook.stem}.py"
        path.write_text(lesson_code(notebook), encoding="utf-8")
        written.append(path)
    return written


VERMIN = [sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())"]  # its console script, any venv


def vermin(paths, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([*VERMIN, "--no-tips", "--eval-annotations", "--violations",
                           f"-t={claimed_minimum()}-", *(a for name in GUARDED for a in ("--exclude", name)), *extra,
                           *map(str, paths)], capture_output=True, text=True, timeout=120)


def test_pyproject_claims_python_310():
    assert claimed_minimum() == "3.10"


def test_the_code_runs_on_the_oldest_python_pyproject_claims(lessons):
    done = vermin([ROOT / folder for folder in FOLDERS] + lessons)
    assert done.returncode == 0, (f"code that needs a newer Python than {claimed_minimum()} "
                                  f"(pyproject.toml's requires-python):\n{done.stdout}{done.stderr}")


def test_vermin_would_catch_a_newer_construct(tmp_path):
    """The check above can fail: `except*` is 3.11, a tomllib import 3.11 (when not excused)."""
    (tmp_path / "new.py").write_text("try:\n    pass\nexcept* ValueError:\n    pass\n")
    (tmp_path / "toml.py").write_text("import tomllib\n")
    newer = vermin([tmp_path / "new.py"])
    assert newer.returncode != 0 and "`except*` requires !2, 3.11" in newer.stdout
    plain = subprocess.run([*VERMIN, "--no-tips", "--violations", "-t=3.10-",
                            str(tmp_path / "toml.py")], capture_output=True, text=True)
    assert plain.returncode != 0 and "tomllib" in plain.stdout


def test_every_guarded_import_has_its_fallback():
    """What GUARDED excuses: `import tomllib` only inside a try whose handler imports tomli instead."""
    checked = 0
    for path in python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Try):
                continue
            body = {a.name for n in node.body if isinstance(n, ast.Import) for a in n.names}
            if body & set(GUARDED):
                fallbacks = {a.name for h in node.handlers for n in h.body if isinstance(n, ast.Import) for a in n.names}
                assert "tomli" in fallbacks, f"{path}: import tomllib without a tomli fallback (Python 3.10)"
                checked += 1
        guarded = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try) for n in t.body}
        bare = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Import) and id(n) not in guarded
                and {a.name for a in n.names} & set(GUARDED)]
        assert not bare, f"{path}: lines {bare} import tomllib outside a try (it is new in Python 3.11)"
    assert checked >= 1


def removed_uses(source: str) -> list[str]:
    """What `source` uses that Python 3.12 or 3.13 removed, as 'line N: name (removed in 3.x)'."""
    tree = ast.parse(source)
    found, aliases = [], {}  # aliases: local name -> module it names
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[(alias.asname or alias.name).split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
                names = [alias.name]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Attribute):
            if node.attr in REMOVED_METHODS:
                found.append(f"line {node.lineno}: .{node.attr} (removed in {REMOVED_METHODS[node.attr]})")
            dotted, inner = [node.attr], node.value
            while isinstance(inner, ast.Attribute):
                dotted.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id in aliases:
                names = [".".join([aliases[inner.id], *reversed(dotted)])]
            else:
                continue
        else:
            continue
        for name in names:
            for removed, version in {**REMOVED_MODULES, **REMOVED_NAMES}.items():
                if name == removed or name.startswith(removed + ".") and removed in REMOVED_MODULES:
                    found.append(f"line {node.lineno}: {name} (removed in {version})")
    return sorted(set(found))


def test_nothing_removed_in_python_312_or_313_is_used(lessons):
    problems = {str(path.relative_to(ROOT)): removed_uses(path.read_text(encoding="utf-8")) for path in python_files()}
    problems.update({path.name: removed_uses(path.read_text(encoding="utf-8")) for path in lessons})
    problems = {path: found for path, found in problems.items() if found}
    assert not problems, f"uses of what Python 3.12/3.13 removed: {problems}"


@pytest.mark.parametrize("source, expected", [
    ("import imp", ["line 1: imp (removed in 3.12)"]),
    ("from distutils.version import LooseVersion", ["line 1: distutils.version (removed in 3.12)",
                                                   "line 1: distutils.version.LooseVersion (removed in 3.12)"]),
    ("import cgi as web\nweb.escape('x')", ["line 1: cgi (removed in 3.13)", "line 2: cgi.escape (removed in 3.13)"]),
    ("import locale\nlocale.resetlocale()", ["line 2: locale.resetlocale (removed in 3.13)"]),
    ("import unittest\nunittest.makeSuite(T)", ["line 2: unittest.makeSuite (removed in 3.13)"]),
    ("self.assertEquals(a, b)", ["line 1: .assertEquals (removed in 3.12)"]),
    ("from typing import io", ["line 1: typing.io (removed in 3.13)"]),
    ("import locale\nlocale.setlocale(locale.LC_ALL, '')\nimport importlib.util", []),
])
def test_removed_uses_finds_them(source, expected):
    assert removed_uses(source) == expected


def test_the_removed_modules_are_real_standard_library_modules():
    """The table names modules this Python (3.11) still has, so no entry is a typo."""
    top = {name.split(".")[0] for name in REMOVED_MODULES}
    assert top <= set(sys.stdlib_module_names), sorted(top - set(sys.stdlib_module_names))
