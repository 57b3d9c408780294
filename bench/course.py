"""How long each lesson takes to run top to bottom: every solution notebook, one after the other.

    python bench/course.py                      # every lesson in notebooks/source, a cold run store
    python bench/course.py 05 07                # some lessons (name prefixes)

Each solution notebook (notebooks/source/*.ipynb: the lesson with its answers and every test) runs
in a fresh kernel with one torch thread (as `make test` runs them), with an empty run store (so
every fine-tuning run trains: what a learner's first run costs; the pretrained models are shared).
Reports wall seconds and the CPU seconds of the kernel (user + system), which stay close to the
wall time of a quiet core even when the machine is busy. Written to bench/results/course.json.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "notebooks" / "source"

_RUN_ONE = r"""
import sys, nbformat
from nbclient import NotebookClient
path = sys.argv[1]
notebook = nbformat.read(path, as_version=4)
NotebookClient(notebook, timeout=1800, kernel_name="python3",
               resources={"metadata": {"path": sys.argv[2]}}).execute()
"""


def models_home() -> Path:
    return Path(os.environ.get("FTLAB_HOME", Path.home() / ".cache" / "ftlab")) / "models"


def time_lesson(notebook: Path, home: Path) -> dict:
    env = dict(os.environ, FTLAB_HOME=str(home), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _RUN_ONE, str(notebook), str(notebook.parent)], env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"lesson": notebook.stem, "ok": done.returncode == 0, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "error": done.stderr[-1500:] if done.returncode else None}


def main(argv: list[str]) -> int:
    lessons = sorted(p for p in SOURCE.glob("*.ipynb") if not argv or p.stem.startswith(tuple(argv)))
    rows, load_before = [], os.getloadavg()[0]  # the machine may be shared: say how busy it was
    with tempfile.TemporaryDirectory(prefix="ftlab-bench-course-") as home:
        (Path(home) / "models").symlink_to(models_home())  # pretrained weights shared, run store empty
        for notebook in lessons:
            row = time_lesson(notebook, Path(home))
            rows.append(row)
            print(f"{row['lesson']:45s} {'ok' if row['ok'] else 'FAILED'}  wall {row['wall_s']:6.1f} s  "
                  f"cpu {row['cpu_s']:6.1f} s", flush=True)
    total_wall, total_cpu = sum(r["wall_s"] for r in rows), sum(r["cpu_s"] for r in rows)
    print(f"{'the course':45s}      wall {total_wall:6.1f} s  cpu {total_cpu:6.1f} s")
    result = {"cpus": os.cpu_count(), "machine": platform.machine(), "load_before": load_before,
              "threads": 1, "lessons": rows, "total_wall_s": round(total_wall, 1), "total_cpu_s": round(total_cpu, 1)}
    if not argv:
        (ROOT / "bench" / "results").mkdir(exist_ok=True)
        (ROOT / "bench" / "results" / "course.json").write_text(json.dumps(result, indent=1))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
