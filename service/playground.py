"""The playground: a page at `/` (and `/playground`) to try the API in a browser, served by the gateway.

Plain HTML, CSS and one JavaScript file from `service/static/` (no CDN, no build step). The page talks
to the public API only, with the API key the user types in (kept in the browser's localStorage; the
field is shown when auth is on): it lists the models (`/v1/models`), creates a job (multipart, with the
I2V image as `input_reference`), follows `/v1/videos/{id}/events` with `fetch()` (EventSource cannot
send an Authorization header; the stream resumes with Last-Event-ID after a dropped connection), shows
the queue position, progress, stage and previews, then plays the MP4 and offers it for download, and
lists the key's recent jobs.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from service.deps import State

STATIC_DIR = Path(__file__).resolve().parent / "static"

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
@router.get("/playground", response_class=HTMLResponse)
async def playground(state: State) -> HTMLResponse:
    page = (STATIC_DIR / "playground.html").read_text()
    auth = "on" if state.settings.auth.enabled else "off"
    return HTMLResponse(page.replace("{{AUTH}}", auth), headers={"cache-control": "no-cache"})


def install(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    app.include_router(router)
