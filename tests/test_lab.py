"""What a student sees in JupyterLab, in a real headless browser: Run All, the checks' messages, a clean git.

A fresh `weeks/02_attention.ipynb` is opened in JupyterLab (127.0.0.1, no token, in a temporary
folder), run with the Run menu's "Run All Cells", then exercise 1 is given a wrong answer, typed
into its editor. The screenshot stays in the test's temporary folder (pytest keeps the last
three runs' folders), for a person to look at.

Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them) and selenium;
skipped with the reason where they are missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="no headless browser: sudo apt-get install chromium chromium-driver"
)

from selenium.webdriver import Chrome, ChromeOptions  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

from vitlib.notebooks import ROOT  # noqa: E402
from vitlib.serve import free_port  # noqa: E402

WEEK = "02_attention.ipynb"
SETTINGS = {  # no news pop-up over the notebook; every cell rendered, as a student scrolling down sees them
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}
KERNEL = """const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
return k ? [k.status, w.context.model.dirty] : null;"""
COUNTS = """return window.jupyterapp.shell.currentWidget.content.widgets
    .map(c => [c.model.id, c.model.type === 'code' ? c.model.executionCount : -1]);"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on a fresh copy of the week, as `make lab` starts it (plus: no token, the app reachable from tests)."""
    home = tmp_path_factory.mktemp("lab")
    (home / "weeks").mkdir()
    shutil.copy(ROOT / "weeks" / WEEK, home / "weeks" / WEEK)
    for name, value in SETTINGS.items():
        (home / "settings" / name).parent.mkdir(parents=True, exist_ok=True)
        (home / "settings" / name).write_text(json.dumps(value))
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"), "JUPYTER_CONFIG_DIR": str(home / "config"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "IPYTHONDIR": str(home / "ipython"), "MPLBACKEND": "Agg"}
    port = free_port()
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
               "--IdentityProvider.token=", "--ServerApp.password=", f"--ServerApp.root_dir={home / 'weeks'}",
               "--LabApp.expose_app_in_browser=True", "--YDocExtension.disable_rtc=True"]
    if os.geteuid() == 0:
        command.append("--allow-root")
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=open(home / "lab.log", "wb"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status", timeout=2)
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, (home / "lab.log").read_text()
            time.sleep(0.3)
    yield url, home / "weeks" / WEEK
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    options = ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,1000"):
        options.add_argument(argument)
    driver = Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def _wait(condition, timeout: float = 120, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def _idle(browser) -> bool:
    state = browser.execute_script(KERNEL)
    return bool(state) and state[0] == "idle"


def _cell(browser, cell_id: str):
    """The cell's element on the page."""
    return browser.execute_script(
        "return window.jupyterapp.shell.currentWidget.content.widgets.find(c => c.model.id === arguments[0]).node", cell_id
    )


def _output(browser, cell_id: str) -> str:
    cell = _cell(browser, cell_id)
    browser.execute_script("arguments[0].scrollIntoView()", cell)
    return "\n".join(area.text for area in cell.find_elements(By.CSS_SELECTOR, ".jp-OutputArea"))


def _menu(browser, menu: str, item: str) -> None:
    browser.find_element(By.XPATH, f"//div[contains(@class, 'lm-MenuBar-itemLabel') and text()='{menu}']").click()
    browser.find_element(By.XPATH, f"//div[contains(@class, 'lm-Menu-itemLabel') and text()='{item}']").click()


def test_a_fresh_week_opens_clean_runs_to_the_end_and_a_wrong_answer_reads_short(lab, browser, tmp_path):
    url, path = lab
    shipped = path.read_bytes()
    browser.get(f"{url}/lab/tree/{WEEK}")
    _wait(lambda: _idle(browser), what="the kernel")
    time.sleep(1)
    assert browser.execute_script(KERNEL)[1] is False, "opening the notebook marked it modified"

    _menu(browser, "Run", "Run All Cells")
    _wait(lambda: browser.execute_script(COUNTS)[-1][1] not in (None, -1) and _idle(browser), what="Run All")
    counts = dict(browser.execute_script(COUNTS))
    assert all(n not in (None, 0) for n in counts.values() if n != -1), f"cells that did not run: {counts}"
    checks = [cid for cid in counts if cid.startswith("check-")]
    for cid in checks:
        text = _output(browser, cid)
        assert text.count("\n") == 0 and "is not written yet" in text, f"{cid}: {text!r}"
    assert "0 of 3 exercises pass" in _output(browser, "report-card")
    browser.save_screenshot(str(tmp_path / "02_attention-run-all.png"))  # the report card, at the end

    editor = _cell(browser, "ex-attention_scores").find_element(By.CSS_SELECTOR, ".cm-content")
    editor.click()
    editor.send_keys(Keys.CONTROL, "a")
    editor.send_keys("def attention_scores(q, k): return q @ k.transpose(-2, -1)")  # forgot √d_k
    editor.send_keys(Keys.SHIFT, Keys.ENTER)  # runs the exercise, selects its check
    before = counts["check-attention_scores"]
    browser.switch_to.active_element.send_keys(Keys.SHIFT, Keys.ENTER)
    _wait(lambda: dict(browser.execute_script(COUNTS))["check-attention_scores"] not in (None, before) and _idle(browser), what="the check")
    text = _output(browser, "check-attention_scores")
    browser.save_screenshot(str(tmp_path / "02_attention-wrong-answer.png"))
    lines = text.splitlines()
    assert 3 <= len(lines) <= 10, text
    assert "✗ attention_scores" in lines[0] and all(part in text for part in ("expected:", "got:", "hint:")), text
    assert "scale the scores" in text, text
    assert "vitlib/" not in text and ".py" not in text and "Traceback" not in text, text
    assert (tmp_path / "02_attention-wrong-answer.png").stat().st_size > 20_000
    assert path.read_bytes() == shipped, "nothing was saved yet"
