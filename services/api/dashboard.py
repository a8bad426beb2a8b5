"""The web dashboard: one page and its ES modules and CSS, served at `/` beside `/v1` (same origin,
so the session cookie and the CSRF token of services/api/sessions.py are all it needs).

There is no build step: the files under `dashboard_static/` are what the browser runs. They are
public (no data is in them; every piece of data comes from `/v1` with the user's credentials) and
revalidated on each load (`no-cache` with an ETag), so an upgraded api is picked up at once.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from services.api.errors import NotFound
from services.api.http import Context

STATIC = Path(__file__).parent / "dashboard_static"
# The page loads only its own files and talks only to its own origin.
HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self';"
        " frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
}
# aiohttp guesses from the suffix with mimetypes, which some systems map oddly for .js.
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


def _file(path: Path) -> web.FileResponse:
    response = web.FileResponse(path, headers=HEADERS)
    response.content_type = TYPES.get(path.suffix, "application/octet-stream")
    return response


async def index(_: web.Request) -> web.FileResponse:
    """The dashboard's page"""
    return _file(STATIC / "index.html")


async def asset(request: web.Request) -> web.FileResponse:
    """One of the dashboard's scripts or style sheets"""
    name = request.match_info["name"]
    path = (STATIC / name).resolve()
    # Only files of the folder itself, by a name the page uses: never a path out of it.
    if path.parent != STATIC.resolve() or path.suffix not in TYPES or not path.is_file():
        raise NotFound(f"no dashboard file {name!r}")
    return _file(path)


def routes(_: Context) -> list[web.RouteDef]:
    return [web.get("/", index), web.get("/static/{name}", asset)]
