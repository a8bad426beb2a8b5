"""The management API's side of scheduling: create-time GPU fields, the inventory, stop / restart /
terminate and their 409s. Real PostgreSQL and NATS; the scheduler's inventory record is published
as the scheduler publishes it."""

from __future__ import annotations

from typing import Any

import aiohttp
import msgspec

from pier import bus, db
from pier.config import Settings
from pier.events import GPUS_BUCKET, GPUS_KEY, GpuInventory, GpuType, ModelStopped, StopModel
from services.api import control
from services.api.lifecycle import Lifecycle
from tests.integration.test_api import _source, api
from tests.support import until

__all__ = ["api"]

Api = tuple[aiohttp.ClientSession, Settings]


async def publish_inventory(settings: Settings) -> None:
    async with bus.connect(settings, "test-inventory") as b:
        kv = await b.js.create_key_value(bucket=GPUS_BUCKET, history=1)
        record = GpuInventory(
            simulated=True,
            types={"a100": GpuType(total=2, free=2, requested=0, waiting=0, simulated=True, nodes={"local": 2})},
        )
        await kv.put(GPUS_KEY, msgspec.json.encode(record))


def spec(settings: Settings, name: str, **extra: object) -> dict[str, object]:
    base = {"name": name, "source": _source(settings), "file": "p.py", "function": "f", "access": "unrestricted"}
    return {**base, **extra}


async def test_gpus_are_listed_as_simulated_and_an_unknown_type_is_400_listing_types(api: Api) -> None:
    session, settings = api
    await publish_inventory(settings)
    async with session.get("/v1/gpus") as r:
        body = await r.json()
        assert r.status == 200 and body["simulated"] and body["types"]["a100"]["total"] == 2
    async with session.post("/v1/models", json=spec(settings, "m", gpu_type="h100", gpu_count=1)) as r:
        body = await r.json()
        assert r.status == 400 and body["errors"][0]["field"] == "gpu_type" and "a100" in body["detail"]
    async with session.post("/v1/models", json=spec(settings, "m", gpu_type="a100", gpu_count=5)) as r:
        assert r.status == 400 and (await r.json())["errors"][0]["field"] == "gpu_count"
    async with session.post("/v1/models", json=spec(settings, "m", gpu_type="a100", gpu_count=2, instances=2)) as r:
        assert r.status == 400 and (await r.json())["errors"][0]["field"] == "instances"
    async with session.post("/v1/models", json=spec(settings, "m", quota="huge")) as r:
        assert r.status == 400 and (await r.json())["errors"][0]["field"] == "quota"
    async with session.post("/v1/models", json=spec(settings, "m", disk_size="lots")) as r:
        assert r.status == 400 and (await r.json())["errors"][0]["field"] == "disk_size"
    async with session.post("/v1/models", json=spec(settings, "m", gpu_type="a100", gpu_count=1)) as r:
        body = await r.json()
        assert r.status == 201, body
        assert body["instances"] == 2 and body["gpu_type"] == "a100" and body["gpu_count"] == 1


async def test_stop_restart_terminate_and_their_conflicts(api: Api) -> None:
    session, settings = api
    async with session.post("/v1/models", json=spec(settings, "life")) as r:
        assert r.status == 201
    async with session.post("/v1/models/life/restart") as r:
        assert r.status == 409  # building: nothing to restart yet
    async with session.post("/v1/models/life/stop") as r:
        assert r.status == 202 and (await r.json())["state"] == "stopping"
    async with session.post("/v1/models/life/stop") as r:
        body = await r.json()
        assert r.status == 409 and "stopping" in body["detail"]
    async with session.delete("/v1/models/life") as r:
        assert r.status == 202 and (await r.json())["state"] == "terminated"
    async with session.get("/v1/models/life") as r:
        assert r.status == 404
    # The name is free again.
    async with session.post("/v1/models", json=spec(settings, "life")) as r:
        assert r.status == 201


