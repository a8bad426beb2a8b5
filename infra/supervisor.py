"""`make up`: embedded NATS and PostgreSQL, then the five services, restarted with back-off if they die.

Ctrl-C, SIGTERM to the supervisor or to its whole process group stops the services, then the model
API instances and the servers, within about 10 s whatever state they are in (bounded waits, then
SIGKILL): nothing is left behind. Killed by SIGKILL, the supervisor takes its services with it
(they die with their parent), and the next start stops the servers it left and adopts the
instances. Data stays under PIER_HOME, so the next start finds every model API again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import nats
import nats.errors

from infra import processes
from infra.credentials import DATABASE_PASSWORD, DATABASE_ROLE, SUPERVISOR, Credentials, nats_permissions
from infra.embedded import NatsServer, NotOurServer, PostgresServer, port_taken, write_secret
from pier import config
from pier.config import Settings
from pier.service import HEALTH_SUBJECT
from services.scheduler.runtimes.local import instances_root, stop_all

SERVICES = ("api", "builder", "scheduler", "monitor", "gateway")
# PIER_REPLICAS runs this many of each service at most: a trial of the replicated shape on one machine.
MAX_REPLICAS = 8
MAX_GATEWAYS = 32
# Each stage of a stop waits this long before it escalates to SIGKILL.
SERVICE_STOP_TIMEOUT = 4.0
INSTANCE_STOP_TIMEOUT = 3.0


# The line `make up` prints once every service answers, as scripts wait for it: whole, since
# "ready in" alone is also in "port ... is already in use".
READY = "pier | ready in "


def _say(text: str) -> None:
    print(f"pier | {text}", flush=True)


class StartFailed(Exception):
    """`make up` cannot start; the message says why and what to change."""


class Service:
    """One service process, restarted with back-off when it dies on its own. `name` is the service
    (`scheduler`) for the first replica, with the replica's number after it for the others
    (`scheduler-2`): it names the log file and the lines the supervisor prints."""

    def __init__(self, module: str, replica: int, env: dict[str, str], log_dir: Path) -> None:
        self.module = module
        self.name = module if replica == 1 else f"{module}-{replica}"
        self.env = env
        self.log_path = log_dir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.backoff = 1.0
        self.restart_at: float | None = None  # when a dead service is due to start again

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", f"services.{self.module}"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Dies with the supervisor even when it is killed with SIGKILL: no service is left
                # running against servers nobody stops.
                preexec_fn=processes.die_with_parent(signal.SIGKILL),
            )
        self.started = time.monotonic()


class Platform:
    """The five services against a NATS server and a database given in `settings`.

    With `credentials` (as `make up` runs it), each service connects to NATS as its own user and
    reads its passwords from files; without (the tests), they use the URLs in `settings` as they are."""

    def __init__(self, settings: Settings, admin_token: str = "", credentials: Credentials | None = None) -> None:
        self.settings = settings
        self.credentials = credentials
        self.log_dir = settings.home / "logs"
        env = {**os.environ, **config.to_env(settings)}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent.parent), env.get("PYTHONPATH")]))
        # No service but the api has any business with the admin token.
        env["PIER_ADMIN_TOKEN"] = env["PIER_ADMIN_TOKEN_FILE"] = ""
        admin = self._admin_token_env(admin_token)
        self.services: dict[str, Service] = {}
        for name in SERVICES:
            own = {**env, **self._credentials_env(name), **(admin if name == "api" else {})}
            for replica in range(1, _count(settings, name) + 1):
                service = Service(name, replica, {**own, **_replica_env(settings, name, replica)}, self.log_dir)
                self.services[service.name] = service

    def _admin_token_env(self, token: str) -> dict[str, str]:
        if self.credentials is None:
            return {"PIER_ADMIN_TOKEN": token}
        return {"PIER_ADMIN_TOKEN_FILE": str(self.credentials.keep_admin_token(token))}

    def _credentials_env(self, name: str) -> dict[str, str]:
        if self.credentials is None:
            return {}
        nats_url, pg_url = urlparse(self.settings.nats_url), urlparse(self.settings.database_url)
        return {
            "PIER_NATS_URL": f"nats://{name}@{nats_url.hostname}:{nats_url.port or 4222}",
            "PIER_NATS_PASSWORD_FILE": str(self.credentials.file(f"nats-{name}")),
            "PIER_DATABASE_URL": f"postgresql://{DATABASE_ROLE}@{pg_url.hostname}:{pg_url.port or 5432}{pg_url.path}",
            "PIER_DATABASE_PASSWORD_FILE": str(self.credentials.file(DATABASE_PASSWORD)),
        }

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for service in self.services.values():
            service.start()

    async def wait_healthy(self, within: float = 60.0) -> None:
        if self.credentials is None:
            nc = await nats.connect(self.settings.nats_url)
        else:
            password = self.credentials.password(f"nats-{SUPERVISOR}")
            nc = await nats.connect(self.settings.nats_url, user=SUPERVISOR, password=password)
        try:
            async with asyncio.timeout(within):
                for name, service in self.services.items():
                    while True:
                        if service.proc and service.proc.poll() is not None:
                            raise StartFailed(f"{name} exited at start; see {service.log_path}")
                        try:
                            # Any replica may answer (a standby scheduler never does: the leader).
                            await nc.request(HEALTH_SUBJECT.format(service=service.module), b"", timeout=0.5)
                            break
                        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                            await asyncio.sleep(0.05)
        finally:
            await nc.close()

    async def supervise(self) -> None:
        """Restart services that die, with back-off (1 s doubling to 30 s, reset after a minute up);
        each service on its own clock, so one in back-off delays no other's restart."""
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for service in self.services.values():
                if service.proc is None or service.proc.poll() is None:
                    continue
                if service.restart_at is None:
                    if now - service.started > 60:
                        service.backoff = 1.0
                    status = service.proc.returncode
                    _say(f"{service.name} exited with status {status}; restarting in {service.backoff:g}s")
                    service.restart_at = now + service.backoff
                    service.backoff = min(service.backoff * 2, 30.0)
                elif now >= service.restart_at:
                    service.restart_at = None
                    service.start()

    def stop_services(self) -> None:
        """All services at once; any still running after the timeout is killed."""
        procs = [s.proc for s in self.services.values() if s.proc is not None]
        processes.stop_children(procs, signal.SIGTERM, SERVICE_STOP_TIMEOUT)

    def stop_instances(self) -> int:
        """Every model API instance, those no pid file names included (a scheduler killed while it
        started one). Only once the scheduler is stopped: it would start them again."""
        stopped = stop_all(self.settings.home, INSTANCE_STOP_TIMEOUT)
        unrecorded = processes.processes_under(instances_root(self.settings.home))
        processes.stop_pids(unrecorded, signal.SIGKILL, INSTANCE_STOP_TIMEOUT)
        return stopped + len(unrecorded)

    def stop_unrecorded_instances(self) -> int:
        """Instances no pid file names, left by a scheduler killed while it started them (with its
        supervisor, say): nothing would adopt them, and they would hold their ports and GPUs until
        the next stop. Before the scheduler starts, which adopts the recorded ones."""
        root = instances_root(self.settings.home)
        unrecorded = processes.unrecorded_under(root, root.glob("*/pid"))
        processes.stop_pids(unrecorded, signal.SIGKILL, INSTANCE_STOP_TIMEOUT)
        return len(unrecorded)

    def stop(self) -> None:
        self.stop_services()
        stopped = self.stop_instances()
        if stopped:
            _say(f"stopped {stopped} model API instance(s)")


