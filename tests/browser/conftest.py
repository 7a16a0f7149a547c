"""Fixtures for the browser tests: the real service (the same uvicorn process fixture as tests/app/test_server.py,
on the committed models), direct ONNX Runtime references, and a headless Chromium driven by Playwright.

The browser is Debian's `/usr/bin/chromium` (`AE_TEST_CHROMIUM` overrides the path); Playwright's own browser
downloads are never used. `make test` tries to install chromium when it is missing; when it is still missing, or
Playwright is not installed, every browser test skips and says why.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.app.conftest import models_dir, reference  # noqa: F401  (fixtures, re-used as they are)
from tests.app.test_server import server  # noqa: F401  (the real uvicorn process)

CHROMIUM = Path(os.environ.get("AE_TEST_CHROMIUM", "/usr/bin/chromium"))
# Only the service may be reached: any other host name fails to resolve inside the browser itself, so not even
# Chromium's own background traffic leaves the machine.
CHROMIUM_ARGS = [
    "--no-sandbox",  # the tests may run as root (CI containers), where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """A headless Chromium for the whole session, or a skip that says what is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (Debian: apt-get install chromium; `make test` tries that)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright for Python is not installed (it is in the dev extra: pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class PageRecord:
    """What a page did besides rendering: console errors, uncaught exceptions, requests outside the service."""

    console_errors: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert self.console_errors == [], self.console_errors
        assert self.external_requests == [], self.external_requests
        assert self.failed_requests == [], self.failed_requests


@pytest.fixture
def page(chromium: Any, server: str) -> Iterator[tuple[Any, PageRecord]]:  # noqa: F811
    """A fresh page whose requests may only go to the service (others are recorded and aborted)."""
    context = chromium.new_context(viewport={"width": 1200, "height": 1000})
    record = PageRecord()

    def route(request_route: Any) -> None:
        url = request_route.request.url
        if url == server or url.startswith(server + "/"):
            request_route.continue_()
        else:
            record.external_requests.append(url)
            request_route.abort()

    context.route("**/*", route)
    tab = context.new_page()
    tab.on("console", lambda message: record.console_errors.append(message.text) if message.type == "error" else None)
    tab.on("pageerror", lambda error: record.console_errors.append(f"uncaught: {error}"))
    tab.on("requestfailed", lambda request: record.failed_requests.append(f"{request.url}: {request.failure}"))
    try:
        yield tab, record
    finally:
        context.close()
