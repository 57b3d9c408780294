"""Colab, emulated: the course's first cell, lessons 00 and 03, and the dashboard in a browser, on
Colab's versions of what matters (colab/preinstalled.txt) with a fake `google.colab`.

Run by `make test-colab` with .venv-colab's python (scripts/colab_env.sh builds it); not part of
`pytest tests`. Each session is a fresh "Colab VM" under build/colab-runtime/:
  venv/     a virtual environment over .venv-colab (the image): what the first cell installs goes
            here, the image stays as built
  content/  stands in for /content: the lessons' paths are rewritten in the copies run here (a real
            /content would be machine-wide state and clash between two runs at once)
  home/     FTLAB_HOME (Colab uses ~/.cache/ftlab); seeded with this machine's pretrained
            checkpoints unless COLAB_COLD_CACHE=1, in which case the first cell pretrains as on Colab
  ftlab.git the course repository, FTLAB_GIT_URL=file://...: the working tree as it is (git-ignored
            files left out), or the current commit with COLAB_SERVE=head
The kernel (a kernel spec named python3 on JUPYTER_PATH) starts through google.colab._kernel, so
`"google.colab" in sys.modules` holds from the first cell, and widget updates sent from a background
thread are dropped as Colab drops them (colabtools #3373; see colab/fake_google/google/colab/_kernel.py).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COLAB = ROOT / "colab"
RUNTIME = ROOT / "build" / "colab-runtime"
ARTIFACTS = ROOT / "artifacts"
LESSONS = ("00_setup", "03_learning_rate_and_frozen_depth")  # run under nbval, in this order
SETUP_LESSON = "03_learning_rate_and_frozen_depth"  # whose first cell is run on its own first
PLACEHOLDER = "https://github.com/OWNER/ftlab.git"
EDITOR = ":is(.CodeMirror, .cm-content)"  # a cell's editor: CodeMirror 5 in JupyterLab 3, 6 in JupyterLab 4
NOTEBOOK_TIMEOUT = 1800  # seconds for a whole lesson on a busy 2-core machine


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503: Jupyterlab_Widgets == jupyterlab-widgets


def preinstalled() -> dict[str, str]:
    """colab/preinstalled.txt: what Colab preinstalls, {name: version}."""
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (COLAB / "preinstalled.txt").read_text(), re.M)
    return {_name(name): version for name, version in pins}


def installed(python: Path) -> dict[str, str]:
    """Every distribution installed for `python`, {name: version}, as pip reports them."""
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
                            capture_output=True, text=True, check=True).stdout
    found: dict[str, str] = {}
    for d in json.loads(listed):  # the first one on sys.path is the one imported: the VM's before the image's
        found.setdefault(_name(d["name"]), d["version"])
    return found


def _run(command: list[str], **options) -> str:
    done = subprocess.run(command, capture_output=True, text=True, **options)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout


@dataclasses.dataclass(frozen=True)
class Runtime:
    """One emulated Colab VM (see the module's docstring)."""
    root: Path
    venv: Path
    content: Path
    home: Path
    git_url: str
    commit: str
    dropped_log: Path  # widget updates the kernel dropped because a background thread sent them

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def dropped(self) -> list[str]:
        return self.dropped_log.read_text().splitlines() if self.dropped_log.exists() else []


def _serve_course(into: Path) -> tuple[str, str]:
    """A git repository in `into` holding the course; returns (its file:// URL, the commit)."""
    repo = into / "ftlab.git"
    if os.environ.get("COLAB_SERVE", "worktree") == "head":
        _run(["git", "clone", "--quiet", "--bare", str(ROOT), str(repo)])
    else:  # the working tree as `git add -A` sees it, committed in a repository of its own
        git = ["git", f"--git-dir={repo}", f"--work-tree={ROOT}",
               "-c", "user.name=Colab emulation", "-c", "user.email=colab@localhost", "-c", "core.autocrlf=false"]
        _run(["git", "init", "--quiet", "--bare", str(repo)])
        _run(git + ["add", "-A"])
        _run(git + ["commit", "--quiet", "-m", "the working tree, served to the emulated Colab"])
    return f"file://{repo}", _run(["git", f"--git-dir={repo}", "rev-parse", "HEAD"]).strip()


def _new_vm(image: Path, venv: Path) -> None:
    """A virtual environment that sees the image's packages after its own (a .pth file), as a
    --system-site-packages one sees the system's: pip installs into the VM only, and leaves the
    image's copy of anything it upgrades in place ("outside environment")."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    site = f"lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"
    (venv / site / "colab-image.pth").write_text(f"{image / site}\n")


def _kernel_spec(runtime: Runtime, folder: Path) -> None:
    """A kernel spec named python3 (what the notebooks ask for) that starts Colab's way."""
    spec = folder / "kernels" / "python3"
    spec.mkdir(parents=True)
    env = {"PYTHONPATH": str(COLAB / "fake_google"),  # google.colab, in the kernel only
           "COLAB_RELEASE_TAG": "emulated",  # Colab sets it; ftlab.doctor.in_colab reads it
           "COLAB_EMULATION_LOG": str(runtime.dropped_log),
           "FTLAB_GIT_URL": runtime.git_url,  # for a first cell that reads it from the environment
           "FTLAB_HOME": str(runtime.home),
           "MPLBACKEND": "module://matplotlib_inline.backend_inline",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",  # a shared 2-core machine
           "PIP_QUIET": "2"}  # errors only: this machine's pip config warns about its local indexes, Colab's does not
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(runtime.python), "-m", "google.colab._kernel", "-f", "{connection_file}"],
        "display_name": "Python 3 (emulated Colab)", "language": "python", "env": env}, indent=1))


