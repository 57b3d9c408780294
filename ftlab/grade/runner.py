"""Inside one sandbox: run a submission's notebook, then grade it (python -m ftlab.grade.runner).

ftlab.grade.sandbox starts this, one process per submission (in new namespaces where the machine
allows). It reads the job from the staging folder, the tests from stdin, and writes one JSON result
to the file descriptor `--result-fd`. In order:

1. limits, view, work folder, kernelspec, environment: ftlab.grade.workdir
2. the kernel, through ftlab.grade.kernel (fewer rights; dies with this process)
3. our first cell (ftlab.grade.in_kernel), then the learner's cells until the cells' deadline (the
   cell running then is interrupted, later cells are skipped). A `grader.check("q")` cell runs our
   checkpoint instead: a fork that keeps the state of that moment for q's test, as otter grades a
   question where its check cell is
4. namespaces only: every other process the notebook left behind is killed; then the tests are
   written, read-only (they did not exist anywhere the notebook could see until now), and the
   checkpoints are told to run them
5. the tests of questions that had no check cell, in the kernel, against the final state
6. each question's result collected (the last check of a question counts); test files' sha256 checked
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import signal
import sys
import time
import traceback
from pathlib import Path

from .in_kernel import cell_source
from .job import Job
from .workdir import KERNEL_NAME, kernel_spec, mount_view, prepare, set_environment, set_limits

GRADE_MIME = "application/vnd.ftlab.grade+json"
CHECKPOINT_MIME = "application/vnd.ftlab.checkpoint+json"
CELLS_SHARE = 0.75  # of the time limit, for the learner's cells
GRADING_END = 0.92  # the tests must have finished by then; the rest is margin to report and stop


# --- running the notebook ---------------------------------------------------------------------

def _client_class():
    from nbclient import NotebookClient

    class Client(NotebookClient):
        """nbclient with a cap on the outputs it keeps, and a note of timeouts and our results."""

        def __init__(self, *args, output_limit: int, nonce: str, **kwargs):
            super().__init__(*args, **kwargs)
            self.output_limit, self.kept, self.dropped, self.nonce = output_limit, 0, 0, nonce
            self.timed_out, self.grade_payloads, self.checkpoints = False, [], []

        def output(self, outs, msg, display_id, cell_index):
            content = msg.get("content", {})
            data = content.get("data") or {}
            if GRADE_MIME in data:
                self.grade_payloads.append(data[GRADE_MIME])
                return None
            if CHECKPOINT_MIME in data:
                payload = data[CHECKPOINT_MIME]
                if isinstance(payload, dict) and payload.get("nonce") == self.nonce:
                    self.checkpoints.append(payload)
                return None
            size = len(content.get("text", "")) + sum(len(str(v)) for v in data.values()) \
                + len("".join(content.get("traceback", [])))
            if self.kept + size > self.output_limit:
                self.dropped += size
                return None
            self.kept += size
            return super().output(outs, msg, display_id, cell_index)

        async def _async_handle_timeout(self, timeout, cell=None):
            self.timed_out = True
            return await super()._async_handle_timeout(timeout, cell)

    return Client


def _source(cell) -> str:
    source = cell.get("source", "")
    return source if isinstance(source, str) else "".join(source)


def _learner_cells(notebook, config: dict) -> list[tuple[int, object]]:
    """(position in the learner's notebook, code cell), without otter_ignore cells, seeded as otter does."""
    seed, seed_variable = config.get("seed"), config.get("seed_variable")
    cells = []
    for position, cell in enumerate(notebook.cells, start=1):
        if cell.cell_type != "code" or not _source(cell).strip():
            continue
        meta = cell.get("metadata", {})
        if "otter_ignore" in meta.get("tags", []) or meta.get("otter", {}).get("ignore", False):
            continue
        if seed is not None and not _source(cell).startswith("%%"):
            prefix = (f"{seed_variable} = {seed}" if seed_variable else
                      f"import numpy as _np, random as _random\n_np.random.seed({seed})\n_random.seed({seed})")
            cell.source = f"{prefix}\n{_source(cell)}"
        cells.append((position, cell))
    return cells


def _error_of(cell) -> tuple[str, str] | None:
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            return output.get("ename", "Error"), str(output.get("evalue", ""))[:200]
    return None


def _kill_other_processes(keep: set[int]) -> int:
    """In our own pid namespace: SIGKILL everything the notebook left running (not the kernel)."""
    killed = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in keep:
            try:
                os.kill(int(entry), signal.SIGKILL)
                killed += 1
            except (ProcessLookupError, PermissionError):
                pass
    return killed


def _write_tests(folder: Path, tests: dict[str, str]) -> list[str]:
    folder.mkdir(mode=0o755)
    paths = []
    for name, content in sorted(tests.items()):
        path = folder / name
        path.write_text(content, encoding="utf-8")
        os.chmod(path, 0o444)
        paths.append(str(path))
    return paths


_CHECK_CELL = re.compile(r"""^\s*\w+\.check\(\s*["']([^"']+)["']\s*\)\s*;?\s*$""")


def check_cell_question(source: str) -> str | None:
    """The question of a cell that is only `grader.check("q")` (comments and blank lines aside)."""
    code = [line for line in source.splitlines() if line.strip() and not line.strip().startswith("#")]
    match = _CHECK_CELL.match(code[0]) if len(code) == 1 else None
    return match.group(1) if match else None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has finished
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (not Linux): ask the kernel
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True


def _stop(pid: int) -> None:
    if _alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _run_learner_cells(client, run_nb, cells, job: Job, started: float, checkpoint_source,
                       questions: set[str]) -> dict:
    """Our first cell, then the learner's cells (checks replaced by checkpoints) until the deadline."""
    from nbclient.exceptions import DeadKernelError

    state = {"errors": [], "ran": 0, "stopped_at": None, "died": None, "checkpoints": []}
    deadline = started + job.timeout_s * CELLS_SHARE
    current = "ftlab's first cell"
    try:
        client.execute_cell(run_nb.cells[0], 0, store_history=False)
        for index, (position, cell) in enumerate(cells, start=1):
            remaining = deadline - time.monotonic()
            if remaining < 1:
                state["stopped_at"] = position
                break
            client.timeout = max(1, int(remaining))
            client.iopub_timeout = 2  # after a reply, outputs still on their way (also after an interrupt)
            client.timed_out = False
            current = f"cell {position}"
            question = check_cell_question(_source(cell))
            if question in questions:  # run our checkpoint in its place; the learner's cell keeps its text
                import nbformat

                stand_in = nbformat.v4.new_code_cell(checkpoint_source(question))
                run_nb.cells[index] = stand_in
                seen = len(client.checkpoints)
                client.execute_cell(stand_in, index, store_history=False)
                state["checkpoints"] += [(position, question, c["pid"]) for c in client.checkpoints[seen:]
                                         if c.get("question") == question and isinstance(c.get("pid"), int)]
                cell = stand_in  # its error, if any (no fork possible?), is reported like the learner's
            else:
                client.execute_cell(cell, index)
            state["ran"] += 1
            if client.timed_out:
                state["stopped_at"] = position
                break
            error = _error_of(cell)
            if error:
                first_line = _source(cell).strip().splitlines()[0][:50]
                state["errors"].append(f"cell {position} ({first_line!r}) raised {error[0]}: {error[1]}".rstrip(": "))
    except DeadKernelError:
        state["died"] = current
    return state


def _collect_checkpoints(checkpoints, results_dir: Path, nonce: str, deadline: float) -> tuple[dict, dict, list]:
    """Each question's result from its last checkpoint: ({q: test dict}, {q: why missing}, notes)."""
    last = {}
    for position, question, pid in checkpoints:
        last[question] = (position, pid)
    while time.monotonic() < deadline:  # (earlier checks of a question were stopped before GO)
        waiting = [pid for _, pid in last.values()
                   if not list(results_dir.glob(f"*.{pid}.json")) and _alive(pid)]
        if not waiting:
            break
        time.sleep(0.05)
    for _, question, pid in checkpoints:
        _stop(pid)
    tests, missing, notes = {}, {}, []
    for question, (position, pid) in last.items():
        found = list(results_dir.glob(f"{question}.{pid}.json"))
        try:
            data = json.loads(found[0].read_text(encoding="utf-8")[:8_000_000]) if found else None
        except (OSError, ValueError):
            data = None
        if not data or data.get("nonce") != nonce or question not in data.get("tests", {}):
            why = f": {str(data['error'])[:300]}" if data and data.get("error") else " or ran out of time"
            missing[question] = f"the test of {question} (checked in cell {position}) crashed{why}"
            continue
        tests[question] = data["tests"][question]
        notes += [n for n in data.get("notes", []) if n not in notes]
    return tests, missing, notes


_IMPORT = re.compile(r"(?:^|>>>|;)[ \t]*(?:from|import)[ \t]+([A-Za-z_][\w.]*)", re.M)
_HANDLED_APART = {"ftlab", "otter", "doctest", "__future__"}  # re-imported or checked by their own rules


def libraries_of(tests: dict[str, str]) -> list[str]:
    """The library modules the test files use: what they import (in doctests too), what they import
    from them (`from numpy import testing`), and the dotted names under those libraries they mention,
    through their aliases too (`np.testing.assert_allclose` after `import numpy as np`). Their code is
    snapshotted before the learner's first cell and put back before the tests
    (in_kernel._ftlab_restore_libraries); the kernel keeps the names that are modules."""
    text = "\n".join(tests.values())
    imported = {name for name in _IMPORT.findall(text) if name.split(".")[0] not in _HANDLED_APART}
    tops = {name.split(".")[0] for name in imported}
    names = set(imported)
    for module, members in re.findall(r"\bfrom[ \t]+([A-Za-z_][\w.]*)[ \t]+import[ \t]+([\w, \t]+)", text):
        if module.split(".")[0] in tops:
            names |= {f"{module}.{member.split()[0]}" for member in members.split(",") if member.strip()}
    aliases = {alias: module for module, alias in re.findall(r"\bimport[ \t]+([A-Za-z_][\w.]*)[ \t]+as[ \t]+(\w+)", text)
               if module.split(".")[0] in tops}
    for alias, module in aliases.items():
        names |= {module + rest for rest in re.findall(r"\b%s((?:\.[A-Za-z_]\w*)+)" % re.escape(alias), text)}
    if tops:
        names |= set(re.findall(r"\b(?:%s)(?:\.[A-Za-z_]\w*)+" % "|".join(map(re.escape, sorted(tops))), text))
    dotted = set()
    for name in names:
        parts = name.split(".")
        dotted |= {".".join(parts[:k]) for k in range(1, len(parts) + 1)}
    return sorted(dotted)


def grader_code() -> dict:
    """Where the grader's own code lives, for the checks in the kernel: ftlab's folder (the tests import
    ftlab from there, whatever sys.modules holds), and the folders installed code is loaded from (a
    class defined there is a library's, one defined anywhere else is the notebook's)."""
    import sysconfig

    ftlab_dir = Path(__file__).resolve().parents[1]
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, str(ftlab_dir),
             *sysconfig.get_paths().values()}
    return {"ftlab": str(ftlab_dir),
            "roots": sorted({os.path.realpath(r) for r in roots if r and os.path.realpath(r) != "/"})}


