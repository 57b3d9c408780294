"""The dashboard in a real browser: JupyterLab on 127.0.0.1, Debian's Chromium driven by Playwright.

The notebook tests/browser/dashboard.ipynb builds a dashboard on the tiny toy model and task; the
test runs its cell, clicks Run, waits for the live curves and a row in the runs table, and saves a
screenshot to artifacts/dashboard.png (look at it: a learner should understand it unaided).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ARTIFACTS = TESTS.parent / "artifacts"
CHROMIUM = os.environ.get("FTLAB_CHROMIUM", "/usr/bin/chromium")  # Debian's; the set-up installs it
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 90_000  # generous: JupyterLab, a kernel and torch all start on a busy 2-core machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read()


def _start_lab(root: Path, port: int, token: str, env: dict) -> subprocess.Popen:
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip", "127.0.0.1", f"--port={port}",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--allow-root",
               f"--LabApp.workspaces_dir={root.parent / 'workspaces'}"]
    log = open(root.parent / "jupyterlab.log", "w")
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def _wait_for_server(server: subprocess.Popen, url: str, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"JupyterLab exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            _get(url)
            return
        except OSError:
            time.sleep(0.25)
    pytest.fail(f"JupyterLab did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _stop_lab(server: subprocess.Popen, base: str, token: str) -> None:
    """Shut its kernels down through the API, then stop the server by its PID."""
    try:
        for kernel in json.loads(_get(f"{base}/api/kernels?token={token}")):
            request = urllib.request.Request(f"{base}/api/kernels/{kernel['id']}?token={token}", method="DELETE")
            urllib.request.urlopen(request, timeout=10).close()
    except OSError:
        pass
    server.terminate()
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=5)


def test_dashboard_runs_in_jupyterlab(tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: the set-up installs it (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is missing: pip install playwright (the browser is Debian's)")

    root = tmp_path / "notebooks"
    root.mkdir()
    shutil.copy(TESTS / "browser" / "dashboard.ipynb", root / "dashboard.ipynb")
    settings = tmp_path / "lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)  # no "would you like news?" toast over the screenshot
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
    env = {**os.environ, "FTLAB_TESTS_DIR": str(TESTS), "FTLAB_HOME": str(tmp_path / "ftlab-home"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab-settings"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    port, token = _free_port(), secrets.token_hex(16)
    base = f"http://127.0.0.1:{port}"
    ARTIFACTS.mkdir(exist_ok=True)
    server = _start_lab(root, port, token, env)
    try:
        _wait_for_server(server, f"{base}/api/status?token={token}", tmp_path / "jupyterlab.log")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 2000})
                page.set_default_timeout(WAIT_MS)
                try:
                    _drive(page, f"{base}/lab/tree/dashboard.ipynb?token={token}")
                except Exception:
                    page.screenshot(path=ARTIFACTS / "dashboard-failure.png")
                    raise
            finally:
                browser.close()
    finally:
        _stop_lab(server, base, token)
    assert server.returncode is not None


def _drive(page, url: str) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=WAIT_MS)
    page.goto(url)
    page.wait_for_selector(".jp-Notebook .jp-Cell .cm-content")
    _run_first_cell(page)
    # torch and the toy model load first; an error in the cell ends the wait too
    shown = page.wait_for_selector(".ftlab-dashboard, .jp-OutputArea-output[data-mime-type*='error']")
    assert "ftlab-dashboard" in (shown.get_attribute("class") or ""), f"the cell failed:\n{shown.inner_text()}"
    dashboard = shown
    assert "frozen: stem, layer1, layer2" in dashboard.inner_text()
    _click_run_and_wait(page, rows=1)
    page.wait_for_selector(".ftlab-curves img")  # the curves, redrawn after every epoch
    assert "#1" in page.inner_text(".ftlab-runs table tbody tr")
    assert "validation accuracy" in page.inner_text(".ftlab-status")
    _move_slider(page, ".ftlab-depth", "ArrowLeft", 3)  # full fine-tuning: a second, different run
    expect(page.locator(".ftlab-depth-label")).to_contain_text("frozen: nothing")  # from the kernel
    _click_run_and_wait(page, rows=2)
    _move_slider(page, ".ftlab-depth", "ArrowRight", 3)  # back to depth 3: read from the run store
    expect(page.locator(".ftlab-depth-label")).to_contain_text("frozen: stem, layer1, layer2")
    _click_run_and_wait(page, rows=3)
    expect(page.locator(".ftlab-status")).to_contain_text("from the run store")
    page.click("button.ftlab-compare")  # the last two runs are selected: overlay them
    page.wait_for_selector(".ftlab-overlay img")
    page.locator(".ftlab-dashboard").screenshot(path=ARTIFACTS / "dashboard.png")


def _run_first_cell(page) -> None:
    """Ctrl+Enter in the cell once the kernel is connected (the status bar reads "Idle"; a cell run
    before the connection is silently dropped, so press again if its prompt never shows [*] or [1])."""
    page.wait_for_function("() => /\\|\\s*Idle/.test(document.querySelector('#jp-main-statusbar')?.innerText ?? '')")
    prompt = page.locator(".jp-Notebook .jp-Cell").first.locator(".jp-InputPrompt")
    for _ in range(6):
        page.click(".jp-Notebook .jp-Cell .cm-content")
        page.keyboard.press("Control+Enter")
        try:
            page.wait_for_function("(el) => /\\[(\\*|\\d+)\\]/.test(el.innerText)", arg=prompt.element_handle(),
                                   timeout=10_000)
            return
        except Exception:  # playwright's TimeoutError: the kernel was not listening yet
            continue
    raise AssertionError("the notebook's cell never started running")


def _click_run_and_wait(page, rows: int) -> None:
    """Click Run, then wait until the runs table has `rows` rows and Run can be clicked again."""
    page.click("button.ftlab-run")
    page.wait_for_selector(f".ftlab-runs table tbody tr:nth-child({rows})")
    page.wait_for_selector("button.ftlab-run:not([disabled])")


def _move_slider(page, selector: str, key: str, times: int) -> None:
    """Move an ipywidgets slider with the keyboard, as a learner without a mouse would."""
    page.focus(f"{selector} .noUi-handle")
    for _ in range(times):
        page.keyboard.press(key)
