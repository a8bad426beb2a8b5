"""`make up`: embedded NATS and PostgreSQL, then the five services, restarted with back-off if they die.

Ctrl-C (or SIGTERM) stops the services, then the model API instances, then the servers: nothing is
left behind. Data stays under PIER_HOME, so the next start finds every model API again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import nats

from infra.embedded import NatsServer, PostgresServer, stop_process
from pier import config
from pier.config import Settings
from pier.service import HEALTH_SUBJECT

SERVICES = ("api", "builder", "scheduler", "monitor", "gateway")


def _say(text: str) -> None:
    print(f"pier | {text}", flush=True)


class Service:
    """One service process, restarted with back-off when it dies on its own."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.backoff = 1.0

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", f"services.{self.name}"], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        self.started = time.monotonic()

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc, signal.SIGTERM, timeout=15)


class Platform:
    """The five services against a NATS server and a database given in `settings`."""

    def __init__(self, settings: Settings, admin_token: str = "") -> None:
        self.settings = settings
        self.log_dir = settings.home / "logs"
        env = {**os.environ, **config.to_env(settings)}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent.parent), env.get("PYTHONPATH")]))
        self.services = {
            name: Service(name, {**env, "PIER_ADMIN_TOKEN": admin_token if name == "api" else ""}, self.log_dir)
            for name in SERVICES
        }

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for service in self.services.values():
            service.start()

    async def wait_healthy(self, within: float = 60.0) -> None:
        nc = await nats.connect(self.settings.nats_url)
        try:
            async with asyncio.timeout(within):
                for name, service in self.services.items():
                    while True:
                        if service.proc and service.proc.poll() is not None:
                            raise RuntimeError(f"{name} exited at start; see {service.log_path}")
                        try:
                            await nc.request(HEALTH_SUBJECT.format(service=name), b"", timeout=0.5)
                            break
                        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                            await asyncio.sleep(0.05)
        finally:
            await nc.close()

    async def supervise(self) -> None:
        """Restart services that die, with back-off (1 s doubling to 30 s, reset after a minute up)."""
        while True:
            await asyncio.sleep(0.5)
            for service in self.services.values():
                if service.proc is None or service.proc.poll() is None:
                    continue
                if time.monotonic() - service.started > 60:
                    service.backoff = 1.0
                _say(f"{service.name} exited with status {service.proc.returncode}; restarting in {service.backoff:g}s")
                await asyncio.sleep(service.backoff)
                service.backoff = min(service.backoff * 2, 30.0)
                service.start()

    def stop(self) -> None:
        for service in reversed(list(self.services.values())):
            service.stop()
        from services.scheduler.runtimes.local import stop_all

        stopped = stop_all(self.settings.home)
        if stopped:
            _say(f"stopped {stopped} model API instance(s)")


def _credentials(settings: Settings) -> dict[str, str]:
    path = settings.home / "credentials.json"
    token = ""
    if path.exists():
        token = json.loads(path.read_text()).get("token", "")
    creds = {
        "api_url": settings.api_url,
        "gateway_url": settings.gateway_url,
        "token": token or f"pier_{secrets.token_urlsafe(32)}",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(creds, f, indent=2)
    return creds


async def up() -> None:
    settings = config.load()
    started = time.monotonic()
    settings.home.mkdir(parents=True, exist_ok=True)
    nats_server = NatsServer(settings.home / "nats", port=urlparse(settings.nats_url).port or 4222)
    pg_url = urlparse(settings.database_url)
    pg = PostgresServer(settings.home / "postgres", port=pg_url.port or 5432)
    creds = _credentials(settings)
    platform = Platform(settings, creds["token"])
    try:
        nats_server.start()
        pg.start()
        pg.create_database(pg_url.path.lstrip("/") or "pier")
        platform.start()
        await platform.wait_healthy()
        _say(f"ready in {time.monotonic() - started:.1f}s")
        _say(f"management api:    {settings.api_url}")
        _say(f"gateway:           {settings.gateway_url}")
        _say(f"admin token:       {creds['token']}")
        _say(f"credentials:       {settings.home / 'credentials.json'} (the pier CLI reads it)")
        _say(f"service logs:      {platform.log_dir}/")
        _say("press Ctrl-C to stop")
        await platform.supervise()
    finally:
        _say("stopping ...")
        platform.stop()
        pg.stop()
        nats_server.stop()
        _say("stopped")


def main() -> None:
    loop = asyncio.new_event_loop()
    task = loop.create_task(up())
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        loop.run_until_complete(task)
    loop.close()


if __name__ == "__main__":
    main()
