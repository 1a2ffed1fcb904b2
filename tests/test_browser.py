"""The explorer in a real JupyterLab, driven by headless Chromium (issue "Interactive explorer").

What a learner does, end to end: open a notebook, Run All, wait for the explorer's
picture, move the ``num_workers`` slider with the keyboard, tick ``drop_last``,
and see both the picture and the counts change (100 samples in batches of 32 with
drop_last: 96 delivered, 4 dropped). A screenshot is saved to
``tests/artifacts/explorer.png`` (ignored by git); the test never writes a tracked
file. ``./dev docs`` runs this test on purpose and copies the screenshot to
``docs/explorer.png``.

Needs Debian's ``chromium`` and the ``dlviz`` kernel (``./dev test`` installs it).
Without chromium the test is skipped, unless the ``CI`` variable is set: then it
fails, so CI can never pass by skipping it. JupyterLab runs as a subprocess of
this test on a free port with a random token and a private settings directory
(news and update checks off); it is stopped, with its kernel, in a ``finally``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
KERNEL = "dlviz"
SOURCE = ('import dlviz\n'
          'explorer = dlviz.explore(controls=["num_workers", "drop_last", "batch_size"], '
          'n=100, batch_size=32, cost_ms=0.2)\n'
          'explorer')
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
STARTUP_S = 120  # JupyterLab's start on a loaded 2-core machine
KERNEL_S = 180  # kernel start, torch import, the first pass and its picture
PASS_S = 90  # one re-run after a slider change


def _need(what: str, why: str) -> None:
    """Skip for a missing browser part, or fail when CI is set."""
    message = f"{what} is not available ({why}); the browser test needs it"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI is set, so this is a failure, not a skip)")
    pytest.skip(message + " (set CI=1 to make this a failure)")


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        _need("chromium", "not on PATH: apt-get install chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _need("playwright (python)", "pip install playwright; never `playwright install`")
    return str(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _jupyter() -> list[str]:
    exe = Path(sys.executable).with_name("jupyter")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "jupyter"]


def _kernel_installed() -> bool:
    done = subprocess.run([*_jupyter(), "kernelspec", "list", "--json"], capture_output=True,
                          text=True, timeout=60)
    return done.returncode == 0 and KERNEL in json.loads(done.stdout)["kernelspecs"]


def _notebook(path: Path, source: str = SOURCE) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python (dlviz)",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(source)]
    nbformat.write(nb, str(path))


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read() or b"null")


def _stop(server: subprocess.Popen[bytes], base: str, token: str) -> None:
    """Shut the kernels down, stop the server, and end anything it left (by pid)."""
    try:
        family = psutil.Process(server.pid).children(recursive=True)
    except psutil.Error:
        family = []
    try:  # the polite way first: the server shuts its kernels down
        request = urllib.request.Request(f"{base}/api/shutdown", method="POST",
                                         headers={"Authorization": f"token {token}"})
        urllib.request.urlopen(request, timeout=10).close()
        server.wait(timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        pass
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=20)
    for process in family:  # the kernel and its DataLoader workers, if still there
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(family, timeout=10)


@contextlib.contextmanager
def jupyter_lab(home: Path, source: str = SOURCE) -> Iterator[dict[str, Any]]:
    """A JupyterLab server on a free port, serving ``home``/root with a notebook
    ``explorer.ipynb`` whose one cell is ``source``; stopped, with its kernel, on exit.
    Raises RuntimeError if it does not start (``benchmarks/browser.py`` uses it too)."""
    root = home / "root"
    root.mkdir()
    _notebook(root / "explorer.ipynb", source)
    settings = home / "settings"
    plugin = settings / "@jupyterlab" / "apputils-extension"
    plugin.mkdir(parents=True)
    (plugin / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env = dict(os.environ)
    env.update({"JUPYTERLAB_SETTINGS_DIR": str(settings),
                "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
                "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
                "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"})
    port, token = _free_port(), secrets.token_hex(16)
    cmd = [*_jupyter(), "lab", "--no-browser", f"--port={port}", "--port-retries=0",
           f"--ServerApp.token={token}", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.root_dir={root}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # Jupyter refuses root unless told
    log = (home / "server.log").open("wb")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"jupyter lab exited ({server.returncode}):\n"
                                   + (home / "server.log").read_text()[-3000:])
            try:
                _get(f"{base}/api/status?token={token}")
                break
            except (OSError, ValueError):
                if time.monotonic() > deadline:
                    raise RuntimeError("jupyter lab did not answer in time:\n"
                                       + (home / "server.log").read_text()[-3000:]) from None
                time.sleep(0.5)
        yield {"base": base, "token": token, "log": home / "server.log"}
    finally:
        _stop(server, base, token)
        log.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, chromium: str) -> Iterator[dict[str, Any]]:
    """A JupyterLab server on a free port, serving a temp dir with the notebook."""
    if not _kernel_installed():
        pytest.fail(f"the {KERNEL!r} kernel is not installed: run ./dev test, or "
                    f"{sys.executable} -m ipykernel install --sys-prefix --name {KERNEL}")
    try:
        with jupyter_lab(tmp_path_factory.mktemp("lab")) as server:
            yield server
    except RuntimeError as exc:
        pytest.fail(str(exc))


def _src(page: Any) -> str:
    return str(page.eval_on_selector(".dlviz-explorer img", "img => img.src"))


def _counts(page: Any) -> dict[str, int]:
    found = page.eval_on_selector_all(
        ".dlviz-explorer .dlviz-count",
        "els => els.map(e => [e.dataset.key, e.textContent.trim()])")
    return {key: int(value) for key, value in found}


def _wait_for(page: Any, script: str, arg: Any, timeout_s: float) -> None:
    page.wait_for_function(script, arg=arg, timeout=timeout_s * 1000)


CHANGED = """old => { const img = document.querySelector('.dlviz-explorer img');
                     return img !== null && img.src.startsWith('data:image/png')
                            && img.src !== old; }"""
COUNT_IS = """([key, value]) => { const el = document.querySelector(
                  `.dlviz-explorer .dlviz-count[data-key="${key}"]`);
                  return el !== null && el.textContent.trim() === String(value); }"""


def _run_all(page: Any) -> None:
    """Run > Run All Cells; again (then Shift+Enter) if the cell did not start.

    Just after the kernel turns idle, JupyterLab can still have the command
    disabled, and a click on a disabled menu item does nothing. A cell that was
    queued shows ``[*]`` at once, so trying again never runs it twice.
    """
    prompt = page.locator(".jp-Notebook .jp-Cell .jp-InputArea-prompt").first
    for attempt in range(4):
        if attempt < 3:
            page.click("#jp-MainMenu .lm-MenuBar-item:has-text('Run')")
            page.click(".lm-Menu-item:has-text('Run All Cells')")
        else:
            page.locator(".jp-Notebook .jp-Cell").first.click()
            page.keyboard.press("Shift+Enter")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if prompt.inner_text().strip() not in ("[ ]:", ""):
                return
            page.wait_for_timeout(250)
        page.keyboard.press("Escape")  # close the menu if it is still open
    raise AssertionError("the cell never started: Run All Cells had no effect")


def _diagnose(page: Any, lab: dict[str, Any]) -> None:
    """Keep what the browser showed and what the server said, for a failed run."""
    try:
        page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)
        (ARTIFACTS / "failure.html").write_text(page.content())
        shutil.copyfile(lab["log"], ARTIFACTS / "failure-server.log")
    except Exception:  # the page may be gone; the test's own error matters more
        pass


def test_explorer_in_jupyterlab(lab: dict[str, Any], chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            try:
                page.goto(f"{lab['base']}/lab/tree/explorer.ipynb?token={lab['token']}")
                # the kernel is connected and idle (JupyterLab's execution indicator)
                page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']",
                                       timeout=KERNEL_S * 1000)
                _run_all(page)
                _wait_for(page, CHANGED, "", KERNEL_S)
                _wait_for(page, COUNT_IS, ["delivered", 100], PASS_S)
                first = _src(page)
                assert _counts(page)["dropped"] == 0

                # num_workers 2 -> 3, with the keyboard on the slider's handle
                slider = page.locator(".dlviz-explorer .widget-slider",
                                      has_text="num_workers")
                assert slider.locator(".widget-readout").inner_text().strip() == "2"
                slider.locator(".noUi-handle").focus()
                page.keyboard.press("ArrowRight")
                _wait_for(page, CHANGED, first, PASS_S)
                assert slider.locator(".widget-readout").inner_text().strip() == "3"
                second = _src(page)
                assert _counts(page)["delivered"] == 100

                # tick drop_last: 100 = 3 x 32 + 4, so 96 delivered and 4 dropped
                page.locator(".dlviz-explorer .widget-checkbox", has_text="drop_last") \
                    .locator("input[type=checkbox]").check()
                _wait_for(page, CHANGED, second, PASS_S)
                _wait_for(page, COUNT_IS, ["dropped", 4], PASS_S)
                counts = _counts(page)
                assert counts["delivered"] == 96 and counts["dropped"] == 4
                assert counts["dataset_size"] == 100
                assert len({first, second, _src(page)}) == 3
                page.wait_for_timeout(300)  # let the last picture settle before the shot
                cell = page.locator(".jp-Notebook .jp-Cell").first
                cell.screenshot(path=str(ARTIFACTS / "explorer.png"))
            except BaseException:
                _diagnose(page, lab)
                raise
        finally:
            browser.close()
    assert (ARTIFACTS / "explorer.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
