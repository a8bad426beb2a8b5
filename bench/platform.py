"""Speed as users get it: the platform started as `make up` starts it, measured with wrk in one run.

    .venv/bin/pip install -e '.[bench]' && apt-get install wrk
    .venv/bin/python -m bench.platform [--quick] [--runs 3] [--duration 5] [--no-bentoml]

1. The sum of 16 floats, deployed with the CLI (`--instances 1 --unrestricted`), at c=1/8/64:
   through the platform's gateway, direct to its instance, the isolated gateway path of
   bench/gateway (its own NATS, no control plane), Flask + gunicorn w2 and a bare single-process
   handler; then the ratios (targets: platform >= 2.5x Flask at c=64, >= 0.9x the isolated path,
   gateway-added p50 at c=1 <= 150 us).
2. CPU seconds per 1,000 calls of each platform process at c=64 (from /proc): the gateway, the
   instance, and the control plane (api, scheduler, builder, monitor, nats-server, postgres),
   whose sum should stay within 5 % of the gateway's and the instance's.
3. The iris classifier (scikit-learn) deployed with requirements.txt: Pier vs BentoML (latest,
   `bentoml serve`, in a venv of its own under ~/.cache/pier-bench) vs Flask + gunicorn w2.
4. Overload isolation: model API A offered 20x its capacity while B runs at a tenth of its own:
   B's p99 against B alone, and what A answered (only 200, and 503 with Retry-After).

Figures are medians of `--runs` runs and every ratio comes from this run. Everything the bench
starts is stopped by pid on the way out, on Ctrl-C and on failure too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
import venv
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import aiohttp

from bench.gateway import BODY, LUA, MODEL, flask_command, isolated, process, wrk
from infra import processes
from infra.embedded import free_port, free_ports, wait_for_port
from infra.supervisor import READY
from pier.client import Client
from pier.config import AUTO_GATEWAYS
from pier.http import SECRET_HEADER

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pier-bench"
CONTROL_PLANE = ("api", "scheduler", "builder", "monitor", "nats-server", "postgres")

BARE = """
import asyncio
import sys

import msgspec
import uvloop

from pier.http.server import Response, Server


async def handle(request):
    return Response(200, msgspec.json.encode({"result": sum(msgspec.json.decode(request.body)["data"]["x"])}))


async def main(port):
    server = Server(handle, lambda request, status: Response(status), max_body=1 << 20, log_error=print)
    await server.listen_tcp("127.0.0.1", port)
    await asyncio.Event().wait()


uvloop.run(main(int(sys.argv[1])))
"""

IRIS = """
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

_X, _y = load_iris(return_X_y=True)
_model = LogisticRegression(max_iter=1000).fit(_X, _y)


def predict(rows):
    return _model.predict(rows).tolist()
"""
IRIS_ROW = [[5.1, 3.5, 1.4, 0.2]]

FLASK_IRIS = """
from flask import Flask, jsonify, request

from iris_model import predict

app = Flask(__name__)


@app.post("/model")
def model():
    return jsonify({"result": predict(**request.get_json()["data"])})
"""

BENTO_IRIS = """
import bentoml

from iris_model import predict as classify


@bentoml.service
class Iris:
    @bentoml.api
    def predict(self, rows: list[list[float]]) -> list[int]:
        return classify(rows)
"""

SLOW = """
import time


def predict(x):
    time.sleep({seconds})
    return sum(x)
