"""Headless Chromium driven over the DevTools protocol: load a page, wait for what it must show.

A fixed render budget (``--virtual-time-budget`` with ``--dump-dom``) captures whatever the page
holds when the budget ends; on a busy CI machine the Dagster UI's later GraphQL answers (check
results) can arrive after that. Here the page is polled until a condition holds, or the test
fails with what the page showed, so nothing depends on how fast the machine is.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket  # websocket-client


def chromium_binary() -> str:
    """Debian's Chromium: the CI installs it (apt-get install chromium); fail loudly without."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail(
            "chromium not found on PATH: install Debian's chromium (apt-get install chromium), "
            "the UI test drives it headless"
        )
    return path


class Page:
    """One tab of a headless Chromium, spoken to over its DevTools WebSocket."""

    def __init__(self, ws: websocket.WebSocket) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result (events in between are dropped)."""
        message_id = next(self._ids)
        self._ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv())
            if message.get("id") != message_id:
                continue
            if "error" in message:
                raise RuntimeError(f"DevTools {method} failed: {message['error']}")
            return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def html(self) -> str:
        return self.evaluate("document.documentElement ? document.documentElement.outerHTML : ''")

    def wait_for(self, what: str, condition: Callable[[str], bool], timeout: float = 120.0) -> str:
        """Poll the page's HTML until ``condition`` holds; the HTML then. Fails naming ``what``."""
        deadline = time.monotonic() + timeout
        html = ""
        while time.monotonic() < deadline:
            html = self.html() or ""
            if condition(html):
                return html
            time.sleep(0.5)
        text = re.sub(r"\s+", " ", self.evaluate("document.body ? document.body.innerText : ''"))
        pytest.fail(f"the page never showed {what} within {timeout:.0f} s; it shows: {text[:1500]}")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)
        path.write_bytes(base64.b64decode(data["data"]))


@contextlib.contextmanager
def open_page(
    url: str, profile: Path, window: tuple[int, int], start_timeout: float = 60.0
) -> Iterator[Page]:
    """A fresh headless Chromium on ``url``; every one of its processes ends with the block."""
    command = [
        chromium_binary(),
        "--headless",
        "--no-sandbox",  # root in CI containers
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        f"--window-size={window[0]},{window[1]}",
        "about:blank",
    ]
    profile.mkdir(parents=True, exist_ok=True)
    log = profile.with_name(profile.name + ".log")  # a file, so a chatty browser never blocks
    with log.open("wb") as err:
        proc = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        port = _devtools_port(proc, profile, log, start_timeout)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            targets = json.load(r)
        page_target = next(t for t in targets if t.get("type") == "page")
        ws = websocket.create_connection(
            page_target["webSocketDebuggerUrl"], timeout=60, suppress_origin=True
        )
        try:
            page = Page(ws)
            page.call(
                "Emulation.setDeviceMetricsOverride",
                width=window[0],
                height=window[1],
                deviceScaleFactor=1,
                mobile=False,
            )
            page.call("Page.enable")
            page.call("Page.navigate", url=url)
            yield page
        finally:
            ws.close()
    finally:
        # renderer or GPU helpers must not outlive the call
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _devtools_port(proc: subprocess.Popen[bytes], profile: Path, log: Path, timeout: float) -> int:
    """The port Chromium chose: it writes it to DevToolsActivePort in the profile."""
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = log.read_text(errors="replace")
            pytest.fail(f"chromium exited ({proc.returncode}) before it served: {err[-2000:]}")
        with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
            return int(marker.read_text().splitlines()[0])
        time.sleep(0.1)
    pytest.fail(f"chromium did not open its DevTools port within {timeout:.0f} s")
