"""Where a version's code comes from: an upload (by digest), a named source, or a git ref; and the
routes that upload and name sources and register git credentials.

A named source is a movable name for a content-addressed upload: a version records the digest the
name pointed at when it was created, so pushing the name again reaches a model API only through a
new version. Git credentials are kept in the artifact store (the builder reads them there, since
no command or event may carry a secret); the API only ever answers their names.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import msgspec
from aiohttp import web

from pier import git, tarballs
from pier.artifacts import Store
from pier.config import Settings
from pier.events import BaseEnvironment, GitSource
from services.api import auth, environments
from services.api.errors import Invalid, NotFound, TooLarge
from services.api.http import Context, json_response, read_body
from services.api.schemas import NAME_RE, CodeSpec, SourceOut

_CHUNK = 1 << 20


class NamedSourceOut(msgspec.Struct, kw_only=True):
    name: str
    digest: str
    size: int
    created_by: str
    updated_at: str


class CreateCredential(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An https token (with an optional user name) or an ssh deploy key: exactly one."""

    name: str
    token: str | None = None
    username: str = "x-access-token"
    ssh_key: str | None = None


class CredentialOut(msgspec.Struct, kw_only=True):
    name: str


@dataclass(frozen=True)
class CodeOrigin:
    """A version's code, resolved: what the version row records and the StartBuild carries."""

    source: str = ""  # digest; "" until a git build stores the fetched tree
    source_name: str | None = None
    git: GitSource | None = None
    environment: BaseEnvironment | None = None


def _check_name(field: str, name: str) -> None:
    if not NAME_RE.match(name):
        raise Invalid(f"{field}: {name!r} is not a valid name", [(field, "lower-case letters, digits and -")])


async def resolve(conn: asyncpg.Connection, store: Store, spec: CodeSpec, settings: Settings) -> CodeOrigin:
    """Check a deploy spec's code fields and resolve names; Invalid names the field at fault."""
    given = [f for f in ("source", "source_name", "git") if getattr(spec, f)]
    if len(given) != 1:
        problem = "give exactly one of source, source_name, git"
        raise Invalid(f"{'/'.join(given) or 'source'}: {problem}", [(given[-1] if given else "source", problem)])
    if spec.ref is not None and not spec.git:
        raise Invalid("ref: only a git source has a ref", [("ref", "needs git")])
    if spec.git_credential is not None and not spec.git:
        raise Invalid("git_credential: only a git source takes a credential", [("git_credential", "needs git")])
    environment = await environments.base_for(conn, spec.environment, spec.python_version)
    if spec.source:
        if not await asyncio.to_thread(store.source(spec.source).exists):
            raise Invalid(f"source: no uploaded source with digest {spec.source!r}", [("source", "was not uploaded")])
        return CodeOrigin(source=spec.source, environment=environment)
    if spec.source_name:
        digest = await conn.fetchval("SELECT digest FROM named_sources WHERE name = $1", spec.source_name)
        if digest is None:
            raise Invalid(
                f"source_name: no source named {spec.source_name!r}; push one with `pier sources push`",
                [("source_name", "does not exist")],
            )
        return CodeOrigin(source=digest, source_name=spec.source_name, environment=environment)
    assert spec.git is not None
    schemes = git.parse_schemes(settings.git_schemes)
    if bad_url := git.url_problem(spec.git, schemes):
        raise Invalid(f"git: {bad_url}", [("git", bad_url)])
    allowed = git.parse_networks(settings.git_allow_networks)
    if bad_host := await asyncio.to_thread(git.network_problem, spec.git, allowed):
        raise Invalid(f"git: {bad_host}", [("git", bad_host)])
    if spec.ref is not None and (bad_ref := git.ref_problem(spec.ref)):
        raise Invalid(f"ref: {bad_ref}", [("ref", bad_ref)])
    if spec.git_credential is not None:
        found = await asyncio.to_thread(git.load_credential, store.root, spec.git_credential)
        if found is None:
            raise Invalid(
                f"git_credential: no credential named {spec.git_credential!r}",
                [("git_credential", "is not registered")],
            )
    return CodeOrigin(
        git=GitSource(url=spec.git, ref=spec.ref, credential=spec.git_credential), environment=environment
    )


