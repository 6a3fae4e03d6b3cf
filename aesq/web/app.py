"""The web server `aesq serve` runs: the dashboard pages, the JSON API, static files (plotly.js from the
installed plotly package, so no CDN is needed), a token check when one is configured, and error answers: readable
HTML pages for the dashboard, JSON for /api/."""

from __future__ import annotations

from pathlib import Path

import plotly
from fastapi import FastAPI
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from aesq.core import database
from aesq.web import api, errors, pages, security
from aesq.web.deps import SettingsDep

PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
FAVICON = Path(__file__).parent / "static" / "favicon.svg"


def create_app() -> FastAPI:
    """The dashboard and API application (settings come from `web_settings` per request, so tests can change them)."""
    app = FastAPI(
        title="aesq", summary="Aesthetic data quality: versions, scores, defects", docs_url=None, redoc_url=None
    )

    @app.get("/static/plotly.min.js", include_in_schema=False)
    def plotly_js() -> Response:
        """plotly.js as shipped inside the installed plotly package."""
        return FileResponse(
            PLOTLY_JS, media_type="text/javascript", headers={"Cache-Control": "public, max-age=604800"}
        )

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        """The dashboard's icon, also for pages that link none (a saved report) and browsers that ask this path."""
        return FileResponse(FAVICON, media_type="image/svg+xml", headers={"Cache-Control": "public, max-age=604800"})

    @app.get("/healthz", include_in_schema=False)
    def healthz(settings: SettingsDep) -> Response:
        """For load balancers and Kubernetes probes, which send no token: 200 while the database answers a query,
        503 when it does not (saying only that)."""
        if not database.answers(settings):
            return JSONResponse({"status": "database unreachable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    security.install(app, PLOTLY_JS)
    errors.install(app)
    app.add_middleware(GZipMiddleware, minimum_size=2000)
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")
    app.include_router(api.router)
    api.document(app)
    app.include_router(pages.router)
    return app
