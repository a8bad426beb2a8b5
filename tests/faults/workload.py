"""A steady workload against a running platform, tallied per phase (a fault, or the soak).

Calls at a fixed rate to two model APIs (one on a simulated GPU), a new version of a third every few
seconds (each deploy waited for, then the next), and a fourth stopped and restarted now and then,
also on a simulated GPU. Every call is classified by what its caller saw:

    200 / 503 / 504 / other   the gateway answered with that status
    refused                   no connection: nothing was accepted, the caller may retry at once
    cut                       sent, then the connection died with the gateway that held it (kill -9)
    lost                      sent, and no answer from a gateway that stayed up

What the platform did twice is read from its own records, not from this side (see `Records`).
Runs in a thread of its own with its own event loop, so pytest's loops and a fault's blocking steps
never pause it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from pier.client import ApiError, Client

HELLO = Path(__file__).parents[2] / "examples" / "hello"
CALLED = ("alpha", "beta")  # called at a fixed rate; alpha holds a simulated GPU
DEPLOYED = "gamma"  # a new version every few seconds
CYCLED = "delta"  # stopped and restarted now and then; holds a simulated GPU
GPUS = "sim:3"  # alpha and delta take one each: the third is what a double hand-out would take
CALL_TIMEOUT = 20.0  # longer than any pause a fault causes: a call over it counts as lost
# A version's states once its deploy is over; anything else after the bound is a stuck deploy.
FINISHED = frozenset({"serving", "retired", "failed"})


@dataclass
class Op:
    """One deploy, stop or restart, as a user asked for it."""

    what: str
    asked: float
    done: float | None = None
    outcome: str = ""
    version: int | None = None  # a deploy's version number, once the api has answered


@dataclass
class Tally:
    name: str
    calls: Counter[str] = field(default_factory=Counter)
    other: list[str] = field(default_factory=list)  # samples of what "other" answers said
    failures: list[tuple[float, float, str]] = field(default_factory=list)  # (sent, gave up, why)
    ops: list[Op] = field(default_factory=list)


def models_spec(source: str) -> list[dict[str, Any]]:
    common: dict[str, Any] = {"source": source, "file": "predict.py", "function": "predict", "access": "unrestricted"}
    common |= {"routing_mode": "basic", "request_timeout": 10.0, "instances": 1}
    gpu = {"gpu_type": "sim", "gpu_count": 1}
    return [
        {**common, "name": CALLED[0], **gpu},
        {**common, "name": CALLED[1]},
        {**common, "name": DEPLOYED},
        {**common, "name": CYCLED, **gpu},
    ]


def deploy_all(client: Client) -> str:
    """The four model APIs, each serving; returns the source digest later versions reuse."""
    source = client.upload_source(HELLO)
    for spec in models_spec(source):
        client.create_model(spec)
    for spec in models_spec(source):
        model = client.wait(spec["name"], 1, timeout=180)
        assert model["state"] == "running", model
    return source


class Workload:
    def __init__(self, client: Client, source: str, rate: float = 10.0, deploy_every: float = 3.0) -> None:
        self.client = client
        self.source = source
        self.rate = rate  # calls per second to each called model API
        self._code = {"source": source, "file": "predict.py", "function": "predict"}
        self.deploy_every = deploy_every
        self.cycle_every = 4 * deploy_every
        self.op_bound = 90.0  # a deploy, stop or restart not over by then is abandoned (stuck)
        self.tally = Tally("warm-up")
        self.tallies: list[Tally] = [self.tally]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="workload", daemon=True)
        self._main: asyncio.Task[None] | None = None

    # ---- control, from the test's thread ----------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._begin(), self._loop).result(timeout=10)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(BaseException):
            asyncio.run_coroutine_threadsafe(self._end(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)

    async def _begin(self) -> None:
        self._main = asyncio.create_task(self._run())

    async def _end(self) -> None:
        if self._main is not None:
            self._main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._main

    def ops_between(self, began: float, ended: float) -> list[Op]:
        """Every operation asked for by `ended` and not over before `began`: those a fault in that
        window may have hit."""
        return [
            op
            for tally in self.tallies
            for op in tally.ops
            if op.asked <= ended and (op.done is None or op.done >= began)
        ]

    def phase(self, name: str) -> Tally:
        """From now on, calls and operations count towards `name`."""
        self.tally = Tally(name)
        self.tallies.append(self.tally)
        return self.tally

    # ---- the loops --------------------------------------------------------------------------

    async def _run(self) -> None:
        # A connection per call: a connection kept alive to a gateway that was killed would turn
        # the next call into a failure that says nothing about the platform.
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        async with aiohttp.ClientSession(connector=connector) as session, asyncio.TaskGroup() as tasks:
            for name in CALLED:
                tasks.create_task(self._caller(session, name))
            tasks.create_task(self._deployer())
            tasks.create_task(self._cycler())

    async def _caller(self, session: aiohttp.ClientSession, name: str) -> None:
        url = f"{self.client.gateway_url}/models/{name}/latest/model"
        calls: set[asyncio.Task[None]] = set()
        n = 0
        began = time.monotonic()
        try:
            while True:
                n += 1
                # A fixed rate, whatever the answers take: slow answers must not slow the offer.
                await asyncio.sleep(max(0.0, began + n / self.rate - time.monotonic()))
                task = asyncio.create_task(self._call(session, url))
                calls.add(task)
                task.add_done_callback(calls.discard)
        finally:
            for task in calls:
                task.cancel()

    async def _call(self, session: aiohttp.ClientSession, url: str) -> None:
        tally, sent = self.tally, time.monotonic()
        try:
            async with session.post(url, json={"data": {"name": "soak"}}, timeout=CALL_TIMEOUT) as answer:
                body = await answer.read()
        except aiohttp.ClientConnectorError:
            tally.calls["refused"] += 1
            return
        except (aiohttp.ClientError, TimeoutError) as exc:
            tally.calls["no answer"] += 1
            tally.failures.append((sent, time.monotonic(), type(exc).__name__))
            return
        status = answer.status
        if status in (200, 503, 504):
            tally.calls[str(status)] += 1
        else:
            tally.calls["other"] += 1
            if len(tally.other) < 5:
                tally.other.append(f"{status} {body[:200]!r}")

    async def _deployer(self) -> None:
        while True:
            await asyncio.sleep(self.deploy_every)
            op = Op("deploy", time.monotonic())
            self.tally.ops.append(op)
            version = await self._ask(lambda: self.client.create_version(DEPLOYED, self._code), op)
            if version is not None:
                op.version = version
                await self._settle(op, lambda version=version: self._version_finished(version))

    async def _cycler(self) -> None:
        while True:
            for what, want in (("stop", "stopped"), ("restart", "running")):
                await asyncio.sleep(self.cycle_every)
                op = Op(what, time.monotonic())
                self.tally.ops.append(op)
                path = f"/models/{CYCLED}/{what}"
                if await self._ask(lambda path=path: self.client.api("POST", path), op) is not None:
                    await self._settle(op, lambda want=want: want if self._model_state() == want else "")

    async def _ask(self, request: Callable[[], Any], op: Op) -> Any:
        """A management call, retried while the api cannot be reached, as the CLI's user would."""
        while time.monotonic() - op.asked < self.op_bound:
            try:
                return await asyncio.to_thread(request)
            except ApiError as exc:
                if exc.status < 500:
                    op.done, op.outcome = time.monotonic(), f"refused: {exc.status} {exc}"
                    return None
            except OSError:
                pass
            await asyncio.sleep(1.0)
        return None

    async def _settle(self, op: Op, finished: Callable[[], bool | str]) -> None:
        while time.monotonic() - op.asked < self.op_bound:
            try:
                outcome = await asyncio.to_thread(finished)
            except (ApiError, OSError):
                outcome = False
            if outcome:
                op.done, op.outcome = time.monotonic(), str(outcome)
                return
            await asyncio.sleep(0.5)

    def _version_finished(self, version: int) -> str:
        model = self.client.model(DEPLOYED)
        mine = next((v for v in model["versions"] if v["number"] == version), {})
        state = str(mine.get("state", ""))
        if state == "failed":
            return f"failed: {mine.get('reason') or 'no reason given'}"
        return state if state in FINISHED else ""

    def _model_state(self) -> str:
        return str(self.client.model(CYCLED)["state"])
