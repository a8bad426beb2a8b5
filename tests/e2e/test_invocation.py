"""Calling a model API through the gateway: Domino request formats, route templates, and the harness.

Each test deploys several model APIs on one platform (a platform start costs more than a deploy).
"""

from __future__ import annotations

import asyncio
import json
import textwrap
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest

from infra.supervisor import Platform
from pier import events
from pier.client import Client
from pier.config import Settings
from tests.e2e.conftest import EXAMPLES, TOKEN, pier, running_platform
from tests.support import instance_headers, until


def _client(platform: Platform) -> Client:
    s = platform.settings
    return Client(api_url=s.api_url, gateway_url=s.gateway_url, token=TOKEN)


class Answer(msgspec.Struct):
    status: int
    body: Any
    headers: dict[str, str]


def _http(url: str, method: str = "POST", body: bytes | None = None, headers: dict[str, str] | None = None) -> Answer:
    """One raw HTTP exchange, whatever the status: what curl would show."""
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    request = urllib.request.Request(url, data=body, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            raw, status, got = response.read(), response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        raw, status, got = exc.read(), exc.code, dict(exc.headers)
    return Answer(status, json.loads(raw) if raw else None, got)


async def _call(url: str, payload: Any = None, **kw: Any) -> Answer:
    body = kw.pop("body", None)
    if payload is not None:
        body = json.dumps(payload).encode()
    return await asyncio.to_thread(_http, url, body=body, **kw)


def _write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text))
    return folder