def grade_notebook(job: Job, tests: dict[str, str], staging_fd: int, ftlab_home_fd: int | None,
                   base: Path, started: float) -> dict:
    import nbformat

    work, setup = prepare(job, staging_fd, ftlab_home_fd, base)
    notebook = nbformat.read(str(work / job.notebook_name), as_version=4)
    cells = _learner_cells(notebook, job.config)
    nonce = secrets.token_hex(16)
    tests_dir, results_dir = base / f".tests-{nonce}", base / f".results-{nonce}"  # made after the last cell
    before = nbformat.v4.new_code_cell(cell_source(
        f"_ftlab_before({nonce!r}, {job.seed!r}, {job.quiet_otter!r}, {libraries_of(tests)!r})"))
    run_nb = nbformat.v4.new_notebook(cells=[before] + [cell for _, cell in cells])
    run_nb.metadata = notebook.metadata
    client = _client_class()(run_nb, kernel_name=KERNEL_NAME, allow_errors=True, interrupt_on_timeout=True,
                             error_on_timeout={"ename": "TimeLimit", "evalue": "stopped at the time limit",
                                               "traceback": []},
                             startup_timeout=120, iopub_timeout=4, record_timing=False, shutdown_kernel="immediate",
                             resources={"metadata": {"path": str(work)}}, nonce=nonce,
                             output_limit=int(job.output_limit_mb * 2**20))
    grading_deadline = started + job.timeout_s * GRADING_END
    timings = {"prepared": round(time.monotonic() - started, 2)}
    final, final_notes, grading_timed_out, tests_changed = {}, [], False, []
    with client.setup_kernel(cwd=str(work)):
        kernel_pid = client.km.provisioner.process.pid
        timings["kernel_started"] = round(time.monotonic() - started, 2)
        grader = grader_code()
        state = _run_learner_cells(client, run_nb, cells, job, started, lambda q: cell_source(
            f"_ftlab_checkpoint({q!r}, {nonce!r}, {str(tests_dir)!r}, {str(results_dir)!r}, {os.getpid()}, "
            f"{job.timeout_s + 30}, {grader!r})"), {Path(name).stem for name in tests})
        timings["learner_cells"] = round(time.monotonic() - started, 2)
        last = {q: pid for _, q, pid in state["checkpoints"]}  # the last check of a question counts
        for _, _, pid in state["checkpoints"]:
            if pid not in last.values():
                _stop(pid)
        state["checkpoints"] = [c for c in state["checkpoints"] if c[2] in last.values()]
        if job.mode == "namespaces" and os.getpid() == 1:
            _kill_other_processes({1, kernel_pid, *last.values()})
        paths = _write_tests(tests_dir, tests)
        results_dir.mkdir(mode=0o700)
        if job.uid is not None:
            os.chown(results_dir, job.uid, job.uid)
        seconds = max(1.0, grading_deadline - time.monotonic() - 2)
        (tests_dir / "GO.tmp").write_text(str(seconds))
        os.replace(tests_dir / "GO.tmp", tests_dir / "GO")  # the checkpoints start their tests
        checked = {q for _, q, _ in state["checkpoints"]}
        unchecked = [p for p in paths if Path(p).stem not in checked]
        if unchecked and state["died"] is None:
            grade_cell = nbformat.v4.new_code_cell(cell_source(
                f"_ftlab_grade({unchecked!r}, {nonce!r}, {seconds!r}, {grader!r})"))
            run_nb.cells.append(grade_cell)
            client.timeout = max(1, int(grading_deadline - time.monotonic()))
            client.iopub_timeout = max(1, min(5, int(started + job.timeout_s * 0.98 - time.monotonic())))
            client.timed_out = False
            from nbclient.exceptions import DeadKernelError

            try:
                client.execute_cell(grade_cell, len(run_nb.cells) - 1, store_history=False)
            except DeadKernelError:
                state["died"] = "the tests (a function of the notebook that a test called?)"
            grading_timed_out = client.timed_out
            payloads = [p for p in client.grade_payloads if isinstance(p, dict) and p.get("nonce") == nonce]
            if payloads:
                final, final_notes = payloads[-1].get("tests", {}), payloads[-1].get("notes", [])
        checkpointed, missing, notes = _collect_checkpoints(state["checkpoints"], results_dir, nonce,
                                                            grading_deadline)
        timings["graded"] = round(time.monotonic() - started, 2)
        for name, content in tests.items():
            try:
                now = hashlib.sha256((tests_dir / name).read_bytes()).hexdigest()
            except OSError:
                now = None
            if now != hashlib.sha256(content.encode("utf-8")).hexdigest():
                tests_changed.append(name[:-3] if name.endswith(".py") else name)
    if job.save_notebook:
        setup["notebook"] = nbformat.writes(notebook)  # the learner's cells with the outputs they gave
    return {"tests": {**final, **checkpointed}, "missing": missing,
            "checked_at": {q: p for p, q, _ in state["checkpoints"]},
            "notes": notes + [n for n in final_notes if n not in notes], "errors": state["errors"],
            "cells_total": len(cells), "cells_run": state["ran"], "stopped_at": state["stopped_at"],
            "kernel_died_in": state["died"], "grading_timed_out": grading_timed_out,
            "output_dropped_bytes": client.dropped, "tests_changed": tests_changed, "timings": timings, **setup}