"""

Figures = tuple[float, float, float]  # req/s, p50 us, p99 us


NO_FIGURES: Figures = (float("nan"), float("nan"), float("nan"))
Rounds = dict[tuple[str, int], list[Figures]]  # (target, concurrency) -> the figures of each round


def attempt(url: str, c: int, duration: float, script: Path) -> Figures:
    """wrk's figures, or NaN with the reason printed when calls failed (a 503 from shedding on a
    starved machine, say): one bad measurement does not end the run, and it shows in the table."""
    try:
        return wrk(url, c, duration, script)
    except SystemExit as failed:
        print(f"  ({str(failed).splitlines()[0]})", flush=True)
        return NO_FIGURES


class Bench:
    def __init__(self, work: Path, runs: int, duration: float, concurrency: list[int]) -> None:
        self.work, self.runs, self.duration, self.concurrency = work, runs, duration, concurrency
        self.scripts: dict[tuple[str, str], Path] = {}
        # Headers a URL needs: an instance answers only callers with its secret (the gateway's).
        self.headers: dict[str, dict[str, str]] = {}

    def script(self, body: str, url: str = "") -> Path:
        headers = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in self.headers.get(url, {}).items())
        key = (body, headers)
        if key not in self.scripts:
            path = self.scripts[key] = self.work / f"post-{len(self.scripts)}.lua"
            path.write_text(LUA % body + headers)
        return self.scripts[key]

    def table(self, title: str, targets: dict[str, tuple[str, str]]) -> Rounds:
        """wrk on each target (url, body) at each concurrency, `runs` rounds of all the targets in
        turn, so that a slow spell of this shared machine falls on every target alike; prints the
        medians and returns each round's figures (for `ratio`)."""
        for url, body in targets.values():  # warm up every path (connections, imports)
            attempt(url, 8, 1, self.script(body, url))
        print(f"\n{title}\n{'':22} {'c':>3} {'req/s':>9} {'p50 us':>9} {'p99 us':>9}   req/s of each round", flush=True)
        rounds: Rounds = {}
        for c in self.concurrency:
            for _ in range(self.runs):
                for name, (url, body) in targets.items():
                    rounds.setdefault((name, c), []).append(attempt(url, c, self.duration, self.script(body, url)))
            for name in targets:
                rps, p50, p99 = _median(rounds[(name, c)])
                each = " ".join(f"{r[0]:.0f}" for r in rounds[(name, c)])
                print(f"{name:22} {c:>3} {rps:>9.0f} {p50:>9.0f} {p99:>9.0f}   {each}", flush=True)
        return rounds


def ratio(rounds: Rounds, a: str, b: str, c: int, of: Callable[[Figures, Figures], float]) -> float:
    """The median over rounds of `of(a's figures, b's)` from the same round (measured a few seconds
    apart); nan when no round served every call of both."""
    pairs = [of(x, y) for x, y in zip(rounds[(a, c)], rounds[(b, c)], strict=True) if x[0] == x[0] and y[0] == y[0]]
    return statistics.median(pairs) if pairs else float("nan")


def _median(runs: list[Figures]) -> Figures:
    # The median of the runs that served every call; nan only when none did (a nan in a median
    # makes it meaningless, and one run shed on a starved machine said nothing of the others).
    served = [r for r in runs if r[0] == r[0]] or [NO_FIGURES]
    return (
        statistics.median(r[0] for r in served),
        statistics.median(r[1] for r in served),
        statistics.median(r[2] for r in served),
    )


def faster(x: Figures, y: Figures) -> float:
    return x[0] / y[0]


def added_p50(x: Figures, y: Figures) -> float:
    return x[1] - y[1]


# ---- the platform, as `make up` runs it -----------------------------------------------------------

# How long the platform may take to be ready (PostgreSQL's initdb, migrations) and to stop.
READY_WITHIN = 180.0
STOP_WITHIN = 30.0


