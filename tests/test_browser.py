"""The web page in a real headless Chromium: upload a photo, wait for the caption, check the heatmaps, screenshot.

Needs Debian's `chromium` (apt-get install chromium) and the `playwright` package (pip install -e ".[test]"),
which drives the system browser through its executable path (no browser download). Without them the test
is skipped, except where CAPTIONER_REQUIRE_BROWSER=1 (CI's .ci/run sets it) makes that a failure.
"""

import os
import re
import shutil
from pathlib import Path

import pytest

pytest.importorskip("keras")

from helpers_bundle import make_bundle, make_photo  # noqa: E402
from helpers_server import running_server  # noqa: E402

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
REQUIRED = os.environ.get("CAPTIONER_REQUIRE_BROWSER") == "1"


def find_browser() -> str:
    """The system Chromium's path, or skip (fail where the browser is required) with how to get one."""
    reason = ""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = 'the playwright package is missing: pip install -e ".[test]"'
    found = os.environ.get("CAPTIONER_CHROMIUM") or next(filter(None, map(shutil.which, BROWSERS)), None)
    if not reason and not found:
        reason = "no Chromium found: apt-get install chromium (or set CAPTIONER_CHROMIUM to a Chrome/Chromium binary)"
    if reason:
        if REQUIRED:
            pytest.fail(f"browser test required (CAPTIONER_REQUIRE_BROWSER=1) but {reason}")
        pytest.skip(reason)
    return found


def test_page_captions_an_uploaded_photo_with_heatmaps(tmp_path):
    browser_path = find_browser()
    from playwright.sync_api import sync_playwright

    from captioner.serving.api import Captioner
    from captioner.serving.server import create_app, warm_up

    captioner = Captioner.load(make_bundle(tmp_path / "captioner", litert=True))
    warm_up(captioner)
    photo = make_photo(tmp_path / "photo.jpg", size=(320, 240), cool=True)
    screenshot = Path(os.environ.get("CAPTIONER_ARTIFACTS") or tmp_path) / "browser-test.png"
    with running_server(create_app(captioner)) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_path, headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(url)
            page.wait_for_function("document.getElementById('model').textContent.includes('attention decoder')")
            model = page.text_content("#model")
            assert model.startswith("model captioner ·") and str(tmp_path) not in model  # its name, not its path
            page.set_input_files("#file", str(photo))
            page.wait_for_selector("#result:not([hidden])", timeout=60_000)
            caption = page.text_content("#caption")
            words = caption.split()
            assert words and page.text_content("#status") == "captioned photo.jpg"
            assert page.locator("#beams li").count() == 2  # beam 3: two other beams, each with its score
            beams = page.locator("#beams li").all_text_contents()
            shown = [float(page.text_content("#score"))]
            for beam in beams:  # "caption (score S, log-probability L)", ranked by S
                match = re.search(r"\(score (-?[0-9.]+), log-probability (-?[0-9.]+)\)$", beam)
                assert match, beam
                shown.append(float(match[1]))
            assert shown == sorted(shown, reverse=True) and "ranked by score" in page.text_content("#result")
            assert page.locator("#heatmaps canvas").count() == len(words)
            labels = page.locator("#heatmaps figcaption").all_text_contents()
            assert labels == words
            # every heatmap shows the photo (its gray) under a warm overlay (the photo has no red at all)
            shares = page.evaluate("""() => [...document.querySelectorAll('#heatmaps canvas')].map(c => {
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let warm = 0, gray = 0;
                for (let i = 0; i < d.length; i += 4) {
                    if (d[i] > d[i + 2] + 40) warm++;
                    if (Math.abs(d[i] - 200) < 8 && Math.abs(d[i + 2] - 200) < 8) gray++;
                }
                return [warm / (d.length / 4), gray / (d.length / 4)]; })""")
            assert all(warm > 0.01 and gray > 0.05 for warm, gray in shares), shares
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
            page.set_input_files("#file", str(tmp_path / "captioner" / "vocab.json"))  # not an image
            page.wait_for_selector("#status.error")
            assert "not an image" in page.text_content("#status")
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000
