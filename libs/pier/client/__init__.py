"""The Python client of Pier: every operation of `/v1` and calls to model APIs, on httpx.

    from pier.client import Client
    with Client() as pier:          # the profile of `pier login`, else $PIER_HOME/credentials.json
        pier.predict("hello", data={"name": "Ada"})["result"]

`AsyncClient` has the same operations, awaited. docs/client.md describes both.
"""

from pier.client.aio import AsyncClient
from pier.client.core import TERMINAL_STATES, Call
from pier.client.errors import ApiError, Unreachable
from pier.client.packing import pack
from pier.client.profile import credentials_path, profile_path, save_profile
from pier.client.retry import RETRIED_STATUSES, RetryPolicy
from pier.client.sync import Client

__all__ = [
    "RETRIED_STATUSES",
    "TERMINAL_STATES",
    "ApiError",
    "AsyncClient",
    "Call",
    "Client",
    "RetryPolicy",
    "Unreachable",
    "credentials_path",
    "pack",
    "profile_path",
    "save_profile",
]
