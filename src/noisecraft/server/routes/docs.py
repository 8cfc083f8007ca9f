"""The API's documentation pages (/docs: Swagger UI, /redoc) served with no CDN: their scripts and
styles come from the `fastapi-offline` package's copies (Swagger UI: Apache-2.0, ReDoc: MIT; their
licences ship with that package), so the docs work on a machine with no internet."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs-assets"
router = APIRouter(include_in_schema=False)


@router.get("/docs")
async def swagger():
    return get_swagger_ui_html(openapi_url="/openapi.json", title="noisecraft API", swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
                               swagger_css_url=f"{ASSETS}/swagger-ui.css", swagger_favicon_url="/static/favicon.svg",
                               oauth2_redirect_url="/docs/oauth2-redirect")


@router.get("/docs/oauth2-redirect")
async def oauth2_redirect():
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
async def redoc():
    return get_redoc_html(openapi_url="/openapi.json", title="noisecraft API", redoc_js_url=f"{ASSETS}/redoc.standalone.js",
                          redoc_favicon_url="/static/favicon.svg", with_google_fonts=False)


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(ASSETS, StaticFiles(directory=str(files("fastapi_offline") / "static")), name="docs-assets")