@pytest.fixture(scope="session")
def runtime() -> Runtime:
    image = Path(sys.prefix)
    if not (image / ".colab-env").exists():
        pytest.fail(f"{sys.executable} is not .venv-colab's python: run `make test-colab` "
                    "(scripts/colab_env.sh builds .venv-colab)")
    _run(["rm", "-rf", str(RUNTIME)])  # the last session's VM, kept until now for a look
    RUNTIME.mkdir(parents=True)
    git_url, commit = _serve_course(RUNTIME)
    rt = Runtime(root=RUNTIME, venv=RUNTIME / "venv", content=RUNTIME / "content", home=RUNTIME / "home",
                 git_url=git_url, commit=commit, dropped_log=RUNTIME / "dropped-widget-updates.log")
    _new_vm(image, rt.venv)
    rt.content.mkdir()
    cache = Path(os.environ.get("FTLAB_HOME") or Path.home() / ".cache" / "ftlab") / "models"
    if os.environ.get("COLAB_COLD_CACHE") != "1" and cache.is_dir():
        shutil.copytree(cache, rt.home / "models")  # checked by ftlab against their cards on load
    _kernel_spec(rt, RUNTIME / "jupyter")
    before = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(RUNTIME / "jupyter"), before]))
    yield rt
    if before is None:
        os.environ.pop("JUPYTER_PATH", None)
    else:
        os.environ["JUPYTER_PATH"] = before


def for_colab(notebook: dict, runtime: Runtime) -> tuple[dict, str]:
    """A copy of `notebook` as this VM runs it: /content is runtime.content, and the course URL
    is given the way the first cell reads it. Returns (the copy, how the URL was given)."""
    notebook = json.loads(json.dumps(notebook))
    how = "no Colab cell"
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = re.sub(r"""(["'])/content(?=[/"'])""", lambda m: m.group(1) + str(runtime.content),
                        "".join(cell["source"]))
        if "FTLAB_GIT_URL" in source:
            if re.search(r"(environ|getenv)\W[^\n]*FTLAB_GIT_URL", source):
                how = "FTLAB_GIT_URL in the kernel's environment (the cell reads it)"
            else:  # the cell has the URL written in: substitute it, as a course build would
                assert PLACEHOLDER in source, f"the first cell names no URL this emulation knows:\n{source}"
                source = source.replace(PLACEHOLDER, runtime.git_url)
                how = "the placeholder URL replaced in the copy (as a course build would)"
        cell["source"] = source
    return notebook, how


def first_cell(lesson: str) -> str:
    notebook = json.loads((ROOT / "notebooks" / f"{lesson}.ipynb").read_text())
    code = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]
    assert code and '"google.colab" in sys.modules' in code[0], f"{lesson}'s first code cell is not the Colab cell"
    return code[0]


# --- the tests, in the order a learner meets them ---------------------------------------------

