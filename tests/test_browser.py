"""The editor in a real browser: Voila serves a notebook with the app, chromium moves the yaw slider.

Nothing is installed at test time. The browser is Debian's chromium (``make browser-deps``),
driven by the pip ``playwright`` package with ``executable_path`` (never ``playwright install``,
which downloads a browser). Voila runs on a free loopback port in its own process group and
is stopped by killing that group. The notebook builds the editor with the toy generator and
estimator of ``editing_fakes`` (their yaw is known exactly) and the real ICT 3DMM preview, so
the test can check both that the image changes and that the shown face turned the right way.
Missing chromium / playwright / voila / ICT mirror: skipped locally, a failure under CI=true.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO_ROOT, skip_or_fail

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
TESTS_DIR = Path(__file__).resolve().parent

NOTEBOOK_CODE = f"""\
import sys
sys.path.insert(0, {str(TESTS_DIR)!r})
import torch
torch.set_num_threads(1)
from editing_fakes import ToyEstimator, ToyGenerator, toy_rigs
from stylerig_lite.editing import EditorApp
from stylerig_lite.morphable import load_face_model

app = EditorApp(ToyGenerator(resolution=64), toy_rigs(), ToyEstimator(), load_face_model(progress=False), seed=3)
app
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_notebook(path: Path) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(NOTEBOOK_CODE)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))


def _wait_until_serving(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"voila exited with status {process.returncode} before serving")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"voila did not answer on {url} within {timeout:.0f} s")


def _shown_yaw(page) -> float:
    return float(page.locator(".srl-yaw").first.inner_text())


@pytest.fixture(scope="module")
def browser_prerequisites(ict_mirror):
    if not CHROMIUM.exists():
        skip_or_fail(f"{CHROMIUM} is missing: install Debian's chromium (`make browser-deps`, as root)")
    for module in ("playwright", "voila", "nbformat", "ipywidgets"):
        if importlib.util.find_spec(module) is None:
            skip_or_fail(f"python package {module!r} is missing: install requirements/ci.txt")


def test_yaw_slider_in_voila(browser_prerequisites, tmp_path: Path) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
    from playwright.sync_api import sync_playwright

    notebook = tmp_path / "editor.ipynb"
    _write_notebook(notebook)
    port = _free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    log = open(tmp_path / "voila.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "voila", str(notebook), "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1",
         "--Voila.port_retries=0"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_until_serving(url, server, timeout=60)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
            try:
                page = browser.new_page()
                page.goto(url, timeout=120_000)
                # Voila executes the notebook and renders the widgets; the first frame carries F's yaw.
                page.wait_for_selector(".srl-yaw", timeout=120_000)
                image = page.locator("img.srl-gan-image").first
                before_src = image.get_attribute("src")
                before_yaw = _shown_yaw(page)
                assert before_src and before_src.startswith(("blob:", "data:"))

                # Drag by keyboard: focus the yaw handle and press ArrowRight 20 times (+1° each).
                handle = page.locator(".srl-slider-yaw .noUi-handle").first
                handle.focus()
                for _ in range(20):
                    page.keyboard.press("ArrowRight")
                # Intermediate frames may show first (slider moves are coalesced, never queued);
                # wait for the frame of the final value, +20 degrees.
                try:
                    page.wait_for_function(
                        "([before]) => { const e = document.querySelector('.srl-yaw');"
                        " return e && Math.abs(parseFloat(e.textContent) - (before + 20)) <= 2; }",
                        arg=[before_yaw], timeout=60_000,
                    )
                except PlaywrightTimeoutError:
                    pass  # the assertions below report what was shown instead
                after_src = image.get_attribute("src")
                after_yaw = _shown_yaw(page)
                readout = page.locator(".srl-slider-yaw .widget-readout").first.inner_text()
                page.screenshot(path=str(tmp_path / "editor.png"), full_page=True)  # for a look when it fails
            finally:
                browser.close()
        assert after_src != before_src, "the displayed image did not change"
        assert after_yaw == pytest.approx(before_yaw + 20.0, abs=2.0), (before_yaw, after_yaw, readout)
        assert float(re.sub(r"[^0-9.\-]", "", readout)) == pytest.approx(before_yaw + 20.0, abs=1.0)
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=15)
        log.close()
