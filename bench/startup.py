"""Startup figures: seconds from `make up` (venv installed) to all services healthy, and from
`pier deploy examples/hello` (environment cached) to the first 200.

    .venv/bin/python -m bench.startup [--runs 3]

Each figure is the median of `--runs` runs, each on a fresh PIER_HOME with free ports, printed
beside a baseline measured in the same run: starting a bare Python interpreter (for the platform),
and one HTTP call to the already-running example (for the deploy).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from infra.embedded import free_port
from infra.supervisor import READY

ROOT = Path(__file__).parent.parent


def _env(home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PIER_HOME": str(home),
        "PIER_API_PORT": str(free_port()),
        "PIER_GATEWAY_PORT": str(free_port()),
        "PIER_NATS_URL": f"nats://127.0.0.1:{free_port()}",
        "PIER_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/pier",
    }


def _start(env: dict[str, str]) -> tuple[subprocess.Popen[str], float]:
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.supervisor"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if READY in line:
            return proc, time.perf_counter() - started
    raise RuntimeError("the platform did not become ready")


def _deploy(env: dict[str, str], name: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pier", "deploy", str(ROOT / "examples" / "hello"), "--name", name],
        env=env,
        check=True,
        capture_output=True,
    )
    creds = json.loads((Path(env["PIER_HOME"]) / "credentials.json").read_text())
    url = f"{creds['gateway_url']}/models/{name}/latest/model"
    request = urllib.request.Request(url, data=b'{"data": {}}', headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        assert response.status == 200
    return time.perf_counter() - started


def _call(env: dict[str, str], name: str) -> float:
    creds = json.loads((Path(env["PIER_HOME"]) / "credentials.json").read_text())
    url = f"{creds['gateway_url']}/models/{name}/latest/model"
    started = time.perf_counter()
    request = urllib.request.Request(url, data=b'{"data": {}}', headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request):
        pass
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    up, deploy, python, call = [], [], [], []
    for i in range(runs):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        python.append(time.perf_counter() - t)
        with tempfile.TemporaryDirectory() as home:
            env = _env(Path(home))
            proc, seconds = _start(env)
            try:
                up.append(seconds)
                _deploy(env, "warm")  # fills the environment cache
                deploy.append(_deploy(env, f"hello-{i}"))
                call.append(_call(env, f"hello-{i}"))
            finally:
                proc.send_signal(signal.SIGINT)
                proc.wait(60)

    def runs_of(xs: list[float]) -> str:
        return ", ".join(f"{x:.2f}" for x in xs)

    print(f"make up -> all healthy:            median {statistics.median(up):.2f} s  (runs: {runs_of(up)})")
    print(f"  baseline, bare python start:     median {statistics.median(python):.3f} s")
    print(f"pier deploy (cached) -> first 200: median {statistics.median(deploy):.2f} s  (runs: {runs_of(deploy)})")
    print(f"  baseline, one call once ready:   median {statistics.median(call) * 1000:.1f} ms")
    print("aim: under 5 s and under 5 s")


if __name__ == "__main__":
    main()