def _credentials_file(settings: Settings) -> Path:
    """credentials.json: the URLs and the admin token the CLI and the Python client read (0600)."""
    path = settings.home / "credentials.json"
    token = ""
    if path.exists():
        token = json.loads(path.read_text()).get("token", "")
    creds = {
        "api_url": settings.api_url,
        "gateway_url": settings.gateway_url,
        "token": token or f"pier_{secrets.token_urlsafe(32)}",
    }
    write_secret(path, json.dumps(creds, indent=2))
    return path


def _replica_env(settings: Settings, service: str, replica: int) -> dict[str, str]:
    """What differs between replicas of a service: each gateway's /metrics needs a port of its own
    (a shared one would answer for a random replica at each scrape)."""
    if service != "gateway":
        return {}
    return {"PIER_GATEWAY_METRICS_PORT": str(_gateway_metrics_ports(settings)[replica - 1])}


def _count(settings: Settings, service: str) -> int:
    """Processes of `service`: PIER_REPLICAS of each, and the gateway one per core besides."""
    return config.gateway_processes(settings) if service == "gateway" else settings.replicas


def _gateway_metrics_ports(settings: Settings) -> list[int]:
    return [settings.gateway_metrics_port + k for k in range(config.gateway_processes(settings))]


def _check_ports(settings: Settings, nats_port: int, pg_port: int) -> None:
    """Fail at once, naming the port and the setting that moves it, rather than time out later or
    talk to whatever holds it."""
    if not 1 <= settings.replicas <= MAX_REPLICAS:
        raise StartFailed(f"PIER_REPLICAS must be between 1 and {MAX_REPLICAS}, not {settings.replicas}")
    if not 0 <= settings.gateway_processes <= MAX_GATEWAYS:
        raise StartFailed(
            f"PIER_GATEWAY_PROCESSES must be between 0 (one per CPU) and {MAX_GATEWAYS},"
            f" not {settings.gateway_processes}"
        )
    metrics = [
        (settings.gateway_metrics_host, port, "PIER_GATEWAY_METRICS_PORT") for port in _gateway_metrics_ports(settings)
    ]
    for host, port, variable in (
        (settings.api_host, settings.api_port, "PIER_API_PORT"),
        (settings.gateway_host, settings.gateway_port, "PIER_GATEWAY_PORT"),
        *metrics,
        ("127.0.0.1", nats_port, "PIER_NATS_URL"),
        ("127.0.0.1", pg_port, "PIER_DATABASE_URL"),
    ):
        if port_taken(port, host):
            raise StartFailed(f"port {port} is already in use; set {variable} to use another")


