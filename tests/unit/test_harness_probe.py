"""`python -m pier.harness.probe`, the kubernetes driver's exec probe: 0 when the harness's /ping
answers with the secret from the environment, 1 when it does not (wrong secret, nothing listening)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from pier.harness.loader import Functions
from pier.harness.server import Harness, serve_harness
from pier.spec import Entrypoint


async def probe(port: int, secret: str) -> int:
    env = {**os.environ, "PIER_PORT": str(port), "PIER_INSTANCE_SECRET": secret, "PIER_PROBE_TIMEOUT": "5"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pier.harness.probe", env=env, stderr=asyncio.subprocess.DEVNULL
    )
    return await proc.wait()


async def test_the_probe_passes_only_with_the_instance_secret(tmp_path: Path) -> None:
    (tmp_path / "probed.py").write_text("def predict(x):\n    return x\n")
    entrypoint = Entrypoint(file="probed.py", function="predict")
    harness = Harness(Functions(tmp_path, entrypoint), entrypoint, 1, 10.0, "v-id", 1, secret="s3cret")
    server = await serve_harness(harness, 1024, port=0)
    try:
        assert await probe(server.port, "s3cret") == 0
        assert await probe(server.port, "wrong") == 1
    finally:
        await server.close(grace=0.1)
        sys.modules.pop("probed", None)
    # Nobody listening any more.
    assert await probe(server.port, "s3cret") == 1
