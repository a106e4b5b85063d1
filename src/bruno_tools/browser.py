"""Open a rendered report in headless Chromium over the Chrome DevTools Protocol and check it like a reader would:
console errors and uncaught exceptions, network requests that leave the file (there must be none), every image
decoded (naturalWidth > 0), and a full-page screenshot.

Used by the browser test and for the README screenshot: `python -m bruno_tools.browser results/report.html
--screenshot docs/report_screenshot.png`. Needs Debian's `chromium` and the `websocket-client` package (dev
requirements); neither is needed to render the report.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bruno.errors import BrunoError

# Flags known to work on machines without a display or network (root, closed network): no sandbox, no GPU, no
# background requests to Google's hosts, a fresh profile.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--remote-debugging-port=0",
)
CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
IMAGES_JS = """
(async () => {
  const images = Array.from(document.images);
  await Promise.all(images.map(i => i.decode().catch(() => null)));
  return JSON.stringify(images.map(i => ({alt: i.alt, complete: i.complete, naturalWidth: i.naturalWidth,
                                          naturalHeight: i.naturalHeight, src: i.src.slice(0, 40)})));
})()
"""
LOCAL_SCHEMES = ("file:", "data:", "about:", "chrome:", "devtools:")


def find_chromium() -> str | None:
    for candidate in CANDIDATES:
        path = shutil.which(candidate)
        if path:
            return path
    return None


@dataclass
class PageCheck:
    url: str
    console_errors: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    page_size: tuple[int, int] = (0, 0)
    screenshot: str | None = None

    @property
    def broken_images(self) -> list[dict[str, Any]]:
        return [i for i in self.images if not i["complete"] or i["naturalWidth"] <= 0]

    @property
    def ok(self) -> bool:
        return not self.console_errors and not self.external_requests and not self.broken_images


class DevTools:
    """A minimal CDP client over one websocket, with flat sessions (one connection for the browser and the page)."""

    def __init__(self, ws_url: str, timeout: float) -> None:
        import websocket

        self.socket = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True)
        self.timeout = timeout
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self.socket.send(json.dumps(message))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            reply = json.loads(self.socket.recv())
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise BrunoError(f"Chromium DevTools {method} failed: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)
        raise BrunoError(f"Chromium DevTools {method}: no reply within {self.timeout} s")

    def wait_for(self, method: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while time.monotonic() < deadline:
            event = json.loads(self.socket.recv())
            self.events.append(event)
            if event.get("method") == method:
                return event
        raise BrunoError(f"Chromium DevTools: no {method} event within {self.timeout} s")

    def close_browser(self) -> None:
        """Ask the browser to exit; it may drop the socket before it answers, which is fine here."""
        import websocket

        try:
            self.send("Browser.close")
        except (websocket.WebSocketException, OSError):
            return

    def close(self) -> None:
        self.socket.close()


def _start(chromium: str, profile: Path, width: int, timeout: float) -> tuple[subprocess.Popen, str]:
    args = [
        chromium,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        f"--window-size={width},900",
        "about:blank",
    ]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            error = process.stderr.read().decode(errors="replace")[-2000:] if process.stderr else ""
            raise BrunoError(
                f"{chromium} exited with code {process.returncode} before DevTools started: {error}"
            )
        if port_file.is_file():
            lines = port_file.read_text().split()
            if len(lines) >= 2:
                return process, f"ws://127.0.0.1:{lines[0]}{lines[1]}"
        time.sleep(0.1)
    process.kill()
    raise BrunoError(f"{chromium} did not open its DevTools port within {timeout} s")


def _event_errors(events: list[dict[str, Any]]) -> list[str]:
    errors = []
    for event in events:
        params = event.get("params", {})
        if event.get("method") == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(
                "console: "
                + " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            )
        elif event.get("method") == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            errors.append(
                "exception: " + str(details.get("exception", {}).get("description") or details.get("text"))
            )
        elif event.get("method") == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            errors.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".strip())
    return errors


def check_page(
    html_path: str | Path,
    screenshot_path: str | Path | None = None,
    chromium: str | None = None,
    width: int = 1280,
    timeout: float = 60.0,
    max_height: int | None = None,
) -> PageCheck:
    """Load `html_path` from file://, collect errors and requests, check every image, optionally save a full-page PNG
    (only its top `max_height` CSS pixels when given, e.g. for the README)."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise BrunoError("Chromium not found: install Debian's chromium (tools/install_chromium.sh).")
    url = Path(html_path).resolve().as_uri()
    result = PageCheck(url=url)
    with tempfile.TemporaryDirectory(prefix="bruno-chromium-") as profile:
        process, ws_url = _start(chromium, Path(profile), width, timeout)
        tools = None
        try:
            tools = DevTools(ws_url, timeout)
            target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                tools.send(f"{domain}.enable", session=session)
            tools.events.clear()
            tools.send("Page.navigate", {"url": url}, session=session)
            tools.wait_for("Page.loadEventFired")
            evaluated = tools.send("Runtime.evaluate", {"expression": IMAGES_JS, "awaitPromise": True,
                                                        "returnByValue": True}, session=session)  # fmt: skip
            result.images = json.loads(evaluated["result"]["value"])
            metrics = tools.send("Page.getLayoutMetrics", session=session)
            size = metrics.get("cssContentSize") or metrics["contentSize"]
            result.page_size = (math.ceil(size["width"]), math.ceil(size["height"]))
            if screenshot_path is not None:
                tools.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": result.page_size[1],
                                                                  "deviceScaleFactor": 1, "mobile": False},
                           session=session)  # fmt: skip
                options: dict[str, Any] = {"format": "png", "captureBeyondViewport": True}
                if max_height is not None and max_height < result.page_size[1]:
                    options["clip"] = {"x": 0, "y": 0, "width": width, "height": max_height, "scale": 1}
                shot = tools.send("Page.captureScreenshot", options, session=session)
                Path(screenshot_path).parent.mkdir(parents=True, exist_ok=True)
                Path(screenshot_path).write_bytes(base64.b64decode(shot["data"]))
                result.screenshot = str(screenshot_path)
            tools.send("Runtime.evaluate", {"expression": "0"}, session=session)  # flush pending events
            result.console_errors = _event_errors(tools.events)
            result.external_requests = [
                e["params"]["request"]["url"]
                for e in tools.events
                if e.get("method") == "Network.requestWillBeSent"
                and not e["params"]["request"]["url"].startswith(LOCAL_SCHEMES)
            ]
            tools.close_browser()
        finally:
            if tools is not None:
                tools.close()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("html", help="the report to open")
    parser.add_argument("--screenshot", help="write a full-page PNG here")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--max-height", type=int, help="screenshot only the top of the page (CSS pixels)")
    args = parser.parse_args(argv)
    result = check_page(args.html, args.screenshot, width=args.width, max_height=args.max_height)
    print(json.dumps({**asdict(result), "ok": result.ok, "broken_images": result.broken_images}, indent=1))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