def test_the_image_has_colabs_versions(runtime):
    have, want = installed(runtime.python), preinstalled()
    wrong = {name: f"{have.get(name, 'missing')} (Colab: {version})" for name, version in want.items()
             if have.get(name) != version}
    assert not wrong, f"the emulated image does not have Colab's versions: {wrong}; rebuild: COLAB_ENV_REBUILD=1 make test-colab"
    assert "ftlab" not in have and "otter-grader" not in have, "the image must not have what the first cell installs"
    probe = _run([str(runtime.python), "-c", "import sys, ipywidgets; print(sys.version_info[:2], ipywidgets.__version__)"])
    assert "7.7.1" in probe


def test_first_cell_installs_the_course_and_keeps_colabs_packages(runtime):
    """The Colab cell of lesson 03 on a fresh VM: clone, pip install, data, checks as files. pip must
    not replace anything Colab preinstalls (Colab would then run a different ipywidgets or torch)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    before = installed(runtime.python)
    notebook, how = for_colab({"cells": [{"cell_type": "code", "source": first_cell(SETUP_LESSON)}]}, runtime)
    cell = nbformat.v4.new_code_cell(notebook["cells"][0]["source"])
    run = nbformat.v4.new_notebook(cells=[cell], metadata={"kernelspec": {"name": "python3", "language": "python",
                                                                          "display_name": "Python 3"}})
    client = NotebookClient(run, kernel_name="python3", timeout=NOTEBOOK_TIMEOUT,
                            resources={"metadata": {"path": str(runtime.content)}})
    try:
        client.execute()
    except CellExecutionError as error:
        pytest.fail(f"the first cell failed on the emulated Colab (URL given as: {how}):\n{error}")
    printed = "".join(o.get("text", "") for o in cell.outputs)
    after = installed(runtime.python)

    replaced = {name: f"{before.get(name)} -> {after.get(name, 'removed')}"
                for name in preinstalled() if after.get(name) != before.get(name)}
    others = {name: f"{version} -> {after.get(name, 'removed')}" for name, version in before.items()
              if name not in preinstalled() and after.get(name) != version}
    added = sorted(f"{name}=={version}" for name, version in after.items() if name not in before)
    (runtime.root / "first-cell.txt").write_text(
        f"URL given as: {how}\nreplaced Colab packages: {replaced}\nother packages changed: {others}\n"
        f"added: {' '.join(added)}\n--- printed:\n{printed}")
    assert not replaced, (f"the first cell's pip install replaced packages Colab preinstalls: {replaced} "
                          f"(other packages changed: {others}; see {runtime.root / 'first-cell.txt'})")

    # what the learner's next cells rely on
    assert "ftlab setup: fashion-mnist" in printed, f"the first cell did not fetch the data (ftlab setup):\n{printed}"
    assert _run(["git", "-C", str(runtime.content / "ftlab"), "rev-parse", "HEAD"]).strip() == runtime.commit
    where = _run([str(runtime.python), "-c", "import ftlab, otter; print(ftlab.__file__)"],
                 cwd=runtime.content).strip()
    assert Path(where).is_relative_to(runtime.venv), f"ftlab imported from {where}, not from the VM's packages"
    assert {"ftlab", "otter-grader"} <= set(after)
    assert (runtime.content / f"{SETUP_LESSON}.ipynb").exists(), "prepare_colab did not put the lesson in /content"
    assert any((runtime.content / "tests").glob("*.py")), "prepare_colab wrote no public tests to /content/tests"
    assert sorted(p.name for p in (runtime.home / "models").glob("*.safetensors")), "no pretrained ResNet in the cache"


@pytest.mark.parametrize("lesson", LESSONS)
def test_lesson_runs_under_nbval(runtime, lesson):
    """The student notebook top to bottom in the emulated Colab kernel (nbval, lax mode)."""
    notebook, how = for_colab(json.loads((ROOT / "notebooks" / f"{lesson}.ipynb").read_text()), runtime)
    copy = runtime.content / f"{lesson}.ipynb"
    copy.write_text(json.dumps(notebook, indent=1))
    done = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:cacheprovider",
                           f"--nbval-cell-timeout={NOTEBOOK_TIMEOUT}", copy.name],
                          cwd=runtime.content, capture_output=True, text=True, timeout=2 * NOTEBOOK_TIMEOUT)
    (runtime.root / f"nbval-{lesson}.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, f"{lesson} failed under nbval on the emulated Colab ({how}):\n{done.stdout[-6000:]}"


# --- the dashboard in a real browser: JupyterLab (Colab's front end is not available) -----------

def test_dashboard_shows_curves_and_stops_in_jupyterlab(runtime, tmp_path):
    """Run shows live curves; stopping part-way keeps the run; a second run after the stop works.
    JupyterLab's widget manager (jupyterlab_widgets 3.0.16) renders the ipywidgets 7.7.1 kernel."""
    sys.path.insert(0, str(ROOT / "tests"))
    import test_browser as browser  # its JupyterLab and Chromium helpers (it is also tests/' own test)
    from playwright.sync_api import sync_playwright

    assert os.path.exists(browser.CHROMIUM), f"{browser.CHROMIUM} is missing: scripts/colab_env.sh installs it"
    root = tmp_path / "notebooks"
    root.mkdir()
    shutil.copy(COLAB / "dashboard.ipynb", root / "dashboard.ipynb")
    settings = tmp_path / "lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
    env = {**os.environ, "FTLAB_TESTS_DIR": str(ROOT / "tests"), "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab-settings"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    port, token = browser._free_port(), os.urandom(16).hex()
    base = f"http://127.0.0.1:{port}"
    ARTIFACTS.mkdir(exist_ok=True)
    server = browser._start_lab(root, port, token, env)
    try:
        browser._wait_for_server(server, f"{base}/api/status?token={token}", tmp_path / "jupyterlab.log")
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=browser.CHROMIUM, args=browser.CHROMIUM_ARGS,
                                                  headless=True)
            try:
                page = chromium.new_page(viewport={"width": 1400, "height": 2000})
                page.set_default_timeout(browser.WAIT_MS)
                try:
                    _drive(page, f"{base}/lab/tree/dashboard.ipynb?token={token}", browser, runtime)
                except Exception:
                    page.screenshot(path=ARTIFACTS / "colab-dashboard-failure.png")
                    raise
            finally:
                chromium.close()
    finally:
        browser._stop_lab(server, base, token)


