"""The report in a real browser: headless Chromium opens the fixture report (and the default run's report when
results/report.html exists), with no console errors, no network requests and every image decoded; a full-page
screenshot goes to results/report_screenshot.png for people to look at.

Skipped when Chromium or websocket-client is missing, unless BRUNO_BROWSER_TEST=1 (CI), which makes that a failure.
Install Chromium with tools/install_chromium.sh.
"""

from __future__ import annotations

import importlib.util
import os
import struct
from pathlib import Path

import pytest
import report_fixture

from bruno.jobs.report import run
from bruno_tools.browser import check_page, find_chromium

pytestmark = pytest.mark.browser
REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "results" / "report_screenshot.png"


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    missing = []
    if path is None:
        missing.append("Chromium (run tools/install_chromium.sh)")
    if importlib.util.find_spec("websocket") is None:
        missing.append("websocket-client (pip install -r requirements-dev.txt)")
    if missing:
        reason = "headless browser test needs " + " and ".join(missing)
        if os.environ.get("BRUNO_BROWSER_TEST") == "1":
            pytest.fail(f"BRUNO_BROWSER_TEST=1 but the {reason}")
        pytest.skip(reason + "; set BRUNO_BROWSER_TEST=1 to make this a failure")
    return path


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def assert_clean(result, min_images: int) -> None:
    assert result.console_errors == [], result.console_errors
    assert result.external_requests == [], result.external_requests
    assert len(result.images) >= min_images, f"{len(result.images)} images on the page"
    assert result.broken_images == [], result.broken_images


def test_report_opens_cleanly_in_chromium(chromium, tmp_path):
    kwargs = report_fixture.build(tmp_path)
    run(**kwargs)
    real = REPO / "results" / "report.html"
    # the screenshot people look at is the default run's page when there is one, else the fixture's
    fixture_shot = tmp_path / "fixture.png" if real.is_file() else SCREENSHOT
    result = check_page(kwargs["out_path"], fixture_shot, chromium=chromium)
    assert_clean(result, min_images=10)
    width, height = png_size(fixture_shot)
    assert width == 1280 and height == result.page_size[1] and height > 2000, (width, height)
    if real.is_file():
        # a default-run page may predate this code, so only what any report must satisfy is checked
        result = check_page(real, SCREENSHOT, chromium=chromium)
        assert_clean(result, min_images=0)
        assert png_size(SCREENSHOT)[1] == result.page_size[1]


def test_checker_catches_broken_pages(chromium, tmp_path):
    """The checks above can fail: a console error, an exception, a missing image and an external request."""
    page = tmp_path / "broken.html"
    page.write_text(
        "<!doctype html><html><body><img src='missing.png'><img src='http://example.invalid/x.png'>"
        "<script>console.error('boom'); throw new Error('uncaught');</script></body></html>",
        encoding="utf-8",
    )
    result = check_page(page, chromium=chromium)
    assert any("boom" in e for e in result.console_errors)
    assert any("uncaught" in e for e in result.console_errors)
    assert len(result.broken_images) == 2
    assert result.external_requests == ["http://example.invalid/x.png"]
    assert not result.ok