class MadeUp:
    """`python -m infra.supervisor` (what `make up` execs) in a process group of its own, with its own
    PIER_HOME and free ports; the CLI and the URLs come from its credentials.json, as a user's do."""

    def __init__(self, home: Path, log: Path) -> None:
        self.home, self.log = home, log
        self.env = {
            **os.environ,
            "PIER_HOME": str(home),
            "PIER_API_PORT": str(free_port()),
            "PIER_GATEWAY_PORT": str(free_port()),
            "PIER_GATEWAY_METRICS_PORT": str(free_ports(AUTO_GATEWAYS)),  # one per gateway process
            "PIER_NATS_URL": f"nats://127.0.0.1:{free_port()}",
            "PIER_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/pier",
            "PIER_LOG_LEVEL": "warning",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "infra.supervisor"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + READY_WITHIN
        while READY not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"make up did not get ready:\n{self.log.read_text(errors='replace')[-4000:]}")
            time.sleep(0.2)
        saved = json.loads((self.home / "credentials.json").read_text())
        self.api_url, self.gateway_url, self.token = saved["api_url"], saved["gateway_url"], saved["token"]

    def stop(self) -> None:
        """SIGTERM to the whole group, as Ctrl-C in a terminal sends SIGINT to it; then nothing of
        this PIER_HOME may be left running (an instance is in a session of its own: looked for)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(STOP_WITHIN)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        deadline = time.monotonic() + 10
        while (left := self.instances()) and time.monotonic() < deadline:
            time.sleep(0.1)
        if left:
            processes.stop_pids(left, signal.SIGKILL, 5.0)
            print(f"make up left {len(left)} instance process(es) running: killed", flush=True)

    def answered(self) -> str:
        """What the gateway answered so far, by status (its metrics), and the warnings the gateway and
        the monitor logged: a measurement with failed calls then says which they were and why."""
        base = int(self.env["PIER_GATEWAY_METRICS_PORT"])
        pages = []
        for k in range(len(self.pids()["gateway"])):  # gateway process k serves /metrics on base + k
            with urllib.request.urlopen(f"http://127.0.0.1:{base + k}/metrics", timeout=10) as response:
                pages.append(response.read().decode())
        statuses: dict[str, int] = {}
        for line in "\n".join(pages).splitlines():
            if line.startswith("pier_gateway_requests_total{"):
                status = line.split('status="', 1)[1].split('"', 1)[0]
                statuses[status] = statuses.get(status, 0) + int(float(line.rsplit(" ", 1)[1]))
        warnings = [
            f"    {log.stem}: {line[:200]}"
            for log in sorted((self.home / "logs").glob("*.log"))
            if log.name.startswith(("gateway", "monitor"))
            for line in log.read_text(errors="replace").splitlines()
            if '"warning"' in line or '"error"' in line
        ]
        shown = "\n".join(warnings[-6:])
        return f"the platform's gateway answered, by status: {dict(sorted(statuses.items()))}" + (
            f"; {len(warnings)} warning(s) logged, the last:\n{shown}" if warnings else "; no warning logged"
        )

    def instances(self) -> list[processes.PidRecord]:
        return processes.processes_under(self.home / "instances")

    def pids(self) -> dict[str, list[int]]:
        """The supervisor's children by name: the five services (each replica; the gateway runs
        one per CPU), nats-server and the postmaster."""
        assert self.proc is not None
        found: dict[str, list[int]] = {}
        for pid, (parent, _) in _processes().items():
            if parent != self.proc.pid:
                continue
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if len(argv) > 2 and argv[1] == b"-m" and argv[2].startswith(b"services."):
                    found.setdefault(argv[2].decode().removeprefix("services."), []).append(pid)
                elif argv[0].endswith(b"nats-server"):
                    found.setdefault("nats-server", []).append(pid)
                elif argv[0].endswith(b"postgres"):
                    found.setdefault("postgres", []).append(pid)
        missing = {"api", "builder", "scheduler", "monitor", "gateway", "nats-server", "postgres"} - set(found)
        if missing:
            raise SystemExit(f"make up runs no {', '.join(sorted(missing))}")
        return found

    def pier(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pier", *args],
            env={**os.environ, "PIER_HOME": str(self.home)},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )


@contextlib.contextmanager
def platform(work: Path) -> Iterator[MadeUp]:
    made_up = MadeUp(work / "home", work / "make-up.log")
    try:
        made_up.start()
        yield made_up
    finally:
        made_up.stop()


def deploy(made_up: MadeUp, code: Path, name: str) -> tuple[str, int, str]:
    """`pier deploy` as a user runs it; the instance's address, pid and secret once it serves."""
    done = made_up.pier("deploy", str(code), "--name", name, "--instances", "1", "--unrestricted")
    if done.returncode:
        said = made_up.log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"pier deploy {name} failed:\n{done.stdout}{done.stderr}\nmake up said:\n{said}")
    client = Client(api_url=made_up.api_url, gateway_url=made_up.gateway_url, token=made_up.token)
    instance = client.model(name)["running_instances"][0]
    handle = json.loads((made_up.home / "instances" / instance["instance_id"] / "pid").read_text())
    return str(instance["address"]), int(handle["pid"]), str(handle["secret"])


def write_code(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text))
    return folder


# ---- CPU per call, from /proc ---------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _processes() -> dict[int, tuple[int, float]]:
    """Every process: pid -> (parent pid, CPU seconds so far)."""
    out: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
        out[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK)
    return out


