"""A real browser opens the rendered default report: every figure loads, no JavaScript errors."""
from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def driver():
    binary, chromedriver = _chromium(), shutil.which("chromedriver")
    if not binary or not chromedriver:
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium and chromium-driver (.ci/run does)")
        pytest.skip("headless Chromium not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(chromedriver), options=opts)
    drv.set_page_load_timeout(120)
    yield drv
    drv.quit()


@pytest.fixture(scope="module")
def served_report(default_report):
    out = default_report["out"]
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(out))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", default_report["report"]
    server.shutdown()


def _script_sources(text: str) -> list[str]:
    import re

    return re.findall(r'<script[^>]*\bsrc="([^"]+)"', text)


def _errors(driver):
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_index_and_every_figure_load(driver, served_report):
    from selenium.webdriver.support.ui import WebDriverWait

    base, report = served_report
    driver.get(f"{base}/index.html")
    WebDriverWait(driver, 60).until(lambda d: d.execute_script("return document.readyState") == "complete")
    # lazy images: scroll through the page so every image is fetched
    driver.execute_script("document.querySelectorAll('img').forEach(i => i.loading = 'eager')")
    WebDriverWait(driver, 60).until(lambda d: d.execute_script(
        "return Array.from(document.images).every(i => i.complete)"))
    broken = driver.execute_script(
        "return Array.from(document.images).filter(i => !(i.naturalWidth > 0)).map(i => i.src)")
    assert not broken, f"images that did not load: {broken}"
    n_img = driver.execute_script("return document.images.length")
    n_frames = driver.execute_script("return document.querySelectorAll('iframe').length")
    expected_png = sum(f.endswith(".png") for r in report["figures"] for f in r["files"])
    expected_html = sum(f.endswith(".html") for r in report["figures"] for f in r["files"])
    assert (n_img, n_frames) == (expected_png, expected_html)
    sections = driver.execute_script("return document.querySelectorAll('section').length")
    assert sections == len(report["figures"])
    # every interactive figure: plotly loaded from the file itself and drew its SVG/WebGL, and the
    # frame is tall enough for the whole figure (legend included): nothing to scroll, nothing cut
    for i in range(n_frames):
        frame = driver.find_elements("css selector", "iframe")[i]
        driver.execute_script("arguments[0].scrollIntoView()", frame)
        driver.switch_to.frame(frame)
        WebDriverWait(driver, 60).until(lambda d: d.execute_script(
            "return typeof window.Plotly !== 'undefined' && document.querySelector('.plotly-graph-div') !== null"
            " && document.querySelector('.main-svg') !== null"))
        overflow = driver.execute_script("const e = document.scrollingElement; "
                                         "return [e.scrollHeight - e.clientHeight, e.scrollWidth - e.clientWidth]")
        driver.switch_to.default_content()
        assert max(overflow) <= 1, f"iframe {frame.get_attribute('src')} scrolls by {overflow} px"
    assert not _errors(driver), _errors(driver)


def test_plotly_pages_need_no_network(default_report):
    """Self-contained HTML: plotly.js is embedded, nothing is fetched from a CDN."""
    out = default_report["out"]
    pages = list(out.glob("*.html"))
    assert any(p.name != "index.html" for p in pages)
    for page in pages:
        text = page.read_text()
        # plotly.js itself mentions cdn.plot.ly as a default for geo maps; what matters is no external script
        external = [src for src in _script_sources(text) if src.startswith(("http:", "https:", "//"))]
        assert not external, f"{page.name} loads scripts from the network: {external}"
        if page.name != "index.html":
            assert "Plotly" in text and len(text) > 1_000_000, page.name  # plotly.js inline
