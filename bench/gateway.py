"""The gateway against its peers, measured with wrk in one run on this machine.

    .venv/bin/pip install -e '.[bench]' && apt-get install wrk
    .venv/bin/python -m bench.gateway [--duration 5] [--concurrency 1 8 64]

For a trivial function (the sum of 16 floats), at each concurrency:
  (a) client -> Pier gateway -> harness instance
  (b) client -> harness instance directly
  (c) Flask under gunicorn, 2 sync workers, serving the same function (the shape of Domino's harness)
  (d) a plain aiohttp reverse proxy (one ClientSession pool, uvloop) in front of the same instance
It prints req/s, p50 and p99 of each, and the ratios (a)/(c), (a)/(d), (a)/(b), and the
gateway-added p50 (a - b). Every figure comes from this run: no stored baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec

from infra.embedded import NatsServer, free_port, stop_process, wait_for_port
from pier import bus, config
from pier.events import INSTANCES_BUCKET, ROUTES_BUCKET, InstanceRecord, RouteRecord, VersionRoute
from pier.spec import Entrypoint

ROOT = Path(__file__).resolve().parent.parent
BODY = json.dumps({"data": {"x": [i * 0.5 for i in range(16)]}})
MODEL = "def predict(x):\n    return sum(x)\n"

FLASK_APP = """
from flask import Flask, request, jsonify

app = Flask(__name__)

def predict(x):
    return sum(x)

@app.post("/model")
def model():
    return jsonify({"result": predict(**request.get_json()["data"])})
"""

AIOHTTP_PROXY = """
import sys
import aiohttp
import uvloop
from aiohttp import web

UPSTREAM = sys.argv[2]

async def session(app):
    app["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    yield
    await app["s"].close()

async def forward(request):
    body = await request.read()
    async with request.app["s"].post(UPSTREAM + "/model", data=body,
                                     headers={"Content-Type": "application/json"}) as r:
        return web.Response(body=await r.read(), status=r.status, content_type="application/json")

app = web.Application()
app.cleanup_ctx.append(session)
app.router.add_post("/model", forward)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, loop=uvloop.new_event_loop())
"""

LUA = """
wrk.method = "POST"
wrk.body = '%s'
wrk.headers["Content-Type"] = "application/json"
"""


def _units(value: str) -> float:
    """wrk's latency (e.g. 270.00us, 1.20ms, 2.00s) in microseconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", value)
    assert match, value
    number, unit = float(match.group(1)), match.group(2)
    return number * {"us": 1, "ms": 1000, "s": 1_000_000}[unit]


