"""The client without I/O: every operation of `/v1` as a `Call` (what to send, how to read the
answer, whether to retry), built once and sent by either shell: `Client` (blocking) or
`AsyncClient` (asyncio). A shell only moves bytes: it owns no method body of its own.

An operation is a method returning a `Call`, decorated with `@operation` (one answer) or
`@stream` (server-sent events); on a shell, `client.model("x")` builds the call and sends it."""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import os
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from pier.client import answers as a
from pier.client.errors import ApiError
from pier.client.packing import pack
from pier.client.profile import saved
from pier.client.retry import RetryPolicy, parse_retry_after

P = ParamSpec("P")
T = TypeVar("T")

TERMINAL_STATES = frozenset({"running", "failed", "stopped", "terminated", "waiting"})
TIMEOUT = 60.0  # seconds for one management call; an upload gets longer


def _json(status: int, body: bytes) -> Any:
    return json.loads(body) if body else None


@dataclass
class Call(Generic[T]):
    """One HTTP exchange: the request, and how its answer becomes a `T` (or an ApiError)."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    params: dict[str, Any] | None = None
    timeout: float | None = TIMEOUT
    parse: Callable[[int, bytes], T] = _json
    accept: frozenset[int] = frozenset()  # error statuses that `parse` reads as an answer
    retry: RetryPolicy | None = None  # None: one attempt
    progress: Callable[[int, int], None] | None = None  # told (bytes sent, of total) as the body goes

    CHUNK = 64 * 1024

    def chunks(self) -> Iterator[bytes]:
        """The body in pieces, each reported to `progress` once handed to the transport."""
        content = self.content or b""
        for start in range(0, len(content), self.CHUNK):
            yield content[start : start + self.CHUNK]
            if self.progress:
                self.progress(min(start + self.CHUNK, len(content)), len(content))

    def finish(self, status: int, headers: Mapping[str, str], body: bytes) -> T:
        if status >= 400 and status not in self.accept:
            raise ApiError(status, problem(body), parse_retry_after(headers.get("retry-after")))
        return self.parse(status, body)


def problem(body: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(body)
    except ValueError:
        return {"detail": body.decode(errors="replace")}
    return parsed if isinstance(parsed, dict) else {"detail": parsed}


class Op(Generic[P, T]):
    """An operation: on a `Client` it returns `T`, on an `AsyncClient` an awaitable of `T`."""

    def __init__(self, build: Callable[Concatenate[Any, P], Call[T]]) -> None:
        self.build = build
        self.__doc__ = build.__doc__

    @overload
    def __get__(self, obj: None, owner: type) -> Op[P, T]: ...
    @overload
    def __get__(self, obj: SyncShell, owner: type) -> Callable[P, T]: ...
    @overload
    def __get__(self, obj: AsyncShell, owner: type) -> Callable[P, Awaitable[T]]: ...
    def __get__(self, obj: Any, owner: type) -> Any:
        if obj is None:
            return self
        build, send = self.build, obj._send

        @functools.wraps(build)
        def bound(*args: Any, **kwargs: Any) -> Any:
            return send(build(obj, *args, **kwargs))

        return bound


class StreamOp(Generic[P, T]):
    """A stream of server-sent events: an iterator on a `Client`, an async iterator on an `AsyncClient`."""

    def __init__(self, build: Callable[Concatenate[Any, P], Call[T]]) -> None:
        self.build = build
        self.__doc__ = build.__doc__

    @overload
    def __get__(self, obj: None, owner: type) -> StreamOp[P, T]: ...
    @overload
    def __get__(self, obj: SyncShell, owner: type) -> Callable[P, Iterator[T]]: ...
    @overload
    def __get__(self, obj: AsyncShell, owner: type) -> Callable[P, AsyncIterator[T]]: ...
    def __get__(self, obj: Any, owner: type) -> Any:
        if obj is None:
            return self
        build, stream = self.build, obj._stream

        @functools.wraps(build)
        def bound(*args: Any, **kwargs: Any) -> Any:
            return stream(build(obj, *args, **kwargs))

        return bound


def operation(build: Callable[Concatenate[Any, P], Call[T]]) -> Op[P, T]:
    return Op(build)


def stream(build: Callable[Concatenate[Any, P], Call[T]]) -> StreamOp[P, T]:
    return StreamOp(build)


class SseParser:
    """Server-sent events, line by line: `line()` returns an event's parsed JSON data at its end."""

    def __init__(self) -> None:
        self.data: list[str] = []

    def line(self, text: str) -> Any | None:
        text = text.rstrip("\r\n")
        if text.startswith("data:"):
            self.data.append(text[5:].lstrip())
        elif not text and self.data:
            item = json.loads("\n".join(self.data))
            self.data = []
            return item
        return None


