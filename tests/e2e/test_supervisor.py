"""`make up` as a user runs it: `python -m infra.supervisor` in a process group of its own, with its
own PIER_HOME and free ports, stopped every way a terminal, systemd or a crash stops it. After
each stop no process of that PIER_HOME may be left: not a service, an instance, PostgreSQL nor NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import nats
import nats.errors
import pytest

from infra.embedded import PostgresServer, free_port, free_ports
from infra.processes import processes_under
from infra.supervisor import READY
from pier import events
from pier.client import ApiError, Client
from pier.config import AUTO_GATEWAYS

from .conftest import EXAMPLES

REPO = Path(__file__).parents[2]
# What the supervisor promises for a stop, whatever state the services are in.
STOP_BOUND = 15.0


def _platform_pids(home: Path) -> set[int]:
    """Live processes whose command line, working directory or environment points into `home`."""
    needle = str(home).encode()
    found = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        base = f"/proc/{entry.name}"
        try:
            if Path(f"{base}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                continue
            cwd = os.readlink(f"{base}/cwd").encode()
            mentions = needle in Path(f"{base}/cmdline").read_bytes() or cwd.startswith(needle)
            if mentions or needle in Path(f"{base}/environ").read_bytes():
                found.add(int(entry.name))
        except OSError:
            continue
    return found


def _until(what: str, check, timeout: float = 120.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class MakeUp:
    """One PIER_HOME and its ports; `start()` runs a supervisor on them, as `make up` does."""

    def __init__(self, root: Path) -> None:
        self.home = root / "home"
        self.env = {
            **os.environ,
            "PIER_HOME": str(self.home),
            "PIER_API_PORT": str(free_port()),
            "PIER_GATEWAY_PORT": str(free_port()),
            # A port per gateway process from this one on: one per CPU, up to AUTO_GATEWAYS.
            "PIER_GATEWAY_METRICS_PORT": str(free_ports(AUTO_GATEWAYS)),
            "PIER_NATS_URL": f"nats://127.0.0.1:{free_port()}",
            "PIER_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/pier",
            "PIER_ACK_WAIT": "3",
        }
        self.log = root / "make-up.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> subprocess.Popen[bytes]:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "infra.supervisor"],
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait:
            _until("make up to be ready", self._ready, timeout=180)
        return self.proc

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"make up exited with {self.proc.returncode}:\n{self.output()}")
        return READY in self.output()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stopped_within_bound(self) -> int:
        """The supervisor's exit status, once it has exited (it must within the bound)."""
        assert self.proc is not None
        try:
            return self.proc.wait(STOP_BOUND)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"make up still running {STOP_BOUND}s after the stop:\n{self.output()}") from None

    def assert_nothing_left(self) -> None:
        # Processes are reaped by their parents a moment after they exit: poll briefly.
        deadline = time.monotonic() + 5.0
        while (left := _platform_pids(self.home)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, f"left running: {_describe(left)}"

    def service_pid(self, name: str) -> int:
        for pid in _platform_pids(self.home):
            with_args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if f"services.{name}".encode() in with_args:
                return pid
        raise AssertionError(f"no {name} running")

    def instance_pids(self) -> set[int]:
        return {r.pid for r in processes_under(self.home / "instances")}

    def client(self) -> Client:
        saved = json.loads((self.home / "credentials.json").read_text())
        return Client(api_url=saved["api_url"], token=saved["token"], gateway_url=saved["gateway_url"])

    def pier(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PIER_HOME": str(self.home)}
        return subprocess.run(
            [sys.executable, "-m", "pier", *args], env=env, capture_output=True, text=True, timeout=300, cwd=REPO
        )

    def deploy_hello(self) -> None:
        done = self.pier(
            "deploy", str(EXAMPLES / "hello"), "--name", "hello", "--file", "predict.py", "--function", "predict",
            "--unrestricted",
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr

    def answers(self) -> bool:
        try:
            return self.client().predict("hello", data={"name": "Ada"})["result"]["greeting"] == "Hello, Ada!"
        except (ApiError, OSError):
            return False

    def kill_all(self) -> None:
        """Clean-up when a test fails: whatever is left of this PIER_HOME, by pid."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for pid in _platform_pids(self.home):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _describe(pids: set[int]) -> str:
    out = []
    for pid in sorted(pids):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            out.append(f"{pid}: {cmdline[:150]}")
        except OSError:
            out.append(f"{pid}: (gone)")
    return "; ".join(out)


@pytest.fixture
def make_up(tmp_path: Path) -> Iterator[MakeUp]:
    up = MakeUp(tmp_path)
    try:
        yield up
    finally:
        up.kill_all()


def test_group_term_after_services_crashed_mid_deploy_stops_everything_in_time(make_up: MakeUp) -> None:
    """The reported failure: a builder and a scheduler killed and restarted, then TERM to the group."""
    proc = make_up.start()
    deploy = subprocess.Popen(
        [sys.executable, "-m", "pier", "deploy", str(EXAMPLES / "hello"), "--name", "hello", "--file", "predict.py",
         "--function", "predict", "--unrestricted"],
        env={**os.environ, "PIER_HOME": str(make_up.home)}, cwd=REPO, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _until("instances to start", make_up.instance_pids, timeout=180)
        os.kill(make_up.service_pid("builder"), signal.SIGKILL)
        os.kill(make_up.service_pid("scheduler"), signal.SIGKILL)
        _until("the supervisor to restart them", lambda: make_up.output().count("restarting in") >= 2)
        os.killpg(proc.pid, signal.SIGTERM)
        make_up.stopped_within_bound()
    finally:
        deploy.kill()
        deploy.wait()
    assert make_up.output().rstrip().endswith("pier | stopped")
    make_up.assert_nothing_left()

    # The next start finds its data again, and Ctrl-C (SIGINT to the group) stops it as cleanly.
    proc = make_up.start()
    _until("hello to answer after the restart", make_up.answers, timeout=180)
    os.killpg(proc.pid, signal.SIGINT)
    make_up.stopped_within_bound()
    make_up.assert_nothing_left()

    # A closed terminal (SIGHUP to the group) stops it as cleanly: the instances too.
    proc = make_up.start()
    _until("hello to answer after the second restart", make_up.answers, timeout=180)
    os.killpg(proc.pid, signal.SIGHUP)
    make_up.stopped_within_bound()
    make_up.assert_nothing_left()


def test_sigkill_of_the_supervisor_leaves_only_instances_and_the_next_start_adopts_them(make_up: MakeUp) -> None:
    proc = make_up.start()
    make_up.deploy_hello()
    instances = make_up.instance_pids()
    assert len(instances) == 4  # two instances, each a harness and the copier bounding its output
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # Services die with the supervisor; PostgreSQL and NATS stop; instances outlive it, as they
    # outlive a scheduler crash, for the next start to adopt.
    _until("only instances to be left", lambda: _platform_pids(make_up.home) <= instances, timeout=30)
    assert make_up.instance_pids() == instances
    # An instance the scheduler started but was killed before it wrote its pid file: nothing can
    # adopt it, so the next start stops it before the scheduler starts.
    work = make_up.home / "instances" / "inst-unrecorded" / "work"
    work.mkdir(parents=True)
    unrecorded = subprocess.Popen(["sleep", "600"], cwd=work, start_new_session=True)
    try:
        proc = make_up.start()
        assert unrecorded.poll() is not None, "the unrecorded instance outlived the start"
    finally:
        unrecorded.kill()
        unrecorded.wait()
    assert "stopped 1 model API instance(s) that no pid file names" in make_up.output()
    _until("hello to answer", make_up.answers, timeout=120)
    assert make_up.instance_pids() == instances  # adopted, not started again
    os.kill(proc.pid, signal.SIGTERM)  # the supervisor alone, as systemd's KillMode=mixed does first
    assert make_up.stopped_within_bound() == 0
    make_up.assert_nothing_left()


def test_no_process_holds_a_secret_in_its_environment_and_clients_without_them_are_refused(make_up: MakeUp) -> None:
    proc = make_up.start()
    make_up.deploy_hello()
    secrets = [p.read_text().strip() for p in (make_up.home / "secrets").iterdir()]
    assert secrets and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in (make_up.home / "secrets").iterdir())
    secrets.append(json.loads((make_up.home / "credentials.json").read_text())["token"])
    for pid in make_up.instance_pids():
        environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
        names = {line.partition("=")[0] for line in environ.split("\0")}
        assert not names & {"PIER_NATS_URL", "PIER_DATABASE_URL", "PIER_NATS_PASSWORD_FILE", "PIER_ADMIN_TOKEN"}
    # The services' environments name secret files, never a password or the admin token; nor does
    # any other process of the platform (the supervisor, PostgreSQL, NATS, the instances).
    services = {make_up.service_pid(name) for name in ("api", "builder", "scheduler", "monitor", "gateway")}
    everything = _platform_pids(make_up.home)
    assert services <= everything and make_up.instance_pids() <= everything
    for pid in everything:
        environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
        assert not [s for s in secrets if s in environ], f"a secret in the environment of {_describe({pid})}"

    nats_url = make_up.env["PIER_NATS_URL"]
    pg_url = make_up.env["PIER_DATABASE_URL"]
    gateway_password = (make_up.home / "secrets" / "nats-gateway.password").read_text().strip()

    async def knock() -> None:
        for credentials in ({}, {"user": "api", "password": "guess"}):
            with pytest.raises(nats.errors.Error, match="Authorization Violation"):
                await nats.connect(nats_url, allow_reconnect=False, connect_timeout=5, **credentials)  # type: ignore[arg-type]
        for url in (pg_url, pg_url.replace("postgres@", "postgres:guess@")):
            with pytest.raises(asyncpg.InvalidPasswordError):
                await asyncpg.connect(url)
        # The gateway's own credentials do not let it write the tokens bucket (only the api may).
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        nc = await nats.connect(nats_url, user="gateway", password=gateway_password, error_cb=on_error)
        try:
            tokens = await nc.jetstream().key_value("pier_tokens")
            with pytest.raises(nats.errors.TimeoutError):
                await tokens.put("forged", b"{}")
            assert any("permissions violation" in e for e in errors), errors
            # Nor add to the audit trail, the api's account of who changed what.
            errors.clear()
            with pytest.raises(nats.errors.TimeoutError):
                await nc.jetstream().publish(events.audit_subject(None, "model.create"), b"{}", timeout=2.0)
            assert any("permissions violation" in e for e in errors), errors
        finally:
            await nc.close()

    asyncio.run(knock())
    asyncio.run(_services_connect_as_a_role_that_cannot_run_programs(make_up))
    assert make_up.answers()
    os.killpg(proc.pid, signal.SIGTERM)
    make_up.stopped_within_bound()
    make_up.assert_nothing_left()


async def _services_connect_as_a_role_that_cannot_run_programs(make_up: MakeUp) -> None:
    """Every service's connection is the `pier` role's, which is no superuser: it cannot run a shell
    command through PostgreSQL, as its superuser could."""
    secrets = make_up.home / "secrets"
    url = make_up.env["PIER_DATABASE_URL"]
    admin = await asyncpg.connect(url, password=(secrets / "postgres.password").read_text().strip())
    try:
        rows = await admin.fetch(
            "SELECT DISTINCT application_name, usename, rolsuper FROM pg_stat_activity"
            " JOIN pg_roles ON pg_roles.oid = usesysid WHERE application_name LIKE 'pier-%'"
        )
    finally:
        await admin.close()
    schemas = {r["application_name"] for r in rows}
    assert {"pier-api", "pier-scheduler"} <= schemas
    assert {(r["usename"], r["rolsuper"]) for r in rows} == {("pier", False)}
    role = await asyncpg.connect(
        url.replace("postgres@", "pier@"), password=(secrets / "postgres-pier.password").read_text().strip()
    )
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await role.execute("COPY (SELECT 1) TO PROGRAM 'true'")
    finally:
        await role.close()


def test_a_home_whose_database_the_superuser_owns_is_handed_to_the_services_role_and_keeps_its_data(
    make_up: MakeUp,
) -> None:
    proc = make_up.start()
    make_up.deploy_hello()
    os.killpg(proc.pid, signal.SIGTERM)
    make_up.stopped_within_bound()
    _as_an_earlier_pier_left_it(make_up)

    proc = make_up.start()
    _until("hello to answer after the upgrade", make_up.answers, timeout=180)
    assert make_up.client().create_token("hello", "after-upgrade")["token"]  # the api still writes
    asyncio.run(_services_connect_as_a_role_that_cannot_run_programs(make_up))
    os.killpg(proc.pid, signal.SIGTERM)
    make_up.stopped_within_bound()
    make_up.assert_nothing_left()


def _as_an_earlier_pier_left_it(make_up: MakeUp) -> None:
    """The database as `make up` left it before the services had a role of their own: everything
    the superuser's, and no `pier` role."""
    port = int(make_up.env["PIER_DATABASE_URL"].rsplit(":", 1)[1].split("/")[0])
    password = (make_up.home / "secrets" / "postgres.password").read_text().strip()
    server = PostgresServer(make_up.home / "postgres", port=port, password=password)
    server.start()
    try:

        async def take_back() -> None:
            conn = await asyncpg.connect(server.url("pier"), password=password)
            try:
                await conn.execute("REASSIGN OWNED BY pier TO postgres; DROP OWNED BY pier; DROP ROLE pier")
            finally:
                await conn.close()

        asyncio.run(take_back())
    finally:
        server.stop()


@pytest.mark.parametrize(
    "variable",
    ["PIER_API_PORT", "PIER_GATEWAY_PORT", "PIER_GATEWAY_METRICS_PORT", "PIER_NATS_URL", "PIER_DATABASE_URL"],
)
def test_a_port_already_taken_stops_make_up_at_once_naming_the_port_and_the_variable(
    make_up: MakeUp, variable: str
) -> None:
    value = make_up.env[variable]
    port = int(value if value.isdigit() else value.rsplit(":", 1)[1].split("/")[0])
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        proc = make_up.start(wait=False)
        assert proc.wait(60) == 1
    output = make_up.output()
    assert f"pier | cannot start: port {port} is already in use; set {variable} to use another" in output
    assert "Traceback" not in output
    make_up.assert_nothing_left()


def test_a_second_make_up_on_the_same_home_leaves_the_first_running(make_up: MakeUp, tmp_path: Path) -> None:
    first = make_up.start()
    second = MakeUp(tmp_path / "second")
    second.home, second.env = make_up.home, {**make_up.env, "PIER_API_PORT": str(free_port())}
    second.log = tmp_path / "second.log"
    assert second.start(wait=False).wait(60) == 1
    assert f"another `make up` (pid {first.pid}) is running" in second.output()
    assert make_up.client().models() is not None  # the first still answers, its servers untouched
    os.killpg(first.pid, signal.SIGTERM)
    make_up.stopped_within_bound()
    make_up.assert_nothing_left()


def test_a_home_with_a_comma_and_a_long_path_starts_and_serves(tmp_path: Path) -> None:
    # PostgreSQL read its socket folder as a comma-separated list, and a socket path is at most
    # 107 bytes: either stopped make up with a lock-file error from the database's log.
    root = tmp_path / ("models,team-" + "x" * 100)
    root.mkdir()
    up = MakeUp(root)
    try:
        proc = up.start()
        assert up.client().models() == []
        # Nothing but Pier's own lines: no library's warning (platformdirs' XDG_RUNTIME_DIR one was).
        assert "Warning" not in up.output(), up.output()
        os.killpg(proc.pid, signal.SIGTERM)
        assert up.stopped_within_bound() == 0
        up.assert_nothing_left()
    finally:
        up.kill_all()


def test_make_up_runs_the_gateway_processes_asked_for_on_one_port_and_each_counts_its_own_calls(
    make_up: MakeUp,
) -> None:
    make_up.env["PIER_GATEWAY_PROCESSES"] = "3"
    proc = make_up.start()
    assert "(3 processes)" in make_up.output(), make_up.output()
    gateways = [
        pid for pid in _platform_pids(make_up.home) if b"services.gateway" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert len(gateways) == 3, _describe(set(gateways))
    make_up.deploy_hello()
    url = make_up.client().gateway_url + "/models/hello/latest/model"
    for _ in range(30):  # a connection each: the kernel spreads connections, not requests
        request = urllib.request.Request(url, data=b'{"data": {"name": "Ada"}}', method="POST")
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status == 200
    counted = []
    base = int(make_up.env["PIER_GATEWAY_METRICS_PORT"])
    for port in (base, base + 1, base + 2):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
            lines = page.read().decode().splitlines()
        counted.append(sum(float(x.rsplit(" ", 1)[1]) for x in lines if x.startswith("pier_gateway_requests_total{")))
    assert sum(counted) == 30, counted
    assert sum(1 for n in counted if n) >= 2, f"calls per gateway process: {counted}"
    os.killpg(proc.pid, signal.SIGTERM)
    assert make_up.stopped_within_bound() == 0
    make_up.assert_nothing_left()