def _drive(page, url: str, browser, runtime: Runtime) -> None:
    from playwright.sync_api import TimeoutError as Timeout
    from playwright.sync_api import expect

    def why() -> str:
        dropped = runtime.dropped()
        return (f"; the emulated Colab dropped {len(dropped)} widget updates sent from a background thread "
                f"(Colab does not show them, colabtools #3373), e.g. {dropped[:3]}" if dropped else "")

    console: list[str] = []  # the page's errors and warnings, for the failure messages
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
    expect.set_options(timeout=browser.WAIT_MS)
    page.goto(url)
    page.wait_for_selector(f".jp-Notebook .jp-Cell {EDITOR}")
    _run_first_cell(page)
    # the dashboard, a Python error, or JupyterLab's box for a widget it could not render
    try:
        shown = page.wait_for_selector(".ftlab-dashboard, .jp-OutputArea-output[data-mime-type*='error'], "
                                       ".jp-OutputArea-output:has-text('javascript error'), "
                                       ".jp-OutputArea-output:has-text('Error displaying widget')")
    except Timeout:
        shown = None
    if shown is None or "ftlab-dashboard" not in (shown.get_attribute("class") or ""):
        if shown is not None:
            shown.click()  # the "Click to show javascript error" box opens to the message
            page.wait_for_timeout(500)
        widgets = installed(runtime.python).get("ipywidgets")
        raise AssertionError(f"the cell did not show the dashboard (the VM's kernel has ipywidgets {widgets}; Colab "
                             f"has {preinstalled()['ipywidgets']}):\n{page.inner_text('.jp-OutputArea')[-3000:]}\n"
                             "browser console:\n" + "\n".join(console[-12:]))
    assert "frozen: stem, layer1, layer2" in shown.inner_text()

    # 1. Run: the curves appear while it trains; then stop it part-way
    page.click("button.ftlab-run")
    try:
        page.wait_for_selector(".ftlab-curves img", timeout=60_000)
        expect(page.locator(".ftlab-status")).to_contain_text("training: epoch", timeout=30_000)
    except (Timeout, AssertionError) as error:
        raise AssertionError(f"no live curves after Run{why()}") from error
    how = _stop(page)
    try:
        page.wait_for_selector(".ftlab-runs table tbody tr:nth-child(1)")
        page.wait_for_selector("button.ftlab-run:not([disabled])")
        expect(page.locator(".ftlab-status")).to_contain_text("stopped by you")
    except (Timeout, AssertionError) as error:
        raise AssertionError(f"stopping with {how} did not end the run as stopped by you{why()}") from error
    row = page.inner_text(".ftlab-runs table tbody tr")
    ran = re.search(r"(\d+) of 50", row)
    assert ran and int(ran.group(1)) < 50, f"the stopped run's row does not show it ended early: {row!r}"

    # 2. after the stop, the dashboard still works: nothing frozen, 3 epochs, run to the end
    _slider(page, "frozen depth").focus()
    for _ in range(3):
        page.keyboard.press("ArrowLeft")
    expect(page.locator(".ftlab-depth-label")).to_contain_text("frozen: nothing")  # sent back by the kernel
    _slider(page, "epochs").focus()
    page.keyboard.press("Home")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    page.click("button.ftlab-run")
    try:
        page.wait_for_selector(".ftlab-runs table tbody tr:nth-child(2)")
        page.wait_for_selector("button.ftlab-run:not([disabled])")
        expect(page.locator(".ftlab-status")).to_contain_text("done: 3 epochs")
    except (Timeout, AssertionError) as error:
        raise AssertionError(f"the run after a stop did not finish{why()}") from error
    page.wait_for_selector(".ftlab-curves img")
    page.locator(".ftlab-dashboard").screenshot(path=ARTIFACTS / "colab-dashboard.png")
    print(f"stopped with {how}; background-thread widget updates dropped: {len(runtime.dropped())}")


