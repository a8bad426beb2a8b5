"""The Python client: the management API and model calls, with no dependency beyond the stdlib.

from pier.client import Client
pier = Client()                     # reads the profile of `pier login`, else $PIER_HOME/credentials.json
pier.call("hello", data={"name": "Ada"})
"""

from __future__ import annotations

import base64
import io
import json
import os
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TERMINAL_STATES = frozenset({"running", "failed", "stopped", "terminated", "waiting"})


class ApiError(Exception):
    """An error answer from Pier; `problem` is the parsed body (problem+json or an invocation error)."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        detail = problem.get("detail") or problem.get("error", {}).get("message") or problem
        super().__init__(f"HTTP {status}: {detail}")


class Unreachable(ConnectionError):
    """No answer from Pier at all: the connection was refused, timed out or dropped.

    Raised for these alone, so that any other OSError a caller sees is a local one (a file)."""

    def __init__(self, url: str, reason: object) -> None:
        self.url = url
        super().__init__(f"cannot reach Pier at {url} ({reason})")


def _open(request: urllib.request.Request, timeout: float | None) -> Any:
    """urlopen, with every failure to get an answer raised as Unreachable and HTTP errors as they are."""
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError:
        raise
    except urllib.error.URLError as exc:
        raise Unreachable(request.full_url, exc.reason) from None
    except (ConnectionError, TimeoutError) as exc:
        raise Unreachable(request.full_url, exc) from None


def credentials_path() -> Path:
    return Path(os.environ.get("PIER_HOME", ".pier")) / "credentials.json"


def profile_path() -> Path:
    """Where `pier login` keeps the signed-in user's key: $XDG_CONFIG_HOME/pier (default ~/.config/pier)."""
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "pier" / "profile.json"


def save_profile(api_url: str, gateway_url: str, token: str) -> Path:
    """Write the profile readable by its owner only (0600, from its creation on: the key is a secret)."""
    path = profile_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older file keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as handle:
        json.dump({"api_url": api_url, "gateway_url": gateway_url, "token": token}, handle)
    return path


def _saved() -> dict[str, str]:
    """The profile of `pier login`, else the credentials `make up` wrote, else nothing."""
    for path in (profile_path(), credentials_path()):
        if path.exists():
            return dict(json.loads(path.read_text()))
    return {}