def cpu_seconds(roots: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds of each name's processes with their descendants (a descendant that is itself
    named, as an instance started by the scheduler, counts for its own name only)."""
    table = _processes()
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    named = {pid for pids in roots.values() for pid in pids}
    out: dict[str, float] = {}
    for name, pids in roots.items():
        total, todo = 0.0, list(pids)
        while todo:
            pid = todo.pop()
            total += table.get(pid, (0, 0.0))[1]
            todo += [c for c in children.get(pid, []) if c not in named]
        out[name] = total
    return out


# ---- overload: an open-loop load at a fixed rate --------------------------------------------------


async def open_loop(url: str, rate: float, duration: float) -> list[tuple[int, float, bool]]:
    """POSTs of BODY at `rate` per second for `duration` seconds, each sent on time whether or not
    the earlier ones were answered: (status, latency s, has Retry-After) of each."""
    answers: list[tuple[int, float, bool]] = []
    data = BODY.encode()
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60)
    ) as session:

        async def one() -> None:
            started = time.perf_counter()
            try:
                async with session.post(url, data=data, headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    answers.append((r.status, time.perf_counter() - started, "Retry-After" in r.headers))
            except (aiohttp.ClientError, TimeoutError):
                answers.append((0, time.perf_counter() - started, False))

        tasks = []
        begin = time.perf_counter()
        for n in range(int(rate * duration)):
            delay = begin + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return answers


def p99(answers: list[tuple[int, float, bool]]) -> float:
    latencies = sorted(latency for status, latency, _ in answers if status == 200)
    return latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e6 if latencies else float("nan")


def _flood(url: str, rate: float, duration: float, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """A's load, in a process of its own: sharing the event loop that times B's calls, its 400 calls
    a second would delay B's answers in the client, and B's p99 would be the bench's."""
    out.put("started")
    out.put(asyncio.run(open_loop(url, rate, duration)))


async def overload(gateway: str, duration: float, rounds: int) -> None:
    a, b = f"{gateway}/models/flood/latest/model", f"{gateway}/models/calm/latest/model"
    # Capacities: one worker each; A sleeps 50 ms a call (20/s), B 10 ms (100/s). Each round times
    # B alone, then B while A is flooded (from a second before to a second after): B's p99 is
    # taken over the calls of every round (10 a second: a p99 of one short run rests on its two
    # slowest calls).
    alone: list[tuple[int, float, bool]] = []
    beside: list[tuple[int, float, bool]] = []
    flooded: list[tuple[int, float, bool]] = []
    spawn = multiprocessing.get_context("spawn")
    for _ in range(rounds):
        alone += await open_loop(b, 10.0, duration)
        answers: multiprocessing.Queue = spawn.Queue()  # type: ignore[type-arg]
        flood = spawn.Process(target=_flood, args=(a, 400.0, duration + 2.0, answers))
        flood.start()
        try:
            await asyncio.to_thread(answers.get, timeout=60)  # "started"
            await asyncio.sleep(1.0)  # A's queue is full and it is shedding
            beside += await open_loop(b, 10.0, duration)
            flooded += await asyncio.to_thread(answers.get, timeout=duration + 120)
        finally:
            flood.join(10)
            if flood.is_alive():
                flood.kill()
    statuses: dict[int, int] = {}
    for status, _, _ in flooded:
        statuses[status] = statuses.get(status, 0) + 1
    no_retry_after = sum(1 for status, _, has in flooded if status == 503 and not has)
    print(f"\noverload isolation (A: 20x its capacity of 20/s; B: 10/s, a tenth of its 100/s), {rounds} rounds")
    print(
        f"B alone p99 {p99(alone):.0f} us ({len(alone)} calls); B beside A p99 {p99(beside):.0f} us"
        f" ({len(beside)} calls): {p99(beside) / p99(alone):.2f}x (target <= 2x)"
    )
    print(f"A answered {dict(sorted(statuses.items()))}; 503s without Retry-After: {no_retry_after}")
    print(f"B answered {sorted({s for s, _, _ in beside})}")


# ---- the run --------------------------------------------------------------------------------------