def _run_first_cell(page) -> None:
    """tests/test_browser.py's way (Ctrl+Enter once the kernel is idle, again if it was not yet
    listening), for JupyterLab 3's editor as well as 4's."""
    page.wait_for_function("() => /\\|\\s*Idle/.test(document.querySelector('#jp-main-statusbar')?.innerText ?? '')")
    prompt = page.locator(".jp-Notebook .jp-Cell").first.locator(".jp-InputPrompt")
    for _ in range(6):
        page.click(f".jp-Notebook .jp-Cell {EDITOR}")
        page.keyboard.press("Control+Enter")
        try:
            page.wait_for_function("(el) => /\\[(\\*|\\d+)\\]/.test(el.innerText)", arg=prompt.element_handle(),
                                   timeout=10_000)
            return
        except Exception:  # playwright's TimeoutError: the kernel was not listening yet
            continue
    raise AssertionError("the notebook's cell never started running")


def _slider(page, label: str):
    """An ipywidgets slider's handle by its description: jQuery UI's in ipywidgets 7, noUiSlider's in 8."""
    box = page.locator(".ftlab-dashboard .widget-slider").filter(
        has=page.locator(".widget-label", has_text=re.compile(f"^{re.escape(label)}$")))
    return box.locator(".ui-slider-handle, .noUi-handle").first


def _stop(page) -> str:
    """Stop the run the way the dashboard offers: its Stop button where the kernel can hear it (a
    training thread), else the notebook's interrupt (training in Run's callback keeps the kernel busy)."""
    stop = page.locator("button.ftlab-stop")
    if stop.count() and stop.is_visible() and stop.is_enabled():
        stop.click()
        try:
            page.wait_for_selector("button.ftlab-run:not([disabled])", timeout=15_000)
            return "the Stop button"
        except Exception:  # playwright's TimeoutError: the click was not heard
            pass
    button = page.locator(".jp-NotebookPanel-toolbar [data-command='notebook:interrupt-kernel']")
    if button.count():
        button.first.click()
    else:  # the menu, by its words
        page.click(".lm-MenuBar-itemLabel:text-is('Kernel')")
        page.click(".lm-Menu-itemLabel:text-is('Interrupt Kernel')")
    return "the notebook's interrupt (Kernel > Interrupt)"


def test_the_image_is_untouched(runtime):
    """Last: nothing the VM did reached .venv-colab (the VM imports the image's packages)."""
    built = dict(line.split("==", 1) for line in (Path(sys.prefix) / "image-freeze.txt").read_text().splitlines()
                 if "==" in line)
    now = installed(Path(sys.executable))
    changed = {name: f"{version} -> {now.get(_name(name), 'removed')}" for name, version in built.items()
               if now.get(_name(name)) != version}
    assert not changed and "ftlab" not in now, f".venv-colab changed during the session: {changed}"
