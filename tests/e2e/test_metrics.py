"""The api's GET /metrics shows the platform's own work: builds, placements, health probes."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import yaml

from infra.supervisor import Platform
from tests.e2e.conftest import pier
from tests.support import until

DASHBOARD = Path(__file__).parents[2] / "infra" / "grafana" / "pier.json"
ALERTS = Path(__file__).parents[2] / "infra" / "prometheus" / "alerts.yml"


def _metrics(platform: Platform, url: str = "") -> str:
    with urllib.request.urlopen((url or platform.settings.api_url) + "/metrics", timeout=10) as response:
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


def _families(text: str) -> dict[str, str]:
    """Metric family name -> type, from the TYPE lines of a page."""
    return {m[1]: m[2] for m in re.finditer(r"^# TYPE (\S+) (\S+)$", text, re.M)}


async def test_the_grafana_dashboard_and_the_alerts_use_only_metrics_the_platform_serves(platform: Platform) -> None:
    settings = platform.settings
    served = {
        **_families(_metrics(platform)),
        **_families(_metrics(platform, f"http://{settings.gateway_metrics_host}:{settings.gateway_metrics_port}")),
    }
    panels = json.loads(DASHBOARD.read_text())["panels"]
    exprs = [target["expr"] for panel in panels for target in panel["targets"]]
    alerts = [rule["expr"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]
    assert len(exprs) >= 12 and len(alerts) >= 8
    exprs += alerts
    for expr in exprs:
        for name in re.findall(r"\bpier_[a-z0-9_]+", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if base != name:
                assert served.get(base) == "histogram", f"{name} in {expr!r}: no histogram {base} is served"
            else:
                assert name in served, f"{name} in {expr!r} is not served by the api or the gateway"
    # Prometheus conventions: counters end in _total, durations are in seconds.
    for name, kind in served.items():
        assert (kind == "counter") == name.endswith("_total"), f"{name} ({kind})"
        assert "duration" not in name or name.endswith("_seconds"), name
