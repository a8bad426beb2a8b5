"""The api's GET /metrics shows the platform's own work: builds, placements, health probes."""

from __future__ import annotations

import re
import urllib.request

from infra.supervisor import Platform
from tests.e2e.conftest import pier
from tests.support import until


def _metrics(platform: Platform) -> str:
    with urllib.request.urlopen(platform.settings.api_url + "/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return str(response.read().decode())


def _value(text: str, sample: str) -> float:
    """The sum over replicas of the sample named `sample` (name and labels, as a query would sum
    `without (replica)`), 0 when absent."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith("#") and re.sub(r'replica="[^"]*",?', "", line).replace("{}", "").startswith(
            sample + " "
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_after_a_deploy_the_api_metrics_show_a_build_a_placement_and_probes(
    platform: Platform,
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    code = tmp_path / "m"
    code.mkdir()
    (code / "predict.py").write_text("def predict():\n    return 1\n")
    done = pier(platform, "deploy", str(code), "--name", "counted", "--unrestricted")
    assert done.returncode == 0, done.stdout + done.stderr

    text = _metrics(platform)
    assert _value(text, 'pier_builder_builds_total{outcome="succeeded"}') >= 1
    assert _value(text, 'pier_builder_build_duration_seconds_count{outcome="succeeded"}') >= 1
    assert _value(text, "pier_scheduler_placements_total") >= 1
    for service in ("builder", "scheduler", "monitor"):
        assert _value(text, f'pier_service_up{{service="{service}"}}') == 1
    # Every sample a service answers with names the replica it came from.
    assert re.search(r'^pier_scheduler_placements_total\{replica="[^"]+-\d+"\} 1$', text, re.M), text
    # The deploy returned once an instance was ready, which took passing probes.
    await until(lambda: _value(_metrics(platform), 'pier_monitor_probes_total{outcome="healthy"}') >= 1)
