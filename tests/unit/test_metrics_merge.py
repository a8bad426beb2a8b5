"""Several replicas' metrics on one page (pier.metrics.with_label and merge, which the api's
GET /metrics uses): one HELP and TYPE per family, every replica's samples, no series twice."""

from __future__ import annotations

from pier.metrics import Registry, merge, with_label


def _replica(builds: int) -> str:
    registry = Registry()
    done = registry.counter("pier_builder_builds_total", "Builds finished", ("outcome",))
    done.inc("succeeded", by=builds)
    registry.counter("pier_scheduler_placements_total", "Placements").inc(by=builds)
    return registry.render()


def test_two_replicas_answers_are_one_family_each_with_both_replicas_samples() -> None:
    page = merge([with_label(_replica(3), "replica", "a-1"), with_label(_replica(4), "replica", "b-2")])
    lines = page.splitlines()
    assert lines.count("# HELP pier_builder_builds_total Builds finished") == 1
    assert lines.count("# TYPE pier_builder_builds_total counter") == 1
    assert 'pier_builder_builds_total{replica="a-1",outcome="succeeded"} 3' in lines
    assert 'pier_builder_builds_total{replica="b-2",outcome="succeeded"} 4' in lines
    assert 'pier_scheduler_placements_total{replica="a-1"} 3' in lines
    assert 'pier_scheduler_placements_total{replica="b-2"} 4' in lines
    # Each family's samples follow its own HELP and TYPE, as the exposition format requires.
    placements = lines.index("# TYPE pier_scheduler_placements_total counter")
    assert lines[placements + 1 : placements + 3] == [
        'pier_scheduler_placements_total{replica="a-1"} 3',
        'pier_scheduler_placements_total{replica="b-2"} 4',
    ]


def test_one_process_answering_for_two_services_shows_each_series_once() -> None:
    text = with_label(_replica(1), "replica", "a-1")
    page = merge([text, text])
    assert page.splitlines().count('pier_scheduler_placements_total{replica="a-1"} 1') == 1