class Waiter:
    """`wait`'s decisions: `seen(model)` is the model API once the version has settled, else None."""

    POLL = 0.2

    def __init__(
        self,
        version: int,
        timeout: float,
        on_change: Callable[[Any, Any], None] | None,
        on_poll: Callable[[Any, Any], None] | None = None,
    ) -> None:
        self.version, self.timeout, self.on_change, self.on_poll = version, timeout, on_change, on_poll
        self.deadline = time.monotonic() + timeout
        self.last: tuple[str, str] | None = None

    def seen(self, model: a.Model) -> a.Model | None:
        mine = next((v for v in model["versions"] if v["number"] == self.version), None)
        seen = (model["state"], mine["state"] if mine else "")
        if seen != self.last and self.on_change:
            self.on_change(model, mine)
        self.last = seen
        if self.on_poll:
            self.on_poll(model, mine)
        if mine and mine["state"] == "failed":
            return model
        if model["latest"] == self.version and model["state"] == "running":
            return model
        if model["state"] in TERMINAL_STATES - {"running"}:
            return model
        if time.monotonic() > self.deadline:
            raise TimeoutError(f"version {self.version} of {model['name']} did not settle within {self.timeout:g} s")
        return None


def _query(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: ("true" if v is True else "false" if v is False else v) for k, v in values.items() if v is not None}


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