async def test_resources_cannot_change_after_create(api: Api) -> None:
    session, settings = api
    async with session.post("/v1/models", json=spec(settings, "fixed")) as r:
        assert r.status == 201
    for field, value in (("gpu_count", 1), ("instances", 3), ("quota", "small"), ("disk_size", "1g")):
        async with session.patch("/v1/models/fixed", json={field: value}) as r:
            body = await r.json()
            assert r.status == 409, body
            assert body["errors"] == [{"field": field, "problem": "cannot change after create"}]
            assert "create a new model API" in body["detail"]
    async with session.get("/v1/models/fixed") as r:
        assert (await r.json())["instances"] == 2  # unchanged
    async with session.patch("/v1/models/fixed", json={"request_timeout": 30}) as r:
        assert r.status == 200, await r.text()


async def test_a_failed_model_api_accepts_only_terminate(api: Api) -> None:
    session, settings = api
    async with session.post("/v1/models", json=spec(settings, "broken")) as r:
        model_id = (await r.json())["id"]
    pool = await db.create_pool(settings, "api")
    try:
        await pool.execute("UPDATE models SET state = 'failed', reason = 'crashed 5 times' WHERE id = $1", model_id)
    finally:
        await db.close_pool(pool)
    for path in ("/v1/models/broken/stop", "/v1/models/broken/restart"):
        async with session.post(path) as r:
            body = await r.json()
            assert r.status == 409 and "only terminate" in body["detail"]
    async with session.delete("/v1/models/broken") as r:
        assert r.status == 202


async def test_purge_terminates_only_model_apis_stopped_longer_than_the_limit(api: Api) -> None:
    session, settings = api
    ids = {}
    for name in ("old", "recent", "busy"):
        async with session.post("/v1/models", json=spec(settings, name)) as r:
            assert r.status == 201
            ids[name] = (await r.json())["id"]
    for name in ("old", "recent"):
        async with session.post(f"/v1/models/{name}/stop") as r:
            assert r.status == 202
    async with bus.connect(settings, "test-purge") as b:
        commands: list[StopModel] = []

        async def on_stop(msg: Any) -> None:
            commands.append(msgspec.json.decode(msg.data, type=StopModel))

        await b.nc.subscribe(StopModel.subject(), cb=on_stop)
        pool = await db.create_pool(settings, "api")
        try:
            lc = Lifecycle(pool, b, settings)
            # What the scheduler reports once their instances are gone: they become stopped.
            for name in ("old", "recent"):
                await lc.handle(ModelStopped(model_id=ids[name]))
            # Stopped three days ago; and one created long ago that was never stopped.
            await pool.execute("UPDATE models SET stopped_at = now() - interval '3 days' WHERE id = $1", ids["old"])
            await pool.execute("UPDATE models SET created_at = now() - interval '30 days' WHERE id = $1", ids["busy"])

            assert await control.purge_stopped(lc, 2.0) == ["old"]
            assert await control.purge_stopped(lc, 2.0) == []  # nothing left to purge
            # A fractional limit (a few minutes) reaches the one stopped a moment ago only once it is older.
            assert await control.purge_stopped(lc, 0.01) == []
            await pool.execute("UPDATE models SET stopped_at = now() - interval '1 hour' WHERE id = $1", ids["recent"])
            assert await control.purge_stopped(lc, 0.01) == ["recent"]
        finally:
            await db.close_pool(pool)
        # The scheduler is told to remove their instances' directories.
        await until(lambda: {c.model_id for c in commands if c.purge} == {ids["old"], ids["recent"]})
    async with session.get("/v1/models/old") as r:
        assert r.status == 404
    async with session.get("/v1/models/busy") as r:
        assert r.status == 200 and (await r.json())["state"] == "building"
    async with session.post("/v1/models", json=spec(settings, "old")) as r:
        assert r.status == 201  # its name is free again