async def _deploy_all(client: Client, specs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Create every model API at once (their builds overlap), then wait until each serves version 1."""
    for name, spec in specs.items():
        code = spec.pop("path")
        digest = await asyncio.to_thread(client.upload_source, code)
        spec.setdefault("access", "unrestricted")
        spec.setdefault("instances", 1)  # one instance: a test can tell where each call ran
        spec.setdefault("file", "predict.py")
        spec.setdefault("function", "predict")
        await asyncio.to_thread(client.create_model, {"name": name, "source": digest, **spec})
    models = {}
    for name in specs:
        model = await asyncio.to_thread(client.wait, name, 1, 180)
        assert model["state"] == "running", model
        models[name] = model
    return models


def _instance_log(platform: Platform, model: dict[str, Any]) -> str:
    """The scheduler's log files of every instance the model API has now, one after the other."""
    now = _client(platform).model(model["id"])
    root = platform.settings.home / "instances"
    return "".join((root / i["instance_id"] / "instance.log").read_text() for i in now["running_instances"])


async def test_domino_formats_map_json_types_and_return_the_envelope(platform: Platform, tmp_path: Path) -> None:
    client = _client(platform)
    echo = _write(
        tmp_path / "echo",
        {
            "predict.py": """
                import os
                from pathlib import Path

                def predict(**values):
                    return {name: [type(v).__name__, v] for name, v in values.items()}

                def where():
                    return {"cwd": os.getcwd(), "env": os.environ.get("PIER_WORKING_DIR"),
                            "asset": Path("asset.txt").read_text()}
            """,
            "asset.txt": "read by a relative path",
            "later.py": """
                import asyncio

                async def predict(n):
                    await asyncio.sleep(0)
                    return {"awaited": n * 2}
            """,
        },
    )
    models = await _deploy_all(
        client,
        {
            "named": {"path": EXAMPLES / "named_parameters"},
            "dict": {"path": EXAMPLES / "dict_argument"},
            "kwargs": {"path": EXAMPLES / "kwargs"},
            "echo": {"path": echo},
            "where": {"path": echo, "function": "where"},
            "later": {"path": echo, "file": "later.py"},
        },
    )

    by_name = client.predict("named", data={"x": 1, "y": 2, "z": 3})
    by_position = client.predict("named", parameters=[1, 2, 3])
    assert by_name["result"] == by_position["result"] == {"sum": 6, "product": 6}
    assert client.predict("dict", parameters=[{"x": 2, "y": 4, "w": 1}])["result"] == {"score": 2.0, "ignored": ["w"]}
    assert client.predict("kwargs", data={"x": 1, "y": 2, "z": 3})["result"] == {
        "x": 1,
        "others": {"y": 2, "z": 3},
        "total": 6,
    }

    # JSON -> Python exactly as Domino documents it, and back unchanged.
    sent = {"o": {"a": [1]}, "a": [1, "b"], "s": "text", "i": 12345678901234567890, "r": 2.5, "t": True, "n": None}
    typed = client.predict("echo", data=sent)["result"]
    assert {k: v[0] for k, v in typed.items()} == {
        "o": "dict", "a": "list", "s": "str", "i": "int", "r": "float", "t": "bool", "n": "NoneType"
    }  # fmt: skip
    assert {k: v[1] for k, v in typed.items()} == sent
    assert client.predict("echo", data={"r": 1.0})["result"]["r"] == ["float", 1.0]

    # The envelope: result, request_id, model_time_in_ms and the release that answered.
    envelope = by_name
    version = models["named"]["versions"][0]
    assert envelope["release"] == {"model_version": version["id"], "model_version_number": 1}
    assert envelope["request_id"] and envelope["model_time_in_ms"] >= 0
    answer = await _call(
        f"{platform.settings.gateway_url}/models/named/latest/model", {"data": {"x": 1, "y": 1}},
        headers={"X-Request-Id": "mine-1"},
    )  # fmt: skip
    assert answer.status == 200 and answer.body["request_id"] == "mine-1"

    # What Domino's own example sends: Basic auth with the token as user name and password.
    assert client.predict("named", data={"x": 1, "y": 1}, token="some-token")["result"]["sum"] == 2
    bearer = await _call(
        f"{platform.settings.gateway_url}/models/named/latest/model", {"parameters": [1, 1]},
        headers={"Authorization": "Bearer some-token"},
    )  # fmt: skip
    assert bearer.status == 200, bearer.body

    # The working directory is the model's code, and PIER_WORKING_DIR names it.
    where = client.predict("where", data={})["result"]
    assert where["cwd"] == where["env"] and where["asset"] == "read by a relative path"
    assert (Path(where["cwd"]) / "predict.py").is_file()

    assert client.predict("later", data={"n": 21})["result"] == {"awaited": 42}  # an async function, awaited
    assert client.predict(models["named"]["id"], parameters=[1, 1])["result"]["sum"] == 2


async def _log_lines(settings: Settings, model_id: str, want: str) -> list[str]:
    """The model's instance log lines from the bus (PIER_LOGS), once one of them contains `want`."""
    nc = await nats.connect(settings.nats_url)
    try:
        js = nc.jetstream()
        lines: list[str] = []

        async def keep(msg: Any) -> None:
            lines.extend(msgspec.json.decode(msg.data, type=events.LogBatch).lines)

        sub = await js.subscribe(events.logs_subject(model_id, "instance"), cb=keep, ordered_consumer=True)
        await until(lambda: any(want in line for line in lines), within=20)
        await sub.unsubscribe()
        return lines
    finally:
        await nc.close()


async def test_call_errors_answer_with_their_status_and_the_instance_keeps_serving(
    platform: Platform, tmp_path: Path
) -> None:
    client = _client(platform)
    faulty = _write(
        tmp_path / "faulty",
        {
            "predict.py": """
                import time

                class Prediction:
                    pass

                def predict(kind, seconds=0):
                    if kind == "raise":
                        raise ValueError("no such kind: " + kind)
                    if kind == "object":
                        return {"p": Prediction()}
                    time.sleep(seconds)
                    return "fine"
            """
        },
    )
    models = await _deploy_all(
        client,
        {
            "faulty": {"path": faulty, "request_timeout": 1.0},
            "named": {"path": EXAMPLES / "named_parameters"},
        },
    )
    url = f"{platform.settings.gateway_url}/models/faulty/latest/model"
    named = f"{platform.settings.gateway_url}/models/named/latest/model"

    raised = await _call(url, {"data": {"kind": "raise"}}, headers={"X-Request-Id": "boom-1"})
    assert raised.status == 500
    assert raised.body["error"] == {"type": "ValueError", "message": "no such kind: raise"}
    assert raised.body["request_id"] == "boom-1"
    assert client.predict("faulty", data={"kind": "ok"})["result"] == "fine"  # still serving
    log = _instance_log(platform, models["faulty"])
    assert "Traceback (most recent call last)" in log and "ValueError: no such kind: raise" in log
    assert "request boom-1" in log
    shipped = await _log_lines(platform.settings, models["faulty"]["id"], "ValueError: no such kind: raise")
    assert any("Traceback" in line for line in shipped)

    unserialisable = await _call(url, {"data": {"kind": "object"}})
    assert unserialisable.status == 500
    assert unserialisable.body["error"]["type"] == "ResultNotSerializable"
    assert "predict.Prediction" in unserialisable.body["error"]["message"]

    malformed = await _call(url, body=b'{"data": {"kind": ')
    assert malformed.status == 400 and malformed.body["error"]["type"] == "MalformedJSON"
    neither = await _call(url, {"kind": "ok"})
    assert neither.status == 400 and '"data"' in neither.body["error"]["message"]

    missing = await _call(named, {"data": {"z": 1}})
    assert missing.status == 400 and missing.body["error"]["type"] == "BadArguments"
    assert {e["field"] for e in missing.body["error"]["errors"]} == {"x", "y"}
    assert "x is required" in missing.body["error"]["message"] and "y is required" in missing.body["error"]["message"]
    unexpected = await _call(named, {"data": {"x": 1, "y": 2, "w": 3, "v": 4}})
    assert unexpected.status == 400
    assert {e["field"] for e in unexpected.body["error"]["errors"]} == {"w", "v"}
    too_many = await _call(named, {"parameters": [1, 2, 3, 4]})
    assert too_many.status == 400 and "4 were given" in too_many.body["error"]["message"]

    slow = await _call(url, {"data": {"kind": "sleep", "seconds": 5}})
    assert slow.status == 504 and slow.body["error"]["type"] == "Timeout"

    limit = platform.settings.max_body_bytes
    big = await _call(named, body=b'{"data": {"x": "' + b"a" * limit + b'"}}')
    assert big.status == 413 and big.body["error"]["type"] == "TooLarge"

    # Through all of that, the instances kept answering.
    assert client.predict("named", parameters=[1, 2, 3])["result"]["sum"] == 6
    assert [i["state"] for i in client.model("faulty")["running_instances"]] == ["ready"]  # never restarted


async def test_routes_check_templates_at_the_gateway_and_pass_arguments(platform: Platform) -> None:
    routes = EXAMPLES / "routes"
    # Routes and, with --file, the Domino /model endpoint beside them.
    done = pier(
        platform, "deploy", str(routes), "--name", "routes", "--routes", str(routes / "routes.yaml"), "--unrestricted",
        "--instances", "1", "--file", "predict.py",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    client = _client(platform)
    model = client.model("routes")
    base = f"{platform.settings.gateway_url}/models/routes/latest"

    keyword = await _call(f"{base}/predict", {"y": 1, "x": 2})
    assert keyword.status == 200 and keyword.body["result"] == {"value": 5}
    assert keyword.body["release"]["model_version_number"] == 1
    defaulted = await _call(f"{base}/predict", {"x": 2})
    assert defaulted.body["result"] == {"value": 4}
    positional = await _call(f"{base}/classify", {"threshold": 0.3, "text": "a great day"})
    assert positional.status == 200 and positional.body["result"] == {"positive": True, "share": 1 / 3}
    query = await _call(f"{base}/stats?top=1", method="GET")
    assert query.status == 200 and len(query.body["result"]["top"]) == 1
    # Routes in different files share the instance's loaded modules: text.py sees predict.py's state.
    domino = client.predict("routes", data={"x": 1})
    assert domino["result"] == {"value": 2}
    assert (await _call(f"{base}/stats", method="GET")).body["result"]["calls"] == 3
    assert (await _call(f"{base}/ping", method="GET")).status == 200

    # Every mismatch is named, and the request never reaches an instance.
    wrong = await _call(f"{base}/classify", {"threshold": "high", "extra": 1}, headers={"X-Request-Id": "bad-1"})
    assert wrong.status == 400 and wrong.body["error"]["type"] == "BadRequest"
    assert {(e["field"], e["problem"]) for e in wrong.body["error"]["errors"]} == {
        ("extra", "is not a parameter of this route"),
        ("threshold", "must be of type number, got string"),
        ("text", "is required"),
    }
    wrong_query = await _call(f"{base}/stats?top=many&other=1", method="GET", headers={"X-Request-Id": "bad-2"})
    assert wrong_query.status == 400
    assert {e["field"] for e in wrong_query.body["error"]["errors"]} == {"top", "other"}
    not_json = await _call(f"{base}/predict", body=b"x=1", headers={"X-Request-Id": "bad-3"})
    assert not_json.status == 400 and not_json.body["error"]["type"] == "MalformedJSON"
    good = await _call(f"{base}/predict", {"x": 0}, headers={"X-Request-Id": "good-1"})
    assert good.status == 200
    log = await until(lambda: "request good-1" in _instance_log(platform, model) and _instance_log(platform, model))
    assert not any(f"request bad-{n}" in log for n in (1, 2, 3))

    assert (await _call(f"{base}/stats", {"top": 1})).status == 405
    assert (await _call(f"{base}/nowhere", {})).status == 404


@pytest.fixture
async def two_worker_platform(settings: Settings) -> AsyncIterator[Platform]:
    """The `platform` fixture's platform, with a default of two workers per instance (PIER_DEFAULT_WORKERS=2)."""
    async with running_platform(msgspec.structs.replace(settings, default_workers=2)) as running:
        yield running


async def test_workers_run_calls_in_parallel_and_slow_calls_never_block_ping(
    two_worker_platform: Platform, tmp_path: Path
) -> None:
    platform = two_worker_platform
    client = _client(platform)
    meeting = tmp_path / "meeting"
    meeting.mkdir()
    meeting.chmod(0o777)  # the instances leave their markers here, as users of their own when we are root
    code = _write(
        tmp_path / "meet",
        {
            "predict.py": f"""
                import os
                import time
                from pathlib import Path

                LOADED_BY = os.getpid()  # module-level code runs once, before the workers fork
                ROOM = Path({str(meeting)!r})

                def predict(round, me, other):
                    # The other call's marker shows up while this one waits only if both run at once.
                    (ROOM / f"{{round}}-{{me}}").touch()
                    deadline = time.monotonic() + 3
                    while time.monotonic() < deadline and not (ROOM / f"{{round}}-{{other}}").exists():
                        time.sleep(0.01)
                    met = (ROOM / f"{{round}}-{{other}}").exists()
                    return {{"met": met, "pid": os.getpid(), "loaded_by": LOADED_BY}}

                def hold(key):
                    (ROOM / f"{{key}}.started").touch()
                    deadline = time.monotonic() + 30
                    while time.monotonic() < deadline and not (ROOM / f"{{key}}.release").exists():
                        time.sleep(0.01)
                    return "released"

                def healthy():
                    return not (ROOM / "sick").exists()
            """
        },
    )
    models = await _deploy_all(
        client,
        {
            "parallel": {"path": code},  # no workers given: the platform default, 2
            "serial": {"path": code, "workers": 1},
            "holder": {
                "path": code,
                "function": "hold",
                "workers": 1,
                "health_function": "healthy",
                # Short probes, so the model API's /ping follows a flip of health within seconds.
                "period": 0.5,
                "failure_threshold": 10,
                "timeout": 1.0,
                "request_timeout": 4.0,
            },
        },
    )
    assert models["parallel"]["workers"] == 2 and models["serial"]["workers"] == 1
    gateway = platform.settings.gateway_url

    async def meet(name: str, round: str) -> list[Answer]:
        calls = [
            _call(f"{gateway}/models/{name}/latest/model", {"data": {"round": round, "me": me, "other": other}})
            for me, other in (("a", "b"), ("b", "a"))
        ]
        return list(await asyncio.gather(*calls))

    both = await meet("parallel", "p")
    assert [a.status for a in both] == [200, 200]
    assert [a.body["result"]["met"] for a in both] == [True, True]
    # Two processes, both forked from the one that imported the code: true parallelism for Python.
    pids = {a.body["result"]["pid"] for a in both}
    assert len(pids) == 2 and {a.body["result"]["loaded_by"] for a in both}.isdisjoint(pids)

    # One worker: the first call waits out its deadline alone; the second only finds a marker left behind.
    alone = await meet("serial", "s")
    assert any(a.status == 200 and not a.body["result"]["met"] for a in alone), alone

    # A sync call in flight on the only worker: /ping and /health still answer, at the gateway and
    # at the instance itself.
    address = models["holder"]["running_instances"][0]["address"]
    held = asyncio.create_task(_call(f"{gateway}/models/holder/latest/model", {"data": {"key": "k1"}}))
    try:
        await until(lambda: (meeting / "k1.started").exists(), within=20)
        assert (await _call(f"{gateway}/models/holder/latest/ping", method="GET")).status == 200
        # Called directly, an instance wants the secret the gateway and the monitor send.
        secret = instance_headers(platform.settings.home, address)
        assert (await _call(f"http://{address}/ping", method="GET", headers=secret)).status == 200
        assert (await _call(f"http://{address}/health", method="GET", headers=secret)).status == 200
        assert not held.done()
    finally:
        (meeting / "k1.release").touch()
    answer = await held
    assert answer.status == 200 and answer.body["result"] == "released"

    # The model API's /ping follows readiness: 503 while no instance is ready, 200 again after.
    (meeting / "sick").touch()
    ping = f"{gateway}/models/holder/latest/ping"
    unavailable = await until(lambda: (a := _http(ping, "GET")).status == 503 and a, within=30)
    assert unavailable.body["error"]["type"] == "Unavailable"
    (meeting / "sick").unlink()
    await until(lambda: _http(ping, "GET").status == 200, within=60)
