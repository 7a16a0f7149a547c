"""The demo page at `GET /`: plain HTML, JavaScript and CSS from `app/static/` (no build step, no CDN).

The page only talks to this service's own `/v1` routes, with URLs relative to where it is served (so it works
behind a proxy prefix). A strict Content-Security-Policy keeps the browser from loading anything from elsewhere;
images the page makes itself (noisy photographs, answers) are shown from `blob:` URLs or canvases.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"
ASSETS_URL = "/demo-assets"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@lru_cache(maxsize=1)
def _index_html() -> str:
    return (STATIC_DIR / "index.html").read_text(encoding="utf-8")


async def get_demo_page() -> HTMLResponse:
    """The interactive demo: digits (denoise, reconstruct, latent walk), photographs (denoise), model cards."""
    return HTMLResponse(
        _index_html(),
        headers={
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache",
        },
    )


def install_demo(app: FastAPI) -> None:
    """Serve the page at `/` and its assets under `/demo-assets` (both outside the OpenAPI schema)."""
    app.mount(ASSETS_URL, StaticFiles(directory=STATIC_DIR), name="demo-assets")
    app.add_api_route("/", get_demo_page, methods=["GET"], include_in_schema=False)
