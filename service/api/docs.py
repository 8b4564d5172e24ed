"""API docs that work without internet access: Swagger UI at ``/docs``, ReDoc at ``/redoc``.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, so on a cluster
without internet access they are blank. The scripts and styles here come from
the ``fastapi-offline`` package, which bundles them as package data, and are
served below :data:`ASSETS_URL`.

Each page is sent with a Content-Security-Policy that allows nothing but this
server: ReDoc's sidebar otherwise loads a logo from cdn.redoc.ly (it hides
itself when the image fails), and a page that wanted anything else from the
internet would fail here as it would on the cluster. Swagger UI's validator
badge is off (it would send the spec's URL to validator.swagger.io).
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["DOCS_URL", "REDOC_URL", "OAUTH2_REDIRECT_URL", "ASSETS_URL", "ASSETS_DIR", "DOCS_CSP", "add_docs"]

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
ASSETS_URL = "/docs-assets"
#: swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js, favicon.png
ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"
#: Same origin only. Inline scripts and styles: the pages' start-up code and the UIs' own styling;
#: blob: workers: ReDoc's search.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_HEADERS = {"Content-Security-Policy": DOCS_CSP, "X-Content-Type-Options": "nosniff"}


def _with_policy(page: HTMLResponse) -> HTMLResponse:
    page.headers.update(_HEADERS)
    return page


def add_docs(app: FastAPI) -> tuple[str, ...]:
    """Add the pages and their assets to ``app`` (built with ``docs_url=None, redoc_url=None``).

    Returns the paths that need no token (the assets folder is a mount: nothing else routes below it).
    """
    assert app.docs_url is None and app.redoc_url is None, "FastAPI's CDN pages must be off"
    openapi_url = app.openapi_url or "/openapi.json"
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")
    favicon = f"{ASSETS_URL}/favicon.png"

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return _with_policy(get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - API docs",
            oauth2_redirect_url=OAUTH2_REDIRECT_URL,
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=favicon,
            swagger_ui_parameters={"validatorUrl": None},
        ))

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return _with_policy(get_swagger_ui_oauth2_redirect_html())

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return _with_policy(get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=favicon,
            with_google_fonts=False,
        ))

    return (openapi_url, DOCS_URL, OAUTH2_REDIRECT_URL, REDOC_URL)
