"""What the data plane's HTTP code accepts, in one Struct: the gateway fills it from Settings
(`PIER_HTTP_*`), the harness from the same variables when the runtime passes them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

import msgspec

_Count = Annotated[int, msgspec.Meta(gt=0)]
_Seconds = Annotated[float, msgspec.Meta(gt=0)]


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    # The server: a request line longer than this is 414, then the connection closes.
    max_request_line: _Count = 8 * 1024
    # Header bytes (counted as they arrive, in steps of at most 8 KiB) and header lines: 431 past either.
    max_header_bytes: _Count = 64 * 1024
    max_headers: _Count = 100
    # Seconds from a request's first byte to the end of its headers (a client trickling its
    # headers holds a connection no longer), then 408 and close.
    header_timeout: _Seconds = 10.0
    # Seconds a request body may go without a byte arriving, then 408 and close; an upload that
    # keeps moving is never cut, however long it takes.
    body_timeout: _Seconds = 30.0
    # Seconds an idle keep-alive connection stays open.
    keepalive_timeout: _Seconds = 75.0
    # Open connections per process; one more is answered 503 and closed (keep it below the
    # open-file limit, so the process never fails to accept or to open a file). gunicorn's default.
    max_connections: _Count = 1000
    # Requests read ahead on one connection: past this many waiting for their answer, the server
    # stops parsing (and reading) that connection until answers go out.
    max_pipeline: _Count = 64
    # The client: the largest status line + headers an instance may answer with (502 past it).
    max_response_head: _Count = 64 * 1024
    # Seconds to open a connection to an instance; past it the instance is unreachable.
    connect_timeout: _Seconds = 5.0


FIELDS = Limits.__struct_fields__


def from_env(env: Mapping[str, str]) -> Limits:
    """The limits named by `PIER_HTTP_<FIELD>` variables, the defaults for the others."""
    raw = {name: env[key] for name in FIELDS if (key := f"PIER_HTTP_{name.upper()}") in env}
    try:
        return msgspec.convert(raw, Limits, strict=False)
    except msgspec.ValidationError as exc:
        raise ValueError(f"invalid setting: {exc} (from PIER_HTTP_* environment variables)") from None


def from_settings(settings: object) -> Limits:
    """The limits held as `http_<field>` attributes (the platform's Settings)."""
    return Limits(**{name: getattr(settings, f"http_{name}") for name in FIELDS})
