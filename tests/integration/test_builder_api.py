"""The api and the builder together, in process, on real NATS, PostgreSQL, git and uv (no scheduler
or gateway: a version that builds stays `built`). What a user notices through the API: compute
environments, harness clashes, git credentials kept secret, size limits, schedules firing once per
slot, and images of terminated model APIs collected."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import gzip
import io
import os
import subprocess
import tarfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp.test_utils import TestServer
from nats.aio.msg import Msg

from pier import bus, db, events, outbox
from pier.artifacts import Store
from pier.config import Settings
from pier.events import LogLine, StartBuild
from pier.spec import Entrypoint
from pier.tasks import cancel_and_wait
from services.api import app as api_app
from services.api import auth, images, schedules
from services.api.__main__ import EVENT_TYPES, MIGRATIONS
from services.api.http import Context
from services.api.lifecycle import CHANNEL, Lifecycle
from services.builder.worker import Builder
from tests.support import until

TOKEN = "pier_builder_api_token"
CODE = {"file": "predict.py", "function": "predict"}
ENTRY = {**CODE, "access": "unrestricted"}
BUILD_WITHIN = 180.0


def tarball(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in files.items():
            data = content.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@dataclass
class Api:
    session: aiohttp.ClientSession
    settings: Settings
    pool: Any
    builder: Builder
    wire: list[bytes] = field(default_factory=list)  # every message published on NATS, raw
    logs: dict[str, list[str]] = field(default_factory=dict)  # build log lines by model id

    async def call(self, method: str, path: str, payload: Any = None, status: int = 200) -> Any:
        async with self.session.request(method, "/v1" + path, json=payload) as resp:
            body = await resp.read()
            self.wire.append(body)  # responses are searched for secrets too
            assert resp.status == status, body
            return msgspec.json.decode(body) if body else None

    async def upload(self, files: dict[str, str]) -> str:
        async with self.session.post(
            "/v1/sources", data=tarball(files), headers={"Content-Type": "application/gzip"}
        ) as resp:
            assert resp.status == 201, await resp.text()
            return str((await resp.json())["digest"])

    async def deploy(self, name: str, files: dict[str, str], **spec: Any) -> dict[str, Any]:
        model: dict[str, Any] = await self.call(
            "POST", "/models", {"name": name, "source": await self.upload(files), **ENTRY, **spec}, 201
        )
        return model

    async def settled(self, name: str, number: int = 1) -> dict[str, Any]:
        """The version once its build is over (built or failed)."""

        async def done() -> dict[str, Any] | None:
            for v in await self.call("GET", f"/models/{name}/versions"):
                if v["number"] == number and v["state"] in ("built", "failed"):
                    return dict(v)
            return None

        version: dict[str, Any] = await until(done, within=BUILD_WITHIN)
        return version


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, git_schemes="https,ssh,file")


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    async with bus.connect(settings, "api") as b:
        pool = await db.create_pool(settings, "api")
        await db.migrate(pool, MIGRATIONS)
        await auth.ensure_admin(pool, TOKEN)
        lifecycle = Lifecycle(pool, b, settings)
        server = TestServer(api_app.build(Context(pool, b, lifecycle, settings)))
        await server.start_server()
        builder = Builder(b, settings)
        wire: list[bytes] = []
        logs: dict[str, list[str]] = {}

        async def on_any(msg: Msg) -> None:
            wire.append(msg.subject.encode() + b" " + msg.data)

        async def on_log(msg: Msg) -> None:
            logs.setdefault(msg.subject.split(".")[2], []).append(msgspec.json.decode(msg.data, type=LogLine).line)

        await b.nc.subscribe(">", cb=on_any)
        await b.js.subscribe(f"{events.LOGS_PREFIX}.>", cb=on_log, ordered_consumer=True)
        tasks = [
            asyncio.create_task(outbox.Relay(pool, b, CHANNEL).run()),
            asyncio.create_task(b.consume(EVENT_TYPES, lifecycle.handle, durable="api")),
            asyncio.create_task(b.consume([StartBuild], builder.handle, durable="builder", concurrency=2)),
        ]
        try:
            async with aiohttp.ClientSession(
                base_url=str(server.make_url("/")), headers={"Authorization": f"Bearer {TOKEN}"}
            ) as session:
                yield Api(session, settings, pool, builder, wire, logs)
        finally:
            for task in tasks:
                await cancel_and_wait([task])
            await server.close()
            await db.close_pool(pool)


async def test_a_compute_environment_is_listed_and_its_packages_reach_the_build(api: Api) -> None:
    created = await api.call(
        "POST", "/environments", {"name": "with-six", "packages": ["six==1.16.0"], "description": "six"}, 201
    )
    assert created["packages"] == ["six==1.16.0"]
    assert [e["name"] for e in await api.call("GET", "/environments")] == ["with-six"]
    bad = await api.call("POST", "/environments", {"name": "bad", "packages": ["six >>> 1"]}, 400)
    assert bad["errors"][0]["field"] == "packages[0]"

    uses_six = {"predict.py": "import six\n\ndef predict():\n    return six.PY3\n"}
    await api.deploy("on-base", uses_six, environment="with-six")
    await api.deploy("no-base", uses_six)
    await api.deploy("plain", {"predict.py": "def predict():\n    return 1\n"})
    on_base, no_base, plain = [await api.settled(n) for n in ("on-base", "no-base", "plain")]

    # The import check ran inside the built environment: only the one on the base sees six.
    assert on_base["state"] == "built", on_base
    assert on_base["environment"] == "with-six" and "six==1.16.0" in on_base["packages"]
    assert no_base["state"] == "failed" and "six" in no_base["reason"]
    assert plain["state"] == "built" and not any(p.startswith("six==") for p in plain["packages"])
    store = Store(api.settings.artifacts)
    base_manifest, plain_manifest = store.manifest(on_base["image"]), store.manifest(plain["image"])
    assert base_manifest is not None and plain_manifest is not None
    assert base_manifest.env_hash != plain_manifest.env_hash
    unknown = await api.call(
        "POST", "/models", {"name": "x", "source": on_base["source"], "environment": "nope", **ENTRY}, 400
    )
    assert unknown["errors"][0]["field"] == "environment"


async def test_a_requirement_clashing_with_the_harness_fails_naming_the_package_and_both_constraints(
    api: Api,
) -> None:
    import importlib.metadata

    harness = importlib.metadata.version("msgspec")
    await api.deploy("clash", {"predict.py": "def predict():\n    return 1\n", "requirements.txt": "msgspec==0.18.0\n"})
    version = await api.settled("clash")
    assert version["state"] == "failed"
    assert "msgspec==0.18.0" in version["reason"] and f"msgspec=={harness}" in version["reason"]
    model = await api.call("GET", "/models/clash")
    assert model["state"] == "failed" and "msgspec==0.18.0" in model["reason"]


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


async def test_a_git_credential_never_appears_in_logs_responses_or_events(api: Api, tmp_path: Path) -> None:
    secret = "ghp_s3cr3tT0kenThatMustNeverLeak0123"
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "predict.py").write_text("def predict():\n    return 'private'\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "first")

    assert await api.call("POST", "/git-credentials", {"name": "deploy-token", "token": secret}, 201) == {
        "name": "deploy-token"
    }
    assert await api.call("GET", "/git-credentials") == [{"name": "deploy-token"}]
    missing = await api.call(
        "POST", "/models", {"name": "nocred", "git": f"file://{repo}", "git_credential": "other", **ENTRY}, 400
    )
    assert missing["errors"][0]["field"] == "git_credential"
    await api.call(
        "POST", "/models", {"name": "private", "git": f"file://{repo}", "git_credential": "deploy-token", **ENTRY}, 201
    )
    built = await api.settled("private")
    assert built["state"] == "built", built
    # A second version at a ref that does not exist: git's error goes to the log and the reason.
    await api.call(
        "POST",
        "/models/private/versions",
        {"git": f"file://{repo}", "ref": "no-such-ref", "git_credential": "deploy-token", **CODE},
        201,
    )
    failed = await api.settled("private", 2)
    assert failed["state"] == "failed" and "no-such-ref" in failed["reason"]
    model_id = (await api.call("GET", "/models/private"))["id"]
    await until(lambda: any(line.startswith("build failed") for line in api.logs.get(model_id, [])))

    basic = base64.b64encode(f"x-access-token:{secret}".encode()).decode()
    everything = b"\n".join(api.wire) + "\n".join(line for lines in api.logs.values() for line in lines).encode()
    assert any(line.startswith("fetched commit") for line in api.logs[model_id])
    assert secret.encode() not in everything and basic.encode() not in everything
    assert b"deploy-token" in everything  # the name travels; the secret does not


async def test_an_upload_over_the_size_limit_is_413(settings: Settings) -> None:
    small = msgspec.structs.replace(settings, max_source_bytes=1000)
    async with bus.connect(small, "api") as b:
        pool = await db.create_pool(small, "api")
        await db.migrate(pool, MIGRATIONS)
        await auth.ensure_admin(pool, TOKEN)
        server = TestServer(api_app.build(Context(pool, b, Lifecycle(pool, b, small), small)))
        await server.start_server()
        try:
            async with aiohttp.ClientSession(
                base_url=str(server.make_url("/")), headers={"Authorization": f"Bearer {TOKEN}"}
            ) as session:
                big = gzip.compress(bytes(range(256)) * 64, compresslevel=0)
                async with session.post("/v1/sources", data=big, headers={"Content-Type": "application/gzip"}) as r:
                    assert r.status == 413
                # Small packed, big unpacked: refused too, before anything is stored.
                bomb = tarball({"zeros.txt": "0" * 100_000})
                assert len(bomb) < 1000
                async with session.post("/v1/sources", data=bomb, headers={"Content-Type": "application/gzip"}) as r:
                    assert r.status == 413 and "unpacked" in (await r.json())["detail"]
                small_enough = tarball({"predict.py": "def predict():\n    return 1\n"})
                async with session.post(
                    "/v1/sources", data=small_enough, headers={"Content-Type": "application/gzip"}
                ) as r:
                    assert r.status == 201
            assert len(list((small.artifacts / "sources").iterdir())) == 1  # nothing of the refused one
        finally:
            await server.close()
            await db.close_pool(pool)


def _bad_tarball(member: tarfile.TarInfo) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        data = b"def predict():\n    return 1\n"
        good = tarfile.TarInfo("predict.py")
        good.size = len(data)
        tar.addfile(good, io.BytesIO(data))
        tar.addfile(member)
    return buffer.getvalue()


def _entry(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


@pytest.mark.parametrize(
    ("member", "problem"),
    [
        (_entry("/etc/cron.d/evil", tarfile.REGTYPE), "absolute path"),
        (_entry("a/../../evil", tarfile.REGTYPE), "outside the source"),
        (_entry("escape", tarfile.SYMTYPE, "../../etc/passwd"), "links outside"),
        (_entry("disk", tarfile.BLKTYPE), "device file"),
        (_entry("pipe", tarfile.FIFOTYPE), "FIFO"),
    ],
    ids=["absolute", "dotdot", "link-out", "device", "fifo"],
)
async def test_an_upload_with_an_unsafe_entry_is_400_naming_it_and_nothing_is_stored(
    api: Api, member: tarfile.TarInfo, problem: str
) -> None:
    async with api.session.post(
        "/v1/sources?name=bad", data=_bad_tarball(member), headers={"Content-Type": "application/gzip"}
    ) as resp:
        assert resp.status == 400
        detail = (await resp.json())["detail"]
    assert repr(member.name) in detail and problem in detail
    sources_dir = api.settings.artifacts / "sources"
    assert not sources_dir.exists() or list(sources_dir.iterdir()) == []
    assert await api.call("GET", "/sources") == []


async def test_a_cron_slot_makes_exactly_one_run_even_when_fired_twice_at_once(api: Api) -> None:
    await api.deploy("nightly", {"predict.py": "def predict():\n    return 1\n"})
    # Once a year, so the api's own firing loop (on the real clock) never claims a slot here.
    schedule = await api.call("POST", "/models/nightly/schedules", {"cron": "0 3 1 1 *", "command": "true"}, 201)
    created = dt.datetime.fromisoformat(schedule["created_at"])
    slot = dt.datetime(created.year + 1, 1, 1, 3, 0, tzinfo=dt.UTC)

    fired = await asyncio.gather(*(schedules.fire_due(api.pool, now=slot + dt.timedelta(seconds=30)) for _ in "ab"))
    assert sum(fired) == 1
    assert await schedules.fire_due(api.pool, now=slot + dt.timedelta(minutes=5)) == 0
    runs = await api.call("GET", f"/models/nightly/schedules/{schedule['id']}/runs")
    assert [r["slot"] for r in runs] == [slot.isoformat()]
    # Down across two slots: only the latest one runs, once.
    later = dt.datetime(created.year + 3, 1, 1, 3, 0, tzinfo=dt.UTC)
    assert await schedules.fire_due(api.pool, now=later + dt.timedelta(hours=1)) == 1
    runs = await api.call("GET", f"/models/nightly/schedules/{schedule['id']}/runs")
    assert sorted(r["slot"] for r in runs) == [slot.isoformat(), later.isoformat()]


async def test_images_of_terminated_model_apis_are_collected_unless_still_used(api: Api) -> None:
    shared = {"predict.py": "def predict():\n    return 'shared'\n"}
    await api.deploy("first", shared)
    await api.deploy("second", shared)
    await api.deploy("other", {"predict.py": "def predict():\n    return 'other'\n"})
    first, second, other = [await api.settled(n) for n in ("first", "second", "other")]
    assert first["image"] == second["image"] != other["image"]
    store = Store(api.settings.artifacts)

    await api.call("DELETE", "/models/first", status=202)
    assert await images.collect(api.pool, store, recently_used=0) == []  # "second" still uses the image
    assert store.manifest(first["image"]) is not None

    await api.call("DELETE", "/models/second", status=202)
    assert await images.collect(api.pool, store) == []  # built moments ago: a build may be reusing it
    assert await images.collect(api.pool, store, recently_used=0) == [first["image"]]
    assert not store.image(first["image"]).exists()
    assert store.manifest(other["image"]) is not None
    assert await images.collect(api.pool, store, recently_used=0) == []


async def test_an_image_a_build_has_just_reused_survives_a_sweep_before_its_version_records_it(api: Api) -> None:
    code = {"predict.py": "def predict():\n    return 'again'\n"}
    await api.deploy("gone", code)
    gone = await api.settled("gone")
    await api.call("DELETE", "/models/gone", status=202)
    store = Store(api.settings.artifacts)
    image = store.image(gone["image"])
    long_ago = image.stat().st_mtime - 2 * images.RECENTLY_USED
    os.utime(image, (long_ago, long_ago))

    # A build of the same code for a version the api has not recorded an image for (here: one it
    # does not know at all, as if its BuildSucceeded were still on the way) reuses the image.
    cmd = StartBuild(model_id=uuid.uuid4().hex, version=1, source=gone["source"], entrypoint=Entrypoint(**CODE))
    await api.builder.handle(cmd)
    reused = f"image {gone['image'][:12]} already built"
    await until(lambda: reused in api.logs.get(cmd.model_id, []))

    assert await images.collect(api.pool, store) == []
    assert store.manifest(gone["image"]) is not None
    os.utime(image, (long_ago, long_ago))
    assert await images.collect(api.pool, store) == [gone["image"]]
    assert not image.exists()
