#!/usr/bin/env bash
# Builds .venv-colab: Colab's preinstalled versions of what the course touches (colab/preinstalled.txt)
# plus the tools that test it (colab/harness.txt). Idempotent: a second call with the same lists
# returns in a second. colab/test_emulation.py treats this environment as Colab's image: every test
# session works in a throw-away copy of it, so the image itself never gets ftlab or otter-grader.
#
# torch, torchvision and the CUDA wheels torch pins are taken from .venv by hard links when .venv has
# the very same versions (the same files, no second 5.5 GB, about 2 min saved); else pip installs
# them. Set COLAB_ENV_REBUILD=1 to start from nothing.
set -euo pipefail
VENV=${VENV_COLAB:-.venv-colab}
SEED=${VENV_SEED:-.venv}  # an environment to borrow torch's files from, if it has the same versions
LISTS=(colab/preinstalled.txt colab/harness.txt)
STAMP="$VENV/.colab-env"

fail() { echo "colab env: $*" >&2; exit 1; }
quiet_pip() { grep -v "^WARNING: Location 'file://" || true; }  # this machine's local indexes are noisy

command -v python3 >/dev/null || fail "python3 is missing. Install it: sudo apt-get install -y python3 python3-venv"
fingerprint=$(cat "${LISTS[@]}" "$0" | sha256sum | cut -d' ' -f1)
[ "${COLAB_ENV_REBUILD:-0}" = 1 ] && rm -rf "$VENV"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$fingerprint" ] && [ -x "$VENV/bin/python" ]; then
  echo "colab env: $VENV is up to date ($(grep -c '==' colab/preinstalled.txt) packages at Colab's versions)"
else
  started=$(date +%s)
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" || fail "could not create $VENV: sudo apt-get install -y python3-venv"
  rm -f "$STAMP"
  # torch's files from $SEED, linked not copied, when it has exactly the pinned torch and torchvision
  python3 - "$SEED" "$VENV" colab/preinstalled.txt <<'PY'
import importlib.metadata as metadata, os, re, sys
from pathlib import Path

seed, venv, pins = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
site = f"lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"
source, target = seed / site, venv / site
wanted = dict(re.findall(r"^(torch|torchvision)==(\S+)", pins.read_text(), re.M))
found = {d.metadata["Name"].lower(): d for d in metadata.distributions(path=[str(source)])}
if not source.is_dir() or any(found.get(n) is None or found[n].version != v for n, v in wanted.items()):
    print(f"colab env: {seed} has no torch {wanted.get('torch')} / torchvision {wanted.get('torchvision')}: pip installs them")
    sys.exit(0)
if os.stat(source).st_dev != os.stat(target).st_dev:
    print(f"colab env: {seed} is on another file system: pip installs torch")
    sys.exit(0)
heavy = [d for name, d in found.items()
         if name in ("torch", "torchvision", "triton") or name.startswith(("nvidia-", "cuda-"))]
linked = 0
for dist in heavy:
    for file in dist.files or []:
        relative = os.path.normpath(str(file))
        if relative.startswith(".."):  # console scripts in bin/: their shebangs name $SEED's python
            continue
        src, dst = source / relative, target / relative
        if src.is_file() and not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.link(src, dst)
            linked += 1
print(f"colab env: linked {linked} files of {len(heavy)} packages (torch and its CUDA wheels) from {seed}")
PY
  echo "colab env: installing Colab's versions and the test tools into $VENV (a few minutes the first time)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${LISTS[@]/#/-r}" 2>&1 | quiet_pip
  "$VENV/bin/python" -m pip check || fail "the packages in $VENV conflict (see above)"
  "$VENV/bin/python" -m pip freeze --all > "$VENV/image-freeze.txt"  # the emulated image, as built
  echo "$fingerprint" > "$STAMP"
  echo "colab env: built $VENV in $(( $(date +%s) - started )) s"
fi

# the browser test drives Debian's chromium (never a browser a tool downloads)
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "colab env: installing Debian's chromium for the browser test"
    { apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; } >/dev/null \
      || fail "apt-get could not install chromium"
  else
    fail "/usr/bin/chromium is missing and this account cannot install it: sudo apt-get install -y chromium"
  fi
fi