def _bentoml(work: Path, port: int) -> list[str]:
    """`bentoml serve` from a venv of its own under the cache dir (made, with scikit-learn, once)."""
    env = CACHE / "bentoml-venv"
    bentoml = env / "bin" / "bentoml"
    if not bentoml.exists():
        print(f"installing BentoML into {env} (once) ...", flush=True)
        venv.create(env, with_pip=True, clear=True)
        subprocess.run([str(env / "bin" / "pip"), "install", "-q", "bentoml", "scikit-learn"], check=True)
    return [str(bentoml), "serve", "service:Iris", "--host", "127.0.0.1", "--port", str(port)]


def _stop_on_sigterm() -> None:
    def stop(signum: int, _: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run: 1 run of 2 s per figure")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure; the median is shown (default 3)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run (default 5)")
    parser.add_argument("--no-bentoml", action="store_true", help="leave BentoML out (it is installed from PyPI)")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.duration = 1, 2.0
    _stop_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="pier-bench-platform-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        bench = Bench(work, args.runs, args.duration, [1, 8, 64])
        base_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "libs"), str(ROOT)])}

        print("starting the platform (NATS, PostgreSQL, api, builder, scheduler, monitor, gateway) ...", flush=True)
        running = stack.enter_context(platform(work / "platform"))
        gateway = running.gateway_url
        address, instance_pid, secret = deploy(running, write_code(work / "sum", {"predict.py": MODEL}), "sum")
        bench.headers[f"http://{address}/model"] = {SECRET_HEADER: secret}
        roots = {"instance": [instance_pid], **running.pids()}
        gateways = len(roots["gateway"])
        print(f"the platform runs {gateways} gateway process(es); the isolated path as many", flush=True)
        isolated_targets, _ = stack.enter_context(isolated(work / "isolated", gateways=gateways))
        ports = {"bare": free_port()}
        write_code(work / "bare", {"bare.py": BARE})
        stack.enter_context(
            process([sys.executable, str(work / "bare" / "bare.py"), str(ports["bare"])], ports["bare"], base_env,
                    work / "bare.log")
        )  # fmt: skip

        # 1. The sum of 16 floats, and CPU per call at c=64.
        urls = {
            "platform gateway": f"{gateway}/models/sum/latest/model",
            "platform direct": f"http://{address}/model",
            "isolated gateway": isolated_targets["a gateway"],
            "isolated direct": isolated_targets["b direct"],
            "flask gunicorn w2": isolated_targets["c flask"],
            "bare handler": f"http://127.0.0.1:{ports['bare']}/model",
        }
        targets = {name: (url, BODY) for name, url in urls.items()}
        rounds = bench.table("the sum of 16 floats", targets)
        top = max(bench.concurrency)
        # What the platform spends with no calls at all (probes, polls, heartbeats), over as long.
        idle_from, idle_began = cpu_seconds(roots), time.monotonic()
        time.sleep(bench.runs * max(1, round(bench.duration)))
        idle_for = time.monotonic() - idle_began
        idle = {name: cpu - idle_from[name] for name, cpu in cpu_seconds(roots).items()}
        before, began = cpu_seconds(roots), time.monotonic()
        calls = 0.0

        def count() -> None:
            nonlocal calls
            calls += last[0] * max(1, round(bench.duration))

        last = (0.0, 0.0, 0.0)
        for _ in range(bench.runs):
            last = attempt(urls["platform gateway"], top, bench.duration, bench.script(BODY))
            if last[0] != last[0]:  # NaN: failed calls, so no count of calls
                last = (0.0, 0.0, 0.0)
            count()
        spent = {name: cpu - before[name] for name, cpu in cpu_seconds(roots).items()}
        calls = calls or float("nan")  # every run failed: the table says nan rather than dividing by 0
        loaded_for = time.monotonic() - began
        # The calls' share: what was spent under load less what the same time costs idle.
        per_call = {name: max(0.0, spent[name] - idle[name] * loaded_for / idle_for) for name in spent}
        print(f"\nCPU seconds per 1,000 calls through the platform at c={top}: {calls:.0f} calls in {loaded_for:.0f} s")
        print(f"  {'':12} {'in all':>8} {'idle':>8} {'per call':>8}   (idle: the same time with no calls)")
        for name, seconds in spent.items():
            scale = 1000 / calls
            print(
                f"  {name:12} {seconds * scale:8.4f} {idle[name] * loaded_for / idle_for * scale:8.4f}"
                f" {per_call[name] * scale:8.4f}"
            )
        for label, figures in (("in all", spent), ("per call", per_call)):
            data_plane = figures["gateway"] + figures["instance"]
            control = sum(figures[name] for name in CONTROL_PLANE)
            share = control / data_plane * 100
            print(f"  control plane / (gateway + instance), {label}: {share:.1f} % (target <= 5 %)")
        print(f"  {running.answered()}", flush=True)

        print("\nratios: the median over rounds of the two figures of one round")
        for c in bench.concurrency:
            flask = ratio(rounds, "platform gateway", "flask gunicorn w2", c, faster)
            alone = ratio(rounds, "platform gateway", "isolated gateway", c, faster)
            added = ratio(rounds, "platform gateway", "platform direct", c, added_p50)
            print(
                f"c={c:<3} platform/flask {flask:.2f}x  platform/isolated {alone:.2f}x"
                f"  gateway-added p50 (platform gateway - direct) {added:.0f} us"
            )

        # 2. Iris: Pier vs BentoML vs Flask.
        iris_files = {"predict.py": IRIS, "requirements.txt": "scikit-learn\n"}
        deploy(running, write_code(work / "iris", iris_files), "iris")
        write_code(work / "iris-peers", {"iris_model.py": IRIS, "flask_iris.py": FLASK_IRIS, "service.py": BENTO_IRIS})
        ports["flask-iris"] = free_port()
        flask_iris = stack.enter_context(
            process(flask_command(work / "iris-peers", ports["flask-iris"], "flask_iris:app"), ports["flask-iris"],
                    base_env, work / "flask-iris.log")
        )  # fmt: skip
        iris_body = json.dumps({"data": {"rows": IRIS_ROW}})
        _until_ready(f"http://127.0.0.1:{ports['flask-iris']}/model", flask_iris, body=iris_body)
        iris = {
            "pier": (f"{gateway}/models/iris/latest/model", iris_body),
            "flask gunicorn w2": (f"http://127.0.0.1:{ports['flask-iris']}/model", iris_body),
        }
        if not args.no_bentoml:
            ports["bentoml"] = free_port()
            command = _bentoml(work, ports["bentoml"])
            with open(work / "bentoml.log", "ab") as log:
                bento = subprocess.Popen(
                    command, cwd=work / "iris-peers", stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            stack.callback(_stop_tree, bento)
            wait_for_port(ports["bentoml"], bento, "bentoml serve", timeout=120)
            _until_ready(f"http://127.0.0.1:{ports['bentoml']}/readyz", bento)
            iris["bentoml"] = (f"http://127.0.0.1:{ports['bentoml']}/predict", json.dumps({"rows": IRIS_ROW}))
        iris_rounds = bench.table("the iris classifier (one row)", iris)
        for peer in [name for name in iris if name != "pier"]:
            print(f"pier / {peer} at c={top}: {ratio(iris_rounds, 'pier', peer, top, faster):.2f}x")

        # 3. Overload isolation.
        deploy(running, write_code(work / "flood", {"predict.py": SLOW.format(seconds=0.05)}), "flood")
        deploy(running, write_code(work / "calm", {"predict.py": SLOW.format(seconds=0.01)}), "calm")
        asyncio.run(overload(gateway, max(5.0, bench.duration * 2), bench.runs))


def _until_ready(url: str, proc: subprocess.Popen[bytes], within: float = 180.0, body: str | None = None) -> None:
    """BentoML and gunicorn open their port before their workers can answer (scikit-learn takes
    seconds to import): wait until `url` answers 200 (a POST of `body` when one is given)."""
    deadline = time.monotonic() + within
    data = body.encode() if body is not None else None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: the server exited ({proc.returncode})")
        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=2) as answer:
            if answer.status == 200:
                return
        time.sleep(0.5)
    raise SystemExit(f"{url}: not ready after {within:g} s")


def _stop_tree(proc: subprocess.Popen[bytes]) -> None:
    """`bentoml serve` runs workers of its own, in its session: signal them all, then wait for it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


if __name__ == "__main__":
    main()