class Up:
    """One `make up`: the servers, the services, and their stop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock()  # before anything is written: a second `make up` must change nothing
        home = settings.home
        credentials = Credentials(home)
        self.nats_port = urlparse(settings.nats_url).port or 4222
        pg_url = urlparse(settings.database_url)
        self.pg_port = pg_url.port or 5432
        self.database = pg_url.path.lstrip("/") or "pier"
        self.nats = NatsServer(
            home / "nats",
            port=self.nats_port,
            users=credentials.nats_users(SERVICES),
            permissions=nats_permissions(SERVICES),
        )
        self.pg = PostgresServer(home / "postgres", port=self.pg_port, password=credentials.postgres())
        self.database_password = credentials.database()
        self.credentials_path = _credentials_file(settings)
        token = json.loads(self.credentials_path.read_text())["token"]
        self.platform = Platform(settings, token, credentials)

    def check(self) -> None:
        # A server an earlier, killed supervisor left running holds our port: stop it first.
        self.nats.stop_stale()
        self.pg.stop_stale()
        _check_ports(self.settings, self.nats_port, self.pg_port)

    def _lock(self) -> None:
        """One supervisor per PIER_HOME: the lock is the kernel's, so it is released however we die,
        and a running platform's servers are never taken for stale ones."""
        path = self.settings.home / "supervisor.lock"
        self.lock = open(path, "a+")  # noqa: SIM115 - held for the supervisor's whole life
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.lock.seek(0)
            holder = self.lock.read().strip() or "?"
            home = self.settings.home
            raise StartFailed(f"another `make up` (pid {holder}) is running with PIER_HOME={home}") from None
        self.lock.truncate(0)
        self.lock.write(str(os.getpid()))
        self.lock.flush()

    def start_servers(self) -> None:
        try:
            self.nats.start()
            self.pg.start()
        except NotOurServer as exc:
            raise StartFailed(str(exc)) from None
        self.pg.give_database(self.database, DATABASE_ROLE, self.database_password)

    def stop(self) -> None:
        self.platform.stop_services()
        # Instances need neither server: stop them and the servers side by side.
        with ThreadPoolExecutor(3) as pool:
            instances = pool.submit(self.platform.stop_instances)
            pool.submit(self.pg.stop)
            pool.submit(self.nats.stop)
        if stopped := instances.result():
            _say(f"stopped {stopped} model API instance(s)")


async def up() -> None:
    settings = config.load()
    started = time.monotonic()
    settings.home.mkdir(parents=True, exist_ok=True)
    run = Up(settings)
    run.check()
    try:
        run.start_servers()
        if swept := run.platform.stop_unrecorded_instances():
            _say(f"stopped {swept} model API instance(s) that no pid file names")
        run.platform.start()
        await run.platform.wait_healthy()
        _say(f"ready in {time.monotonic() - started:.1f}s")
        if settings.replicas > 1:
            _say(f"replicas:          {settings.replicas} of each service (one scheduler leads)")
        _say(f"management api:    {settings.api_url}")
        gateways = config.gateway_processes(settings)
        _say(f"gateway:           {settings.gateway_url}" + (f" ({gateways} processes)" if gateways > 1 else ""))
        _say(f"admin token:       in {run.credentials_path} (the pier CLI reads it)")
        _say(f"service logs:      {run.platform.log_dir}/")
        _say("press Ctrl-C to stop")
        await run.platform.supervise()
    finally:
        _say("stopping ...")
        run.stop()
        _say("stopped")


def main() -> None:
    loop = asyncio.new_event_loop()
    task = loop.create_task(up())
    # SIGHUP is a closed terminal: it stops the platform as Ctrl-C does, rather than kill the
    # supervisor before it can stop the instances.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, task.cancel)
    try:
        loop.run_until_complete(task)
    except asyncio.CancelledError:
        pass
    except (StartFailed, TimeoutError, RuntimeError) as exc:
        _say(f"cannot start: {exc}")
        sys.exit(1)
    finally:
        loop.close()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
