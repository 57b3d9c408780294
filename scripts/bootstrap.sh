#!/usr/bin/env bash
# Creates .venv and installs ftlab with everything the course needs. Idempotent: `make` only calls
# it when pyproject.toml is newer than the last successful install.
set -euo pipefail
VENV=${VENV:-.venv}

fail() { echo "ftlab setup: $*" >&2; exit 1; }

command -v python3 >/dev/null || fail "python3 is missing. Install it: sudo apt-get install -y python3 python3-venv"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || fail "Python >= 3.10 is needed, found $(python3 --version). Install a newer one (e.g. sudo apt-get install -y python3.11 python3.11-venv)"

if [ ! -x "$VENV/bin/python" ]; then
  echo "ftlab setup: creating $VENV"
  python3 -m venv "$VENV" 2>/dev/null \
    || fail "could not create a virtual environment. Install venv: sudo apt-get install -y python3-venv"
fi

echo "ftlab setup: installing ftlab and its dependencies into $VENV (a few minutes the first time)"
# torch and torchvision are ranges in pyproject.toml: a machine with a pip cap or a local wheel
# takes those, Colab keeps its own, anywhere else pip takes the newest compatible release.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[course]' 2>&1 \
  | grep -v "^WARNING: Location 'file://" || true
"$VENV/bin/python" -c 'import ftlab, torch, torchvision, transformers, otter, nbval' \
  || fail "the install did not complete (see pip's messages above); re-run: $VENV/bin/pip install -e '.[course]'"