def pack(path: Path) -> bytes:
    """A gzip'd tarball of `path` (without .git); `.modelignore` is applied by the builder."""
    buffer = io.BytesIO()

    def plain(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if info.name.split("/")[0] == ".git":
            return None
        if info.islnk():
            # Pier refuses hard links in a source: a file with several names goes as copies.
            info.type, info.linkname, info.size = tarfile.REGTYPE, "", (path / info.name).stat().st_size
        return info

    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for child in sorted(path.iterdir()):
            tar.add(child, arcname=child.name, filter=plain)
    return buffer.getvalue()


class Client:
    def __init__(self, api_url: str | None = None, token: str | None = None, gateway_url: str | None = None) -> None:
        saved = _saved()
        self.api_url = api_url or os.environ.get("PIER_API_URL") or saved.get("api_url", "http://127.0.0.1:8080")
        self.gateway_url = (
            gateway_url or os.environ.get("PIER_GATEWAY_URL") or saved.get("gateway_url", "http://127.0.0.1:8000")
        )
        self.token = token or os.environ.get("PIER_TOKEN") or saved.get("token", "")

    # ---- transport ---------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> Any:
        all_headers = {"Content-Type": content_type, **(headers or {})}
        request = urllib.request.Request(url, data=body, method=method, headers=all_headers)
        try:
            with _open(request, timeout) as response:
                try:
                    raw = response.read()
                except (ConnectionError, TimeoutError) as exc:  # dropped while the answer came
                    raise Unreachable(url, exc) from None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                problem = json.loads(raw)
            except ValueError:
                problem = {"detail": raw.decode(errors="replace")}
            raise ApiError(exc.code, problem) from None
        return json.loads(raw) if raw else None

    def api(self, method: str, path: str, payload: Any = None) -> Any:
        body = None if payload is None else json.dumps(payload).encode()
        auth = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return self._request(method, f"{self.api_url}/v1{path}", body, headers=auth)

    # ---- management --------------------------------------------------------------------------

    def upload_source(self, path: Path, name: str | None = None) -> str:
        """Upload `path` as a source; with `name`, also point that named source at it."""
        auth = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        query = f"?name={urllib.parse.quote(name)}" if name else ""
        answer = self._request(
            "POST", f"{self.api_url}/v1/sources{query}", pack(path), "application/gzip", headers=auth, timeout=600
        )
        return str(answer["digest"])

    def models(self) -> list[dict[str, Any]]:
        return list(self.api("GET", "/models"))

    def model(self, ref: str) -> dict[str, Any]:
        return dict(self.api("GET", f"/models/{ref}"))

    def exists(self, ref: str) -> bool:
        try:
            self.model(ref)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    # The spec is one dict, never keyword arguments: its fields (`ref`, `name`, ...) must not
    # collide with the client's own parameters, as `ref` (a git ref) once did with the model's.
    def create_model(self, spec: dict[str, Any]) -> dict[str, Any]:
        return dict(self.api("POST", "/models", spec))

    def create_version(self, model: str, spec: dict[str, Any]) -> int:
        return int(self.api("POST", f"/models/{model}/versions", spec)["number"])

    def wait(self, ref: str, version: int, timeout: float = 600.0, on_change: Any = None) -> dict[str, Any]:
        """Poll until `version` serves, fails, or the model API settles in another state."""
        deadline = time.monotonic() + timeout
        last: tuple[str, str] | None = None
        while True:
            model = self.model(ref)
            mine = next((v for v in model["versions"] if v["number"] == version), None)
            seen = (model["state"], mine["state"] if mine else "")
            if seen != last and on_change:
                on_change(model, mine)
            last = seen
            if mine and mine["state"] == "failed":
                return model
            if model["latest"] == version and model["state"] == "running":
                return model
            if model["state"] in TERMINAL_STATES - {"running"}:
                return model
            if time.monotonic() > deadline:
                raise TimeoutError(f"version {version} of {ref} did not settle within {timeout:g} s")
            time.sleep(0.2)

    # ---- settings and logs -------------------------------------------------------------------

    def change_settings(self, ref: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Change the health-check policy or request timeout; the instances restart one at a time."""
        return dict(self.api("PATCH", f"/models/{ref}", changes))

    def settings(self, ref: str) -> dict[str, Any]:
        return dict(self.api("GET", f"/models/{ref}/settings"))

    def logs(self, ref: str, **query: Any) -> dict[str, Any]:
        """One page of log lines, newest first: `lines` and `next_before`, the cursor for older ones.
        Query: kind (instance, build, deployment), version, instance, before, limit."""
        params = urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        return dict(self.api("GET", f"/models/{ref}/logs?{params}"))

    def follow_logs(self, ref: str, timeout: float | None = None, **query: Any) -> Iterator[dict[str, Any]]:
        """Log lines as they come (server-sent events), oldest first: the last `limit` lines, or
        those after the cursor `after`, then each new one. Ends when the connection does."""
        return self._follow(f"/models/{ref}/logs", query, timeout)

    def _follow(self, path: str, query: dict[str, Any], timeout: float | None) -> Iterator[dict[str, Any]]:
        """A server-sent events stream of JSON data, one item per event."""
        params = urllib.parse.urlencode({**{k: v for k, v in query.items() if v is not None}, "follow": "true"})
        auth = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        request = urllib.request.Request(f"{self.api_url}/v1{path}?{params}", headers=auth)
        try:
            response = _open(request, timeout)
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, json.loads(exc.read() or b"{}")) from None
        with response:
            data: list[str] = []
            try:
                for raw in response:
                    line = raw.decode().rstrip("\r\n")
                    if line.startswith("data:"):
                        data.append(line[5:].lstrip())
                    elif not line and data:
                        yield json.loads("\n".join(data))
                        data = []
            except ConnectionError as exc:  # Pier went away mid-stream
                raise Unreachable(request.full_url, exc) from None

    # ---- the audit feed -----------------------------------------------------------------------

    def events(self, ref: str | None = None, before: int | None = None, limit: int | None = None) -> dict[str, Any]:
        """One page of audit events, newest first: `events` and `next_before`, the cursor for older
        ones. Without `ref`, every model API's (admins only)."""
        params = urllib.parse.urlencode(
            {k: v for k, v in {"model": ref, "before": before, "limit": limit}.items() if v is not None}
        )
        return dict(self.api("GET", f"/events?{params}"))

    def follow_events(
        self, ref: str | None = None, last_event_id: int | None = None, timeout: float | None = None
    ) -> Iterator[dict[str, Any]]:
        """Audit events as they happen, oldest first: those after `last_event_id` when given, then
        each new one. Ends when the connection does."""
        return self._follow("/events", {"model": ref, "last_event_id": last_event_id}, timeout)

    # ---- access tokens and labels -------------------------------------------------------------

    def create_token(self, ref: str, name: str) -> dict[str, Any]:
        """A new access token; its secret is in `token`, shown this once."""
        return dict(self.api("POST", f"/models/{ref}/tokens", {"name": name}))

    def tokens(self, ref: str) -> list[dict[str, Any]]:
        return list(self.api("GET", f"/models/{ref}/tokens"))

    def revoke_token(self, ref: str, token_id: str) -> None:
        self.api("DELETE", f"/models/{ref}/tokens/{token_id}")

    def promote(self, ref: str, version: int, label: str = "prod") -> dict[str, Any]:
        """Point `label` at `version` (routing mode advanced); the switch is atomic at every gateway."""
        return dict(self.api("PUT", f"/models/{ref}/labels/{label}", {"version": version}))

    def labels(self, ref: str) -> list[dict[str, Any]]:
        return list(self.api("GET", f"/models/{ref}/labels"))

    # ---- users, organizations, sharing --------------------------------------------------------

    def me(self) -> dict[str, Any]:
        return dict(self.api("GET", "/me"))

    def create_user(self, name: str, email: str) -> dict[str, Any]:
        """A new user (admin only); their first API key is in `key`, shown this once."""
        return dict(self.api("POST", "/users", {"name": name, "email": email}))

    def users(self) -> list[dict[str, Any]]:
        return list(self.api("GET", "/users"))

    def set_disabled(self, name: str, disabled: bool) -> dict[str, Any]:
        return dict(self.api("PATCH", f"/users/{name}", {"disabled": disabled}))

    def create_key(self, name: str) -> dict[str, Any]:
        return dict(self.api("POST", "/me/keys", {"name": name}))

    def keys(self) -> list[dict[str, Any]]:
        return list(self.api("GET", "/me/keys"))

    def delete_key(self, key_id: str) -> None:
        self.api("DELETE", f"/me/keys/{key_id}")

    def set_password(self, password: str) -> None:
        """The caller's password for the dashboard's sign-in (argon2id-hashed by the api)."""
        self.api("PUT", "/me/password", {"password": password})

    def create_org(self, name: str) -> dict[str, Any]:
        return dict(self.api("POST", "/orgs", {"name": name}))

    def orgs(self) -> list[dict[str, Any]]:
        return list(self.api("GET", "/orgs"))

    def add_member(self, org: str, user: str) -> dict[str, Any]:
        return dict(self.api("PUT", f"/orgs/{org}/members/{user}"))

    def remove_member(self, org: str, user: str) -> None:
        self.api("DELETE", f"/orgs/{org}/members/{user}")

    def share(self, ref: str, principal: str, role: str) -> dict[str, Any]:
        """Give a user, or an organization as `org:NAME`, the viewer or editor role."""
        return dict(self.api("PUT", f"/models/{ref}/collaborators/{principal}", {"role": role}))

    def collaborators(self, ref: str) -> list[dict[str, Any]]:
        return list(self.api("GET", f"/models/{ref}/collaborators"))

    def unshare(self, ref: str, principal: str) -> None:
        self.api("DELETE", f"/models/{ref}/collaborators/{principal}")

    def transfer(self, ref: str, owner: str) -> dict[str, Any]:
        return dict(self.api("POST", f"/models/{ref}/transfer", {"owner": owner}))

    # ---- calling a model API -----------------------------------------------------------------

    def call(
        self,
        ref: str,
        data: dict[str, Any] | None = None,
        parameters: list[Any] | None = None,
        label: str | None = None,
        token: str | None = None,
    ) -> dict[str, Any]:
        """Call `/model` Domino-style; returns the whole envelope (`result`, `request_id`, `release`, ...)."""
        payload = {"data": data} if parameters is None else {"parameters": parameters}
        where = f"labels/{label}" if label else "latest"
        headers = {}
        if token:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{token}:{token}".encode()).decode()
        return dict(
            self._request(
                "POST", f"{self.gateway_url}/models/{ref}/{where}/model", json.dumps(payload).encode(), headers=headers
            )
        )