def probe(job: Job, base: Path) -> dict:
    """What this sandbox does: who the kernel runs as, whether the network is reachable."""
    import nbformat

    for sub in ("work", "home", "tmp", ".jupyter", ".runtime"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    if job.uid is not None:
        for sub in ("work", "home", "tmp"):
            os.chown(base / sub, job.uid, job.uid)
    kernel_spec(base / ".jupyter", job)
    set_environment(base, base / "work", base / "ftlab-home", job)
    code = ("import os, socket, json, importlib.util\n"
            "assert importlib.util.find_spec('otter') and importlib.util.find_spec('ftlab'), 'otter/ftlab not found'\n"
            "try:\n    socket.create_connection(('192.0.2.1', 80), timeout=2).close(); net = 'reachable'\n"
            "except OSError as e:\n    net = type(e).__name__ + ': ' + str(e)\n"
            "print(json.dumps({'uid': os.getuid(), 'network': net}))")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    from nbclient import NotebookClient

    NotebookClient(notebook, kernel_name=KERNEL_NAME, timeout=60, startup_timeout=60,
                   resources={"metadata": {"path": str(base / "work")}}).execute()
    outputs = notebook.cells[0].outputs
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    errors = [f"{o['ename']}: {o['evalue']}" for o in outputs if o.get("output_type") == "error"]
    if errors or not text.strip():
        raise RuntimeError(f"the probe notebook failed: {errors or 'no output'}")
    return json.loads(text.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    sys.modules.setdefault("rfc3987_syntax", None)  # 1.3 s to import, for a format nbformat never checks
    parser = argparse.ArgumentParser(prog="python -m ftlab.grade.runner")
    parser.add_argument("staging", help="the staging folder with job.json")
    parser.add_argument("--result-fd", type=int, required=True)
    args = parser.parse_args(argv)
    started = time.monotonic() - time.process_time()  # count this interpreter's own start-up too
    adopting = False
    with os.fdopen(args.result_fd, "w", encoding="utf-8") as result_file:
        try:
            staging_fd = os.open(args.staging, os.O_RDONLY)
            job = Job.from_json(Path(args.staging, "job.json").read_text(encoding="utf-8"))
            tests = json.loads(sys.stdin.read() or "{}") if not job.probe else {}
            set_limits(job)
            if job.mode == "process" and sys.platform.startswith("linux"):
                from . import linux

                linux.die_with_parent()  # the grader was killed outright: stop too
                linux.become_subreaper()  # what the notebook leaves running stays below this process ...
                adopting = True
            ftlab_home_fd = (os.open(job.ftlab_home, os.O_RDONLY)
                             if job.ftlab_home and os.path.isdir(job.ftlab_home) else None)
            if job.mode == "namespaces":
                mount_view(job)
                base = Path("/tmp/grade")
            else:
                base = Path(args.staging) / "sandbox"
            base.mkdir(parents=True, exist_ok=True)
            os.chmod(base, 0o755)
            os.chdir(base)
            result = probe(job, base) if job.probe else grade_notebook(
                job, tests, staging_fd, ftlab_home_fd, base, started)
            result["status"] = "ok"
        except Exception as error:  # noqa: BLE001 - reported to the orchestrator as the grader's own failure
            result = {"status": "internal-error", "error": f"{type(error).__name__}: {error}",
                      "traceback": traceback.format_exc()[-4000:]}
        if adopting:  # ... and dies here, with its grading (a pid namespace does this itself)
            from . import linux

            linux.kill_tree(lambda: linux.children(os.getpid()))
        result["seconds"] = round(time.monotonic() - started, 2)
        result_file.write(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
