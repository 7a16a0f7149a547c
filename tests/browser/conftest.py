"""Fixtures for the browser tests: the real service (the same uvicorn process fixture as tests/app/test_server.py,
on the committed models), direct ONNX Runtime references, and a headless Chromium driven by Playwright.

The photograph mode needs a model of kind `photo-denoise`: `photo_server` serves the committed models plus a
`photo` model quick-trained here by the training pipeline (`python -m training photo --quick`: 6 steps, ~20 s on
one thread, a near-identity denoiser, but the real architecture, exporter and card), and `server_without_photo`
the committed models without any such model.

The browser is Debian's `/usr/bin/chromium` (`AE_TEST_CHROMIUM` overrides the path); Playwright's own browser
downloads are never used. `make test` tries to install chromium when it is missing; when it is still missing, or
Playwright is not installed, every browser test skips and says why.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.app.conftest import models_dir, reference  # noqa: F401  (fixtures, re-used as they are)
from tests.app.live import running
from tests.app.test_server import server  # noqa: F401  (the real uvicorn process)

PHOTO_KIND = "photo-denoise"

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
    requests: list[str] = field(default_factory=list)  # every URL the page asked for, as the page sees it

    def assert_clean(self) -> None:
        assert self.console_errors == [], self.console_errors
        assert self.external_requests == [], self.external_requests
        assert self.failed_requests == [], self.failed_requests


PageFactory = Callable[..., tuple[Any, PageRecord]]


@pytest.fixture
def new_page(chromium: Any) -> Iterator[PageFactory]:
    """`new_page(base, prefix="")`: a fresh page whose requests may only go to the service at `base` (others are
    recorded and aborted). With a prefix the page is opened at `base + prefix + "/"` and the prefix is stripped
    before the request reaches the service, as a reverse proxy mounting the service under a path would."""
    contexts: list[Any] = []

    def make(base: str, prefix: str = "") -> tuple[Any, PageRecord]:
        context = chromium.new_context(viewport={"width": 1200, "height": 1000})
        contexts.append(context)
        record = PageRecord()
        front = base + prefix

        def route(request_route: Any) -> None:
            url = request_route.request.url
            record.requests.append(url)
            if prefix and (url == front or url.startswith(front + "/")):
                request_route.continue_(url=base + url[len(front) :])
            elif not prefix and (url == base or url.startswith(base + "/")):
                request_route.continue_()
            else:
                record.external_requests.append(url)
                request_route.abort()

        context.route("**/*", route)
        tab = context.new_page()
        tab.on("console", lambda m: record.console_errors.append(m.text) if m.type == "error" else None)
        tab.on("pageerror", lambda error: record.console_errors.append(f"uncaught: {error}"))
        tab.on("requestfailed", lambda request: record.failed_requests.append(f"{request.url}: {request.failure}"))
        return tab, record

    try:
        yield make
    finally:
        for context in contexts:
            context.close()


@pytest.fixture
def page(new_page: PageFactory, server: str) -> tuple[Any, PageRecord]:  # noqa: F811
    """A fresh page whose requests may only go to the service (others are recorded and aborted)."""
    return new_page(server)


def card_kind(folder: Path) -> str | None:
    return json.loads((folder / "card.json").read_text()).get("kind")


def copy_models(source: Path, target: Path) -> None:
    """Copy every model folder of `source` except photograph denoisers into `target` (a fresh models directory)."""
    for folder in sorted(source.iterdir()):
        if folder.name.startswith(".") or not (folder / "card.json").is_file() or card_kind(folder) == PHOTO_KIND:
            continue
        shutil.copytree(folder, target / folder.name)


@pytest.fixture(scope="session")
def quick_photo_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of a `photo` model trained and exported by the pipeline's quick mode (as tests/training/
    test_photo.py does; one thread, beside whatever else the machine runs)."""
    try:
        from training.pipeline import make_config, run
    except ImportError as error:  # the training extra (torch) is not installed
        pytest.skip(f"the photograph mode's tests train a quick photo model, and training is not importable: {error}")
    out = tmp_path_factory.mktemp("quick-photo")
    card = run("photo", out, make_config("photo", quick=True, overrides={"threads": "1"}))
    assert card["kind"] == PHOTO_KIND
    return out / "photo"


@pytest.fixture(scope="session")
def photo_server(
    models_dir: Path,  # noqa: F811
    quick_photo_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """The real service on the committed models plus the quick-trained `photo` model."""
    root = tmp_path_factory.mktemp("photo-models")
    copy_models(models_dir, root)
    shutil.copytree(quick_photo_model, root / "photo")
    log = tmp_path_factory.mktemp("photo-server") / "server.log"
    with running(root, log, {"AE_LOG_LEVEL": "warning"}) as live:
        yield live.base


@pytest.fixture(scope="module")
def server_without_photo(
    request: pytest.FixtureRequest,
    models_dir: Path,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """The real service with no photograph denoiser: the usual one while `models/` has none, else a copy without."""
    if not any(card_kind(card.parent) == PHOTO_KIND for card in models_dir.glob("*/card.json")):
        yield request.getfixturevalue("server")
        return
    root = tmp_path_factory.mktemp("no-photo-models")
    copy_models(models_dir, root)
    log = tmp_path_factory.mktemp("no-photo-server") / "server.log"
    with running(root, log, {"AE_LOG_LEVEL": "warning"}) as live:
        yield live.base