class Surface:
    """Every operation of `/v1` and the model call, shared by both shells."""

    def __init__(
        self,
        api_url: str | None = None,
        token: str | None = None,
        gateway_url: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        found = saved()
        self.api_url = api_url or os.environ.get("PIER_API_URL") or found.get("api_url", "http://127.0.0.1:8080")
        self.gateway_url = (
            gateway_url or os.environ.get("PIER_GATEWAY_URL") or found.get("gateway_url", "http://127.0.0.1:8000")
        )
        self.token = token or os.environ.get("PIER_TOKEN") or found.get("token", "")
        self.retry = retry or RetryPolicy()

    # ---- building calls ----------------------------------------------------------------------

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _v1(self, method: str, path: str, payload: Any = None, **query: Any) -> Call[Any]:
        body = None if payload is None else json.dumps(payload).encode()
        headers = {**self._auth(), **({"Content-Type": "application/json"} if body is not None else {})}
        return Call(method, f"{self.api_url}/v1{path}", headers, body, _query(query) or None)

    def _model(self, ref: str, rest: str = "") -> str:
        return f"/models/{_quote(ref)}{rest}"

    # ---- any route ---------------------------------------------------------------------------

    @operation
    def api(self, method: str, path: str, payload: Any = None) -> Call[Any]:
        """Any `/v1` route, its answer as parsed JSON (`path` without `/v1`, may hold a query)."""
        return self._v1(method, path, payload)

    @operation
    def health(self) -> Call[dict[str, str]]:
        return self._v1("GET", "/health")

    @operation
    def openapi(self) -> Call[dict[str, Any]]:
        """The OpenAPI document of `/v1`: every route, its schemas and the role it needs (`x-pier-role`)."""
        return self._v1("GET", "/openapi.json")

    # ---- model APIs --------------------------------------------------------------------------

    @operation
    def models(self) -> Call[list[a.Model]]:
        return self._v1("GET", "/models")

    @operation
    def model(self, ref: str) -> Call[a.Model]:
        return self._v1("GET", self._model(ref))

    @operation
    def exists(self, ref: str) -> Call[bool]:
        call = self._v1("GET", self._model(ref))
        return dataclasses.replace(call, parse=lambda status, body: status != 404, accept=frozenset({404}))

    # The spec is one dict, never keyword arguments: its fields (`ref`, `name`, ...) must not
    # collide with the client's own parameters, as `ref` (a git ref) once did with the model's.
    @operation
    def create_model(self, spec: dict[str, Any]) -> Call[a.Model]:
        return self._v1("POST", "/models", spec)

    @operation
    def terminate(self, ref: str) -> Call[a.Model]:
        """Terminate: instances stop, working directories are removed, the name is free again."""
        return self._v1("DELETE", self._model(ref))

    @operation
    def stop(self, ref: str) -> Call[a.Model]:
        return self._v1("POST", self._model(ref, "/stop"), {})

    @operation
    def restart(self, ref: str) -> Call[a.Model]:
        return self._v1("POST", self._model(ref, "/restart"), {})

    @operation
    def versions(self, ref: str) -> Call[list[a.Version]]:
        return self._v1("GET", self._model(ref, "/versions"))

    @operation
    def create_version(self, ref: str, spec: dict[str, Any]) -> Call[int]:
        """A new version from `spec` (source, git or source_name, entry, routes); its number."""
        call = self._v1("POST", self._model(ref, "/versions"), spec)
        return dataclasses.replace(call, parse=lambda status, body: int(json.loads(body)["number"]))

    @operation
    def change_settings(self, ref: str, changes: dict[str, Any]) -> Call[a.Settings]:
        """Change the health-check and restart policy, request timeout, access, routing mode or
        visibility; instances restart one at a time where a health setting changed."""
        return self._v1("PATCH", self._model(ref), changes)

    @operation
    def settings(self, ref: str) -> Call[a.Settings]:
        return self._v1("GET", self._model(ref, "/settings"))

    @operation
    def usage(self, ref: str) -> Call[a.Usage]:
        """GPU-seconds and instance-seconds used so far."""
        return self._v1("GET", self._model(ref, "/usage"))

    @operation
    def logs(self, ref: str, **query: Any) -> Call[a.LogPage]:
        """One page of log lines, newest first: `lines` and `next_before`, the cursor for older ones.
        Query: kind (instance, build, deployment), version, instance, before, limit."""
        return self._v1("GET", self._model(ref, "/logs"), **query)

    @stream
    def follow_logs(self, ref: str, timeout: float | None = None, **query: Any) -> Call[a.LogLine]:
        """Log lines as they come (server-sent events), oldest first: the last `limit` lines, or
        those after the cursor `after`, then each new one. Ends when the connection does."""
        call = self._v1("GET", self._model(ref, "/logs"), **query, follow=True)
        return dataclasses.replace(call, timeout=timeout)

    # ---- labels, access tokens ---------------------------------------------------------------

    @operation
    def labels(self, ref: str) -> Call[list[a.Label]]:
        return self._v1("GET", self._model(ref, "/labels"))

    @operation
    def promote(self, ref: str, version: int, label: str = "prod") -> Call[dict[str, Any]]:
        """Point `label` at `version` (routing mode advanced); the switch is atomic at every gateway."""
        return self._v1("PUT", self._model(ref, f"/labels/{_quote(label)}"), {"version": version})

    @operation
    def tokens(self, ref: str) -> Call[list[a.Token]]:
        return self._v1("GET", self._model(ref, "/tokens"))

    @operation
    def create_token(self, ref: str, name: str) -> Call[a.TokenCreated]:
        """A new access token; its secret is in `token`, shown this once."""
        return self._v1("POST", self._model(ref, "/tokens"), {"name": name})

    @operation
    def revoke_token(self, ref: str, token_id: str) -> Call[None]:
        return self._v1("DELETE", self._model(ref, f"/tokens/{_quote(token_id)}"))

    # ---- schedules ---------------------------------------------------------------------------

    @operation
    def schedules(self, ref: str) -> Call[list[a.Schedule]]:
        return self._v1("GET", self._model(ref, "/schedules"))

    @operation
    def create_schedule(self, ref: str, cron: str, command: str, timeout: float = 3600.0) -> Call[a.Schedule]:
        """Run `command` on `cron` in a copy of the serving source; deploy what it leaves (admins)."""
        body = {"cron": cron, "command": command, "timeout": timeout}
        return self._v1("POST", self._model(ref, "/schedules"), body)

    @operation
    def delete_schedule(self, ref: str, schedule_id: str) -> Call[None]:
        return self._v1("DELETE", self._model(ref, f"/schedules/{_quote(schedule_id)}"))

    @operation
    def runs(self, ref: str, schedule_id: str) -> Call[list[a.Run]]:
        return self._v1("GET", self._model(ref, f"/schedules/{_quote(schedule_id)}/runs"))

    @operation
    def run_schedule(self, ref: str, schedule_id: str) -> Call[a.Run]:
        return self._v1("POST", self._model(ref, f"/schedules/{_quote(schedule_id)}/runs"))

    # ---- sharing -----------------------------------------------------------------------------

    @operation
    def collaborators(self, ref: str) -> Call[list[a.Collaborator]]:
        return self._v1("GET", self._model(ref, "/collaborators"))

    @operation
    def share(self, ref: str, principal: str, role: str) -> Call[a.Collaborator]:
        """Give a user, or an organization as `org:NAME`, the viewer or editor role."""
        return self._v1("PUT", self._model(ref, f"/collaborators/{_quote(principal)}"), {"role": role})

    @operation
    def unshare(self, ref: str, principal: str) -> Call[None]:
        return self._v1("DELETE", self._model(ref, f"/collaborators/{_quote(principal)}"))

    @operation
    def transfer(self, ref: str, owner: str) -> Call[a.Model]:
        return self._v1("POST", self._model(ref, "/transfer"), {"owner": owner})

    # ---- the audit feed ----------------------------------------------------------------------

    @operation
    def events(self, ref: str | None = None, before: int | None = None, limit: int | None = None) -> Call[a.EventPage]:
        """One page of audit events, newest first: `events` and `next_before`, the cursor for older
        ones. Without `ref`, every model API's (admins only)."""
        return self._v1("GET", "/events", model=ref, before=before, limit=limit)

    @stream
    def follow_events(
        self, ref: str | None = None, last_event_id: int | None = None, timeout: float | None = None
    ) -> Call[a.Event]:
        """Audit events as they happen, oldest first: those after `last_event_id` when given, then
        each new one. Ends when the connection does."""
        call = self._v1("GET", "/events", model=ref, last_event_id=last_event_id, follow=True)
        return dataclasses.replace(call, timeout=timeout)

    # ---- code and what it runs on ------------------------------------------------------------

    @operation
    def upload_source(
        self, path: Path, name: str | None = None, progress: Callable[[int, int], None] | None = None
    ) -> Call[str]:
        """Upload the folder `path` as a source, its digest; with `name`, also point that named
        source at it. `progress(sent, total)` is told the bytes sent as they go. A file of the
        folder that cannot be read raises its OSError here."""
        content = pack(path)
        headers = {**self._auth(), "Content-Type": "application/gzip", "Content-Length": str(len(content))}
        query = _query({"name": name}) or None
        return Call(
            "POST",
            f"{self.api_url}/v1/sources",
            headers,
            content,
            query,
            timeout=600.0,
            parse=lambda status, body: str(json.loads(body)["digest"]),
            progress=progress,
        )

    @operation
    def sources(self) -> Call[list[a.NamedSource]]:
        return self._v1("GET", "/sources")

    @operation
    def source(self, name: str) -> Call[a.NamedSource]:
        return self._v1("GET", f"/sources/{_quote(name)}")

    @operation
    def add_git_credential(
        self, name: str, token: str | None = None, ssh_key: str | None = None, username: str | None = None
    ) -> Call[a.Credential]:
        """A credential for private git repositories, used by name (admins): a token or an ssh key."""
        body = {k: v for k, v in {"name": name, "token": token, "ssh_key": ssh_key, "username": username}.items() if v}
        return self._v1("POST", "/git-credentials", body)

    @operation
    def git_credentials(self) -> Call[list[a.Credential]]:
        return self._v1("GET", "/git-credentials")

    @operation
    def environments(self) -> Call[list[a.Environment]]:
        return self._v1("GET", "/environments")

    @operation
    def create_environment(self, spec: dict[str, Any]) -> Call[a.Environment]:
        """Define a compute environment (admins): name, packages, python_version, description."""
        return self._v1("POST", "/environments", spec)

    @operation
    def gpus(self) -> Call[a.Gpus]:
        return self._v1("GET", "/gpus")

    @operation
    def plan(self, spec: dict[str, Any]) -> Call[a.Plan]:
        """Would a model API with these resources start now or wait, and why (nothing is created)."""
        return self._v1("POST", "/plan", spec)

    # ---- users, keys, organizations ----------------------------------------------------------

    @operation
    def me(self) -> Call[a.Me]:
        return self._v1("GET", "/me")

    @operation
    def create_user(self, name: str, email: str) -> Call[a.UserCreated]:
        """A new user (admin only); their first API key is in `key`, shown this once."""
        return self._v1("POST", "/users", {"name": name, "email": email})

    @operation
    def users(self) -> Call[list[a.User]]:
        return self._v1("GET", "/users")

    @operation
    def set_disabled(self, name: str, disabled: bool) -> Call[a.User]:
        return self._v1("PATCH", f"/users/{_quote(name)}", {"disabled": disabled})

    @operation
    def create_key(self, name: str) -> Call[a.KeyCreated]:
        """A new API key of the caller; its secret is in `key`, shown this once."""
        return self._v1("POST", "/me/keys", {"name": name})

    @operation
    def keys(self) -> Call[list[a.Key]]:
        return self._v1("GET", "/me/keys")

    @operation
    def delete_key(self, key_id: str) -> Call[None]:
        return self._v1("DELETE", f"/me/keys/{_quote(key_id)}")

    @operation
    def set_password(self, password: str) -> Call[None]:
        """The caller's password for the dashboard's sign-in (argon2id-hashed by the api)."""
        return self._v1("PUT", "/me/password", {"password": password})

    @operation
    def sign_in(self, name: str, password: str) -> Call[a.Session]:
        """A dashboard session (its cookie is the shell's until closed): `user`, `csrf_token`, `expires`."""
        return self._v1("POST", "/session", {"name": name, "password": password})

    @operation
    def sign_out(self) -> Call[None]:
        return self._v1("DELETE", "/session")

    @operation
    def create_org(self, name: str) -> Call[a.Org]:
        return self._v1("POST", "/orgs", {"name": name})

    @operation
    def orgs(self) -> Call[list[a.Org]]:
        return self._v1("GET", "/orgs")

    @operation
    def add_member(self, org: str, user: str) -> Call[a.Org]:
        return self._v1("PUT", f"/orgs/{_quote(org)}/members/{_quote(user)}")

    @operation
    def remove_member(self, org: str, user: str) -> Call[None]:
        return self._v1("DELETE", f"/orgs/{_quote(org)}/members/{_quote(user)}")

    # ---- calling a model API -----------------------------------------------------------------

    @operation
    def predict(
        self,
        name: str,
        data: dict[str, Any] | None = None,
        parameters: list[Any] | None = None,
        route: str | None = None,
        label: str = "latest",
        token: str | None = None,
        deadline: float | None = None,
        verb: str = "POST",
    ) -> Call[a.Answer]:
        """Call a model API through the gateway; the whole envelope (`result`, `request_id`, ...).

        Without `route`, Domino's `/model` with `data` (named arguments) or `parameters`
        (positional); with `route` (e.g. "/classify"), that route with `data` as its body (its
        query for a GET). A shed call (503), a bad gateway (502) or no answer is tried again with
        backoff, after at least the Retry-After the gateway sent, until `deadline` seconds in all
        (default: the client's retry policy); then the last error is raised."""
        where = "latest" if label == "latest" else f"labels/{_quote(label)}"
        url = f"{self.gateway_url}/models/{_quote(name)}/{where}"
        headers = {}
        if token:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{token}:{token}".encode()).decode()
        retry = self.retry if deadline is None else dataclasses.replace(self.retry, deadline=deadline)
        if route is None:
            payload: dict[str, Any] = {"data": data or {}} if parameters is None else {"parameters": parameters}
            call: Call[Any] = Call("POST", f"{url}/model", headers, json.dumps(payload).encode())
        elif verb == "GET":
            call = Call("GET", f"{url}/{route.lstrip('/')}", headers, params=_query(data or {}))
        else:
            call = Call(verb, f"{url}/{route.lstrip('/')}", headers, json.dumps(data or {}).encode())
        if call.content is not None:
            call.headers["Content-Type"] = "application/json"
        # No limit on reading the answer: the gateway ends a call at the model API's request_timeout (504).
        return dataclasses.replace(call, retry=retry, timeout=None)


class SyncShell(Surface):
    """Marks the blocking shell, for the operations' types."""

    def _send(self, call: Call[T]) -> T:
        raise NotImplementedError

    def _stream(self, call: Call[T]) -> Iterator[T]:
        raise NotImplementedError


class AsyncShell(Surface):
    """Marks the asyncio shell, for the operations' types."""

    async def _send(self, call: Call[T]) -> T:
        raise NotImplementedError

    def _stream(self, call: Call[T]) -> AsyncIterator[T]:
        raise NotImplementedError
