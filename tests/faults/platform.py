"""A platform under a steady workload, as the fault suite and the soak (bench/soak) run it: the five
services supervised as `make up` supervises them, servers of its own (a fault restarts them), and
PIER_HOME, where asked, on a size-limited tmpfs (a fault fills it)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from infra.credentials import DATABASE_ROLE
from infra.embedded import NatsServer, PostgresServer, free_port
from infra.supervisor import Platform
from pier import config
from pier.client import Client
from pier.config import Settings
from tests.faults.records import Sampler
from tests.faults.workload import GPUS, Workload, deploy_all

TOKEN = "pier_faults_token"


def _mount(home: Path, size: str) -> str | None:
    """A tmpfs of `size` on `home`; the reason it could not be made, or None."""
    home.mkdir(parents=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(home)],
            capture_output=True,
            text=True,
        )
    except OSError as exc:  # no mount program at all
        return f"cannot mount a tmpfs on PIER_HOME: {exc}"
    return None if done.returncode == 0 else f"cannot mount a tmpfs on PIER_HOME: {done.stderr.strip()}"


def _unmount(home: Path) -> None:
    # Lazy: an instance the stop could not reach must not keep the mount (and the run) hanging.
    subprocess.run(["umount", "--lazy", str(home)], capture_output=True)


def _keep_logs(logs: Path, to: Path) -> None:
    with contextlib.suppress(OSError):
        shutil.copytree(logs, to, dirs_exist_ok=True)


class Supervision:
    """`make up`'s restart loop (Platform.supervise) on a thread of its own, as long as the suite runs.
    Its thread starts the services it restarts and lives until they are stopped: they die with it."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="supervisor", daemon=True)

    def start(self) -> None:
        self.thread.start()
        self.task = asyncio.run_coroutine_threadsafe(self.platform.supervise(), self.loop)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.task.cancel)
        with contextlib.suppress(BaseException):
            self.task.result(timeout=10)


@dataclass
class Faulted:
    platform: Platform
    nats: NatsServer
    postgres: PostgresServer
    workload: Workload
    sampler: Sampler
    client: Client
    mount_refused: str | None

    @property
    def settings(self) -> Settings:
        return self.platform.settings


@contextlib.contextmanager
def under_load(root: Path, home_size: str | None, **workload: float) -> Iterator[Faulted]:
    """The platform in `root`, its four model APIs deployed, the workload running; everything
    stopped on the way out, on failure too. With `home_size`, PIER_HOME is a tmpfs of that size."""
    home = root / "home"
    if home_size is None:
        home.mkdir(parents=True)
        refused: str | None = "PIER_HOME is no mount of its own here"
    else:
        refused = _mount(home, home_size)
    with contextlib.ExitStack() as stack:
        if refused is None:
            stack.callback(_unmount, home)
        # The services' logs outlive the tmpfs, for whoever reads a failure.
        stack.callback(_keep_logs, home / "logs", root / "logs")
        nats = NatsServer(root / "nats")
        nats.start()
        stack.callback(nats.stop)
        postgres = PostgresServer(root / "pg" / "data")
        postgres.start()
        stack.callback(postgres.stop)
        password = secrets.token_urlsafe(24)
        postgres.create_role(DATABASE_ROLE, password)
        postgres.create_database("pier", owner=DATABASE_ROLE)
        settings = config.load(
            env={},
            home=home,
            nats_url=nats.url,
            database_url=f"postgresql://{DATABASE_ROLE}:{password}@127.0.0.1:{postgres.port}/pier",
            api_port=free_port(),
            gateway_port=free_port(),
            gateway_metrics_port=0,
            ack_wait=3.0,
            gpus=GPUS,
        )
        (home / "credentials.json").write_text(
            json.dumps({"api_url": settings.api_url, "gateway_url": settings.gateway_url, "token": TOKEN})
        )
        platform = Platform(settings, TOKEN)
        stack.callback(platform.stop)
        platform.start()
        asyncio.run(platform.wait_healthy())
        supervision = Supervision(platform)
        supervision.start()
        stack.callback(supervision.stop)  # first, so that nothing is restarted while it all stops
        client = Client(api_url=settings.api_url, gateway_url=settings.gateway_url, token=TOKEN)
        source = deploy_all(client)
        sampler = Sampler(home)
        sampler.start()
        stack.callback(sampler.stop)
        workload = Workload(client, source, **workload)
        workload.start()
        stack.callback(workload.stop)
        yield Faulted(platform, nats, postgres, workload, sampler, client, refused)
