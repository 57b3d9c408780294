"""The lowest version of each direct dependency that pyproject.toml allows, as pip requirements.

    python scripts/lowest_pins.py --extras course --unpinned torch,torchvision > lowest.txt
    pip install -r lowest.txt             # every direct dependency at its floor ("name==floor")
    python scripts/lowest_pins.py --extras course --installed    # floor and installed version of each

pip has no "lowest versions" mode, so this reads the floors from pyproject.toml (the one place
they are written) and pins each at its floor. A package named in the core list and in an extra
gets the higher of its floors (the extra may need more, e.g. ipywidgets for otter-grader).
--unpinned keeps those packages at their ranges instead: pip then takes what the machine offers
(here: torch and torchvision from the wheels on disk, under the machine's pip cap).
Every direct dependency must have a floor (">="): one without fails here, naming it.
"""
from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*?)\s*$")


def _parse(text: str) -> tuple[str, str, list[str]]:
    """'torch>=2.3,<3' -> ('torch', '', ['>=2.3', '<3'])."""
    match = REQUIREMENT.match(text)
    if not match or ";" in text:
        raise SystemExit(f"lowest_pins: cannot read the requirement {text!r} (markers are not supported)")
    name, extras, specs = match.groups()
    return name, extras or "", [s.strip() for s in specs.split(",") if s.strip()]


def _version_key(version: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"[.+-]", version))


def direct_dependencies(pyproject: Path, extras: list[str]) -> dict[str, dict]:
    """name -> {"floor", "specs" (every specifier from every list naming it), "extras"}."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    lists = [project.get("dependencies", [])]
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"lowest_pins: pyproject.toml has no extra {extra!r}; it has {sorted(optional)}")
        lists.append(optional[extra])
    found: dict[str, dict] = {}
    for requirements in lists:
        for text in requirements:
            name, package_extras, specs = _parse(text)
            floors = [s[2:].strip() for s in specs if s.startswith(">=")]
            if not floors:
                raise SystemExit(f"lowest_pins: {text!r} has no floor (>=); give every direct dependency one")
            entry = found.setdefault(name.lower(), {"name": name, "floor": floors[0], "specs": [], "extras": ""})
            if _version_key(floors[0]) > _version_key(entry["floor"]):
                entry["floor"] = floors[0]
            entry["specs"] += specs
            entry["extras"] = entry["extras"] or package_extras
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extras", default="", help="comma-separated extras to include, e.g. course")
    parser.add_argument("--unpinned", default="", help="comma-separated packages to leave at their ranges")
    parser.add_argument("--installed", action="store_true",
                        help="print each direct dependency's floor and the version installed in this Python")
    parser.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    args = parser.parse_args(argv)
    extras = [e for e in args.extras.split(",") if e]
    unpinned = {p.lower() for p in args.unpinned.split(",") if p}
    deps = direct_dependencies(args.pyproject, extras)
    unknown = unpinned - set(deps)
    if unknown:
        raise SystemExit(f"lowest_pins: --unpinned names {sorted(unknown)}, which are not direct dependencies")
    if args.installed:
        print(f"{'package':24} {'floor':>10} {'installed':>12}")
        for key, dep in deps.items():
            try:
                version = metadata.version(dep["name"])
            except metadata.PackageNotFoundError:
                version = "missing"
            note = "  (range: " + ",".join(dep["specs"]) + ")" if key in unpinned else ""
            print(f"{dep['name']:24} {dep['floor']:>10} {version:>12}{note}")
        return 0
    for key, dep in deps.items():
        if key in unpinned:
            print(f"{dep['name']}{dep['extras']}{','.join(dep['specs'])}")
        else:
            print(f"{dep['name']}{dep['extras']}=={dep['floor']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
