"""The web page end to end in a real headless browser: draw a stroke, ask, read the answer off the page.

Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them) and selenium;
skipped with the reason where they are missing.
"""

from __future__ import annotations

import shutil
import threading
import time

import pytest

selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="no headless browser: sudo apt-get install chromium chromium-driver"
)

from selenium.webdriver import ActionChains, Chrome, ChromeOptions  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from vitlib.data import CLASS_NAMES  # noqa: E402
from vitlib.serve import Predictor, create_app, free_port  # noqa: E402
from vitlib.train import main as train_main  # noqa: E402


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    import uvicorn

    out = tmp_path_factory.mktemp("run")
    assert train_main(["--recipe", "fashion-mnist-small", "--epochs", "2", "--out", str(out), "--no-progress"]) == 0
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(Predictor.from_checkpoint(out / "last.pt")),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def browser():
    options = ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1000,800"):
        options.add_argument(argument)
    driver = Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def test_draw_a_stroke_ask_and_read_the_prediction(server_url, browser):
    browser.get(server_url)
    canvas = browser.find_element(By.ID, "draw")
    (ActionChains(browser).move_to_element_with_offset(canvas, -60, -80).click_and_hold()
     .move_by_offset(0, 160).move_by_offset(120, 0).move_by_offset(0, -160).release().perform())
    browser.find_element(By.ID, "predict").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "answer").text or d.find_element(By.ID, "error").text)
    assert browser.find_element(By.ID, "error").text == ""
    answer = browser.find_element(By.ID, "answer").text
    assert answer.split(" (")[0] in CLASS_NAMES["fashion-mnist"] and answer.endswith("%)")
    bars = browser.find_elements(By.CSS_SELECTOR, "#bars .bar")
    assert [b.find_element(By.CLASS_NAME, "name").text for b in bars] == CLASS_NAMES["fashion-mnist"]
    # the heat-map was drawn: some pixel of the overlay canvas is not transparent
    painted = browser.execute_script(
        "const c = document.getElementById('heat'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "for (let i = 3; i < d.length; i += 4) if (d[i] > 0) return true; return false;")
    assert painted
    # ... over the square the model saw (the stroke's bounding box, padded), not the whole canvas
    assert browser.execute_script(_ALPHA, 5, 5) == 0 and browser.execute_script(_ALPHA, 274, 274) == 0
    assert browser.execute_script(_ALPHA, 140, 140) > 0


_ALPHA = "return document.getElementById('heat').getContext('2d').getImageData(arguments[0], arguments[1], 1, 1).data[3];"


def test_upload_a_wide_picture_and_see_the_heat_map_over_it_only(server_url, browser, tmp_path):
    from PIL import Image

    from vitlib.data import load_dataset

    garment = Image.fromarray((255 - load_dataset("fashion-mnist-small", "test").images[0, 0]).numpy()).resize((80, 80))
    page = Image.new("L", (200, 80), 255)
    page.paste(garment, (60, 0))
    path = tmp_path / "wide.png"
    page.save(path)
    browser.get(server_url)
    browser.find_element(By.ID, "upload").send_keys(str(path))
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "answer").text or d.find_element(By.ID, "error").text)
    assert browser.find_element(By.ID, "error").text == ""
    # shown at 1.4× (280 × 112, rows 84 to 196): the heat-map stays inside the picture, over the garment
    assert browser.execute_script(_ALPHA, 140, 40) == 0 and browser.execute_script(_ALPHA, 140, 240) == 0
    assert browser.execute_script(_ALPHA, 140, 140) > 0
    assert browser.execute_script(_ALPHA, 20, 140) == 0  # left of the garment: outside the square the model saw


def _wait_for_answer_or_error(browser) -> None:
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "answer").text or d.find_element(By.ID, "error").text)


def _garment(tmp_path, name: str, background: str):
    """A test image of Fashion-MNIST's as a PNG: light on "black" (the dataset's own look), or dark on "white" (a photo on paper)."""
    from PIL import Image

    from vitlib.data import load_dataset

    pixels = load_dataset("fashion-mnist-small", "test").images[0, 0].numpy()
    image = Image.fromarray(pixels if background == "black" else 255 - pixels).resize((112, 112))
    path = tmp_path / name
    image.save(path)
    return path


def test_upload_is_a_button_and_an_empty_canvas_asks_for_a_drawing(server_url, browser, tmp_path):
    browser.get(server_url)
    assert browser.find_element(By.ID, "choose").tag_name == "button"
    browser.find_element(By.ID, "predict").click()
    assert browser.find_element(By.ID, "error").text.startswith("Draw something first")
    assert browser.find_element(By.ID, "answer").text == ""
    browser.save_screenshot(str(tmp_path / "empty-canvas.png"))


def test_an_error_clears_the_previous_answer_and_the_same_file_can_be_chosen_again(server_url, browser, tmp_path):
    picture = _garment(tmp_path, "light.png", "white")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a picture" * 10)
    browser.get(server_url)
    upload = browser.find_element(By.ID, "upload")
    upload.send_keys(str(picture))
    _wait_for_answer_or_error(browser)
    assert browser.find_element(By.ID, "answer").text and browser.find_element(By.ID, "error").text == ""
    upload.send_keys(str(broken))
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "error").text)
    browser.save_screenshot(str(tmp_path / "after-an-error.png"))
    assert browser.find_element(By.ID, "answer").text == "" and not browser.find_elements(By.CSS_SELECTOR, "#bars .bar")
    assert browser.execute_script(_ALPHA, 140, 140) == 0  # no heat-map of the previous picture either
    upload.send_keys(str(broken))  # the same file again: the page answers again (the error comes back)
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "error").text)
    upload.send_keys(str(picture))
    _wait_for_answer_or_error(browser)
    browser.find_element(By.ID, "clear").click()
    upload.send_keys(str(picture))  # ... and the same picture twice in a row
    _wait_for_answer_or_error(browser)
    assert browser.find_element(By.ID, "answer").text and browser.find_element(By.ID, "error").text == ""


_HOTTEST = """
const h = document.getElementById('heat').getContext('2d').getImageData(0, 0, 280, 280).data;
let best = 3; for (let i = 3; i < h.length; i += 4) if (h[i] > h[best]) best = i;
return [h[best - 3], h[best - 2], h[best - 1], h[best]];
"""


@pytest.mark.parametrize("dark", [False, True], ids=["light picture", "dark picture"])
def test_the_heat_map_reads_on_light_and_on_dark_pictures(server_url, browser, tmp_path, dark):
    browser.get(server_url)
    browser.find_element(By.ID, "upload").send_keys(str(_garment(tmp_path, "garment.png", "black" if dark else "white")))
    _wait_for_answer_or_error(browser)
    assert browser.find_element(By.ID, "error").text == ""
    browser.save_screenshot(str(tmp_path / f"heat-{'dark' if dark else 'light'}.png"))
    red, green, blue, alpha = browser.execute_script(_HOTTEST)
    assert alpha > 100
    luminance = 0.299 * red + 0.587 * green + 0.114 * blue
    assert luminance > 180 if dark else luminance < 110, (red, green, blue)  # light over dark, dark over light
