"""Domain errors and their one mapping to application/problem+json (RFC 9457)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

import msgspec
import structlog
from aiohttp import web

log = structlog.get_logger("api")


class Problem(Exception):
    status = 500
    title = "Internal Server Error"

    def __init__(self, detail: str, errors: list[tuple[str, str]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []


class NotFound(Problem):
    status, title = 404, "Not Found"


class Conflict(Problem):
    status, title = 409, "Conflict"


class Invalid(Problem):
    status, title = 400, "Bad Request"


class Unauthorized(Problem):
    status, title = 401, "Unauthorized"


class Forbidden(Problem):
    status, title = 403, "Forbidden"


class TooLarge(Problem):
    status, title = 413, "Content Too Large"


class TooManyRequests(Problem):
    status, title = 429, "Too Many Requests"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


_PATH_RE = re.compile(r"at `\$\.?(.*?)`$")


def from_validation(exc: msgspec.ValidationError) -> Invalid:
    """Turn msgspec's message (`Expected int, got str - at $.instances`) into a field and a problem."""
    text = str(exc)
    field, problem = "body", text
    if " - at `$" in text:
        problem, _, where = text.rpartition(" - at ")
        match = _PATH_RE.match("at " + where)
        field = (match.group(1) if match else where) or "body"
    elif text.startswith("Object missing required field"):
        field = text.split("`")[1]
        problem = "is required"
    elif text.startswith("Object contains unknown field"):
        field = text.split("`")[1]
        problem = "is not a known field"
    return Invalid(f"{field}: {problem}", [(field, problem)])


def problem_response(exc: Problem) -> web.Response:
    body: dict[str, object] = {
        "type": f"https://pier.dev/problems/{exc.title.lower().replace(' ', '-')}",
        "title": exc.title,
        "status": exc.status,
        "detail": exc.detail,
    }
    if exc.errors:
        body["errors"] = [{"field": f, "problem": p} for f, p in exc.errors]
    headers = {"WWW-Authenticate": 'Bearer realm="pier"'} if exc.status == 401 else None
    if isinstance(exc, TooManyRequests):
        headers = {"Retry-After": str(exc.retry_after)}
    return web.Response(
        body=msgspec.json.encode(body), status=exc.status, content_type="application/problem+json", headers=headers
    )


@web.middleware
async def problems(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except Problem as exc:
        return problem_response(exc)
    except msgspec.ValidationError as exc:
        return problem_response(from_validation(exc))
    except web.HTTPRequestEntityTooLarge as exc:
        return problem_response(TooLarge(exc.text or "the request body is too large"))
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unhandled error", path=request.path)
        return problem_response(Problem("an internal error occurred; see the api service's log"))
