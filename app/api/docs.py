"""`/docs` (Swagger UI) and `/redoc` served entirely from local files: no CDN, no fonts, no validator badge.

The JavaScript and CSS come from the `fastapi-offline` package, which ships them; only its static files are used.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from app.api.errors import error_response

log = logging.getLogger("app.docs")

ASSETS_URL = "/docs-assets"
SWAGGER_JS = "swagger-ui-bundle.js"
SWAGGER_CSS = "swagger-ui.css"
REDOC_JS = "redoc.standalone.js"
FAVICON = "favicon.png"


def assets_dir() -> Path | None:
    """The folder holding the UI bundles, or None when the package is not installed."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "static"
    needed = (SWAGGER_JS, SWAGGER_CSS, REDOC_JS)
    return folder if all((folder / name).is_file() for name in needed) else None


def install_docs(app: FastAPI) -> None:
    """Mount the assets and add the two documentation pages."""
    folder = assets_dir()
    openapi_url = app.openapi_url or "/openapi.json"
    title = app.title
    if folder is None:
        log.error("docs assets missing: install fastapi-offline to serve /docs and /redoc offline")

        async def docs_unavailable(request: Request) -> Response:
            return error_response(503, "docs_unavailable", "API docs assets are not installed (fastapi-offline)")

        for path in ("/docs", "/redoc"):
            app.add_api_route(path, docs_unavailable, include_in_schema=False)
        return
    app.mount(ASSETS_URL, StaticFiles(directory=folder), name="docs-assets")

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{title} - Swagger UI",
            oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
            swagger_js_url=f"{root}{ASSETS_URL}/{SWAGGER_JS}",
            swagger_css_url=f"{root}{ASSETS_URL}/{SWAGGER_CSS}",
            swagger_favicon_url=f"{root}{ASSETS_URL}/{FAVICON}",
            # validatorUrl null: Swagger UI would otherwise fetch a badge from the internet.
            swagger_ui_parameters={
                "validatorUrl": None,
                "tryItOutEnabled": True,
                "displayRequestDuration": True,
                "deepLinking": True,
            },
        )

    async def swagger_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/{REDOC_JS}",
            redoc_favicon_url=f"{root}{ASSETS_URL}/{FAVICON}",
            with_google_fonts=False,
        )

    app.add_api_route("/docs", swagger_ui, include_in_schema=False)
    app.add_api_route("/docs/oauth2-redirect", swagger_redirect, include_in_schema=False)
    app.add_api_route("/redoc", redoc, include_in_schema=False)