class Sources:
    def __init__(self, ctx: Context) -> None:
        self.pool = ctx.pool
        self.settings = ctx.settings
        self.store = Store(ctx.settings.artifacts)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/sources", self.upload),
            web.get("/v1/sources", self.list_named),
            web.get("/v1/sources/{name}", self.show_named),
            web.post("/v1/git-credentials", self.create_credential),
            web.get("/v1/git-credentials", self.list_credentials),
        ]

    async def upload(self, request: web.Request) -> web.Response:
        """The raw body is a gzip'd tarball; `?name=NAME` also points that name at it."""
        name = request.query.get("name")
        if name is not None:
            _check_name("name", name)
        if request.content_type not in ("application/gzip", "application/x-gzip", "application/octet-stream"):
            raise Invalid("Content-Type: send the source as a gzip'd tarball (application/gzip)")
        limit = self.settings.max_source_bytes
        if (request.content_length or 0) > limit:
            raise TooLarge(f"the source is over the limit of {limit} bytes (PIER_MAX_SOURCE_BYTES)")
        # Streamed to a file, never held whole in memory; checked there, then moved into the store.
        spool = await asyncio.to_thread(self.store.spool)
        try:
            digest, size = await _receive(request, spool, limit)
            try:
                await asyncio.to_thread(tarballs.check, spool, tarballs.source_limits(self.settings))
            except tarballs.UnsafeSource as exc:
                raise Invalid(f"body: {exc}", [("body", str(exc))]) from None
            except tarballs.TooBig as exc:
                raise TooLarge(str(exc)) from None
            await asyncio.to_thread(self.store.adopt_source, spool, digest)
        finally:
            await asyncio.to_thread(spool.unlink, missing_ok=True)
        if name is not None:
            async with self.pool.acquire() as conn:
                await conn.execute(
                    "INSERT INTO named_sources (name, digest, size, created_by) VALUES ($1, $2, $3, $4)"
                    " ON CONFLICT (name) DO UPDATE SET digest = $2, size = $3, created_by = $4, updated_at = now()",
                    name,
                    digest,
                    size,
                    request[auth.USER],
                )
        return json_response(SourceOut(digest=digest, size=size), status=201)

    async def list_named(self, _: web.Request) -> web.Response:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch("SELECT * FROM named_sources ORDER BY name")
        return json_response([_named(r) for r in rows])

    async def show_named(self, request: web.Request) -> web.Response:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow("SELECT * FROM named_sources WHERE name = $1", request.match_info["name"])
        if row is None:
            raise NotFound(f"no source named {request.match_info['name']!r}")
        return json_response(_named(row))

    async def create_credential(self, request: web.Request) -> web.Response:
        spec = await read_body(request, CreateCredential)
        _check_name("name", spec.name)
        if (spec.token is None) == (spec.ssh_key is None):
            problem = "give exactly one of token, ssh_key"
            raise Invalid(f"token: {problem}", [("token", problem)])
        credential = git.Credential(name=spec.name, token=spec.token, username=spec.username, ssh_key=spec.ssh_key)
        await asyncio.to_thread(git.save_credential, self.store.root, credential)
        return json_response(CredentialOut(name=spec.name), status=201)

    async def list_credentials(self, _: web.Request) -> web.Response:
        names = await asyncio.to_thread(git.credential_names, self.store.root)
        return json_response([CredentialOut(name=n) for n in names])


async def _receive(request: web.Request, path: Path, limit: int) -> tuple[str, int]:
    """Write the body to `path` in chunks, stopping past `limit` bytes; its sha256 and size."""
    digest, size = hashlib.sha256(), 0
    with await asyncio.to_thread(path.open, "wb") as handle:
        async for chunk in request.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise TooLarge(f"the source is over the limit of {limit} bytes (PIER_MAX_SOURCE_BYTES)")
            digest.update(chunk)
            await asyncio.to_thread(handle.write, chunk)
    return digest.hexdigest(), size


def _named(row: asyncpg.Record) -> NamedSourceOut:
    return NamedSourceOut(
        name=row["name"],
        digest=row["digest"],
        size=row["size"],
        created_by=row["created_by"],
        updated_at=row["updated_at"].isoformat(),
    )


def routes(ctx: Context) -> list[web.RouteDef]:
    return Sources(ctx).routes()
