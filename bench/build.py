"""Build speed: cold and cached builds of a model needing numpy and scikit-learn, and deploy-to-first-200
with the cache warm.

Run: `.venv/bin/python bench/build.py [--rounds N]`. Everything is measured in this one run, against
real NATS and PostgreSQL started here and the real builder:
- cold: an empty uv cache (UV_CACHE_DIR points at a fresh temporary folder) and an empty environment
  store, so uv downloads and installs every wheel (the network is part of the figure);
- cached: the same requirements with different code, so the environment is reused and only the code,
  the static checks and the import check run;
- deploy-to-first-200: the whole platform (the five services), a new model API with the cached
  environment, timed from `POST /v1/models` to its first answered call.
Prints medians and the ratio cached/cold, the baseline being the cold build of this run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec

from infra.embedded import NatsServer, PostgresServer, free_port
from infra.supervisor import Platform
from pier import bus, config
from pier.artifacts import Store
from pier.client import ApiError, Client
from pier.config import Settings
from pier.events import BuildSucceeded, StartBuild
from pier.spec import Entrypoint
from services.builder import sources
from services.builder.worker import Builder

TOKEN = "pier_bench_token"
REQUIREMENTS = "numpy\nscikit-learn\n"
PREDICT = """import numpy as np
from sklearn.linear_model import LinearRegression

MODEL = LinearRegression().fit(np.array([[0.0], [1.0], [2.0]]), np.array([0.0, 2.0, 4.0]))
ROUND = {round!r}


def predict(x=1.0):
    return float(MODEL.predict(np.array([[x]]))[0])
"""
ENTRYPOINT = Entrypoint(file="predict.py", function="predict")


def write_code(folder: Path, round_id: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "predict.py").write_text(PREDICT.format(round=round_id))
    (folder / "requirements.txt").write_text(REQUIREMENTS)
    return folder


async def timed_build(settings: Settings, work: Path, label: str) -> float:
    """One build through the builder's own handler; seconds from command to BuildSucceeded."""
    store = Store(settings.artifacts)
    source = store.put_source(sources.pack(write_code(work / label, label)))
    cmd = StartBuild(model_id=uuid.uuid4().hex, version=1, source=source, entrypoint=ENTRYPOINT)
    async with bus.connect(settings, "bench-builder") as b:
        outcomes: list[object] = []
        original = b.publish

        async def publish(msg: object, *args: object, **kwargs: object) -> None:
            outcomes.append(msg)
            await original(msg, *args, **kwargs)  # type: ignore[arg-type]

        b.publish = publish  # type: ignore[method-assign]
        started = time.perf_counter()
        await Builder(b, settings).handle(cmd)
        elapsed = time.perf_counter() - started
    if not any(isinstance(o, BuildSucceeded) for o in outcomes):
        raise SystemExit(f"build {label} failed: {outcomes[-1]}")
    return elapsed


async def deploy_to_first_200(platform: Platform, work: Path, label: str) -> float:
    s = platform.settings
    client = Client(api_url=s.api_url, gateway_url=s.gateway_url, token=TOKEN)
    digest = client.upload_source(write_code(work / label, label))
    started = time.perf_counter()
    client.create_model(
        {"name": label, "source": digest, "file": "predict.py", "function": "predict", "access": "unrestricted"}
    )
    deadline = started + 600
    while time.perf_counter() < deadline:
        try:
            # One attempt each: this loop is the polling, and it times the first answer itself.
            if abs(client.predict(label, data={"x": 3.0}, deadline=0)["result"] - 6.0) < 1e-6:
                return time.perf_counter() - started
        except (ApiError, OSError):
            pass
        model = client.model(label)
        if model["state"] == "failed":
            raise SystemExit(f"deploy {label} failed: {model['reason']}")
        await asyncio.sleep(0.05)
    raise SystemExit(f"deploy {label} did not answer within 600 s")


async def main(rounds: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="pier-bench-build-"))
    os.chmod(root, 0o755)  # the embedded PostgreSQL runs as its own user when we are root
    nats_server, postgres = NatsServer(root / "nats"), PostgresServer(root / "pg")
    nats_server.start()
    postgres.start()
    try:
        cold: list[float] = []
        for n in range(rounds):
            # A fresh uv cache and a fresh artifact store: nothing downloaded, no environment built.
            os.environ["UV_CACHE_DIR"] = str(root / f"uv-cold-{n}")
            home = root / f"cold-{n}"
            settings = config.load(env={}, home=home, nats_url=nats_server.url, database_url=postgres.url())
            cold.append(await timed_build(settings, root / "code", f"cold-{n}"))
            print(f"cold build {n + 1}: {cold[-1]:.2f} s", flush=True)
        # The last cold round's cache and store are now warm.
        cached = []
        for n in range(rounds):
            cached.append(await timed_build(settings, root / "code", f"cached-{n}"))
            print(f"cached build {n + 1}: {cached[-1]:.2f} s", flush=True)

        database = "bench"
        postgres.create_database(database)
        platform_settings = msgspec.structs.replace(
            settings,
            database_url=postgres.url(database),
            api_port=free_port(),
            gateway_port=free_port(),
            gateway_metrics_port=0,
        )
        home.mkdir(parents=True, exist_ok=True)
        (home / "credentials.json").write_text(
            json.dumps({"api_url": platform_settings.api_url, "gateway_url": platform_settings.gateway_url})
        )
        platform = Platform(platform_settings, TOKEN)
        deploys = []
        try:
            platform.start()
            await platform.wait_healthy()
            for n in range(rounds):
                deploys.append(await deploy_to_first_200(platform, root / "code", f"deploy-{n}"))
                print(f"deploy to first 200 {n + 1}: {deploys[-1]:.2f} s", flush=True)
        finally:
            platform.stop()
    finally:
        postgres.stop()
        nats_server.stop()
        shutil.rmtree(root, ignore_errors=True)  # a few hundred MiB of environments and uv caches

    cold_m, cached_m, deploy_m = (statistics.median(x) for x in (cold, cached, deploys))
    print()
    print(f"requirements: {REQUIREMENTS.split()}; {rounds} rounds each; medians:")
    print(f"  cold build (empty uv cache and env store): {cold_m:8.2f} s")
    print(f"  cached build (environment reused):         {cached_m:8.2f} s")
    print(f"  ratio cached/cold:                         {cached_m / cold_m:8.3f}")
    print(f"  deploy to first 200, cache warm:           {deploy_m:8.2f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args().rounds))