def wrk(url: str, concurrency: int, duration: float, script: Path) -> tuple[float, float, float]:
    """(req/s, p50 us, p99 us) of POSTs of BODY to `url`."""
    threads = min(concurrency, 2)
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{concurrency}",
            f"-d{max(1, round(duration))}s",
            "--latency",
            # A call slower than wrk's default 2 s shows in p99 rather than as a failed call.
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        # In a session of its own, as a load generator in another terminal is: with the kernel's
        # autogroups a session is one scheduling group, and servers sharing wrk's group measured
        # about 9 % faster than the same servers apart from it (docs/performance.md). Every server
        # measured is then apart from wrk alike, the platform (make up) included.
        start_new_session=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _units(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _units(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    failed = re.search(r"Non-2xx or 3xx responses: \d+|Socket errors: .*", out)
    if failed or not rps:
        raise SystemExit(
            f"{url}: calls failed at c={concurrency} ({failed.group(0) if failed else 'none served'}):\n{out}"
        )
    return rps, p50, p99


@contextlib.contextmanager
def process(args: list[str], port: int, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_for_port(port, proc, args[-1])
        yield proc
    finally:
        stop_process(proc)


@contextlib.contextmanager
def profiled(folder: Path | None, c: int, pids: dict[str, int], enabled: bool) -> Iterator[None]:
    """py-spy records each process while the block runs: DIR/<name>-c<c>.txt, folded stacks."""
    if not enabled or folder is None:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    spies = [
        subprocess.Popen(
            [py_spy, "record", "-p", str(pid), "-f", "raw", "-r", "500", "-o", str(folder / f"{name}-c{c}.txt")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
    ]
    try:
        yield
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            spy.wait(30)


async def publish(settings: config.Settings, harness: str, workers: int) -> None:
    model_id = uuid.uuid4().hex
    entry = Entrypoint(file="model.py", function="predict")
    route = RouteRecord(
        model_id=model_id,
        name="bench",
        access="unrestricted",
        latest=1,
        versions={"1": VersionRoute(number=1, id="v1", entrypoint=entry)},
    )
    inst = InstanceRecord(
        instance_id=uuid.uuid4().hex,
        model_id=model_id,
        version=1,
        address=harness,
        workers=workers,
        state="ready",
    )
    async with bus.connect(settings, "bench") as b:
        await (await b.kv(ROUTES_BUCKET)).put(model_id, msgspec.json.encode(route))
        await (await b.kv(INSTANCES_BUCKET)).put(inst.instance_id, msgspec.json.encode(inst))


def flask_command(work: Path, port: int, app: str = "flask_app:app") -> list[str]:
    """Flask under gunicorn with 2 sync workers, serving `app` from `work`."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "-w",
        "2",
        "-b",
        f"127.0.0.1:{port}",
        "--chdir",
        str(work),
        "--log-level",
        "warning",
        app,
    ]


@contextlib.contextmanager
def isolated(work: Path, workers: int = 1, gateways: int = 1) -> Iterator[tuple[dict[str, str], dict[str, int]]]:
    """The isolated paths: NATS, one harness instance on MODEL and `gateways` gateway processes on
    one port in front of it, Flask + gunicorn w2 and a plain aiohttp proxy; yields their URLs by
    name and the pids of the (first) gateway and the instance, and stops them all on the way out."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "model.py").write_text(MODEL)
    (work / "flask_app.py").write_text(textwrap.dedent(FLASK_APP))
    (work / "aiohttp_proxy.py").write_text(textwrap.dedent(AIOHTTP_PROXY))
    py = sys.executable
    nats = NatsServer(work / "nats")
    nats.start()
    try:
        ports = {name: free_port() for name in ("harness", "gateway", "flask", "proxy")}
        settings = config.load(
            env={},
            home=work / "pier",
            nats_url=nats.url,
            gateway_port=ports["gateway"],
            gateway_metrics_port=0,
            gateway_processes=gateways,
        )
        base_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "libs"), str(ROOT)])}
        harness_env = {
            **base_env,
            "PIER_WORKING_DIR": str(work),
            "PIER_ENTRYPOINT": msgspec.json.encode(Entrypoint(file="model.py", function="predict")).decode(),
            "PIER_PORT": str(ports["harness"]),
            "PIER_WORKERS": str(workers),
        }
        gateway_env = {**base_env, **config.to_env(settings), "PIER_LOG_LEVEL": "warning"}
        harness_addr = f"127.0.0.1:{ports['harness']}"
        with (
            process([py, "-m", "pier.harness"], ports["harness"], harness_env, work / "harness.log") as harness,
            process([py, "-m", "services.gateway"], ports["gateway"], gateway_env, work / "gateway.log") as gateway,
            process(flask_command(work, ports["flask"]), ports["flask"], base_env, work / "flask.log"),
            process(
                [py, str(work / "aiohttp_proxy.py"), str(ports["proxy"]), f"http://{harness_addr}"],
                ports["proxy"],
                base_env,
                work / "proxy.log",
            ),
            contextlib.ExitStack() as more,
        ):
            for k in range(2, gateways + 1):
                # On the first one's port (SO_REUSEPORT): its own /metrics port says when it listens.
                own = free_port()
                env = {**gateway_env, "PIER_GATEWAY_METRICS_PORT": str(own)}
                more.enter_context(process([py, "-m", "services.gateway"], own, env, work / f"gateway-{k}.log"))
            asyncio.run(publish(settings, harness_addr, workers))
            targets = {
                "a gateway": f"{settings.gateway_url}/models/bench/latest/model",
                "b direct": f"http://{harness_addr}/model",
                "c flask": f"http://127.0.0.1:{ports['flask']}/model",
                "d aiohttp proxy": f"http://127.0.0.1:{ports['proxy']}/model",
            }
            yield targets, {"gateway": gateway.pid, "instance": harness.pid}
    finally:
        nats.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--workers", type=int, default=1, help="harness workers (PIER_WORKERS)")
    parser.add_argument("--gateways", type=int, default=1, help="gateway processes on the one port (default 1)")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="also record py-spy profiles (folded stacks) of the gateway and the instance during (a), into DIR",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    with tempfile.TemporaryDirectory(prefix="pier-bench-") as tmp:
        work = Path(tmp)
        script = work / "post.lua"
        script.write_text(LUA % BODY)
        with isolated(work, args.workers, args.gateways) as (targets, pids):
            for url in targets.values():  # warm up every path (connections, imports)
                wrk(url, 8, 1, script)
            print(f"{'':16} {'c':>3} {'req/s':>9} {'p50 us':>9} {'p99 us':>9}")
            results: dict[tuple[str, int], tuple[float, float, float]] = {}
            for c in args.concurrency:
                for name, url in targets.items():
                    profiling = args.profile and name == "a gateway"
                    with profiled(args.profile, c, pids, profiling):
                        results[(name, c)] = rps, p50, p99 = wrk(url, c, args.duration, script)
                    print(f"{name:16} {c:>3} {rps:>9.0f} {p50:>9.0f} {p99:>9.0f}", flush=True)
            print()
            for c in args.concurrency:
                a, b, cc, d = (results[(n, c)] for n in targets)
                print(
                    f"c={c:<3} (a)/(c) {a[0] / cc[0]:.2f}  (a)/(d) {a[0] / d[0]:.2f}  (a)/(b) {a[0] / b[0]:.2f}"
                    f"  gateway-added p50 (a-b) {a[1] - b[1]:.0f} us"
                )


if __name__ == "__main__":
    main()
