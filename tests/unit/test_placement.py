"""The placement rules over simulated GPUs: all or nothing, first come first served, no overtaking."""

from __future__ import annotations

import pytest

from services.scheduler.inventory import InventoryError, parse
from services.scheduler.queue import Queue, Request


def req(key: str, seq: int, count: int, instances: int = 1, gpu_type: str = "a100") -> Request:
    return Request(key=key, seq=seq, gpu_type=gpu_type, gpu_count=count, instances=instances)


def test_pier_gpus_declares_simulated_gpus_per_node() -> None:
    inv = parse("node-a=a100:4;node-b=a100:2,t4:1")
    assert inv.simulated
    assert inv.capacity() == {"a100": {"node-a": 4, "node-b": 2}, "t4": {"node-b": 1}}
    assert [g.device for g in inv.gpus if g.node == "node-b"] == ["0", "1", "2"]
    assert parse("a100:2").capacity() == {"a100": {"local": 2}}
    with pytest.raises(InventoryError, match="TYPE:COUNT"):
        parse("a100")


def test_every_gpu_of_an_instance_is_on_one_node() -> None:
    q = Queue(parse("n1=a100:2;n2=a100:2"))
    [placed] = q.submit(req("m", 1, count=2, instances=2))
    assert sorted(s.node for s in placed.slots) == ["n1", "n2"]
    assert all(len(s.gpu_devices) == 2 for s in placed.slots)


def test_a_model_api_starts_only_when_all_its_instances_fit() -> None:
    q = Queue(parse("a100:4"))
    assert q.submit(req("first", 1, count=3))
    assert q.submit(req("second", 2, count=1, instances=2)) == []  # one would fit, two do not
    assert q.totals()["a100"]["free"] == 1  # nothing held while waiting
    assert q.position("second") == ("a100", 1)


def test_the_queue_is_first_come_first_served_and_release_starts_the_head() -> None:
    q = Queue(parse("a100:4"))
    [first] = q.submit(req("first", 1, count=4))
    assert q.submit(req("big", 2, count=3)) == []
    # A small later request would fit in nothing now; and once GPUs free up, the head goes first.
    assert q.submit(req("small", 3, count=1)) == []
    q.release("a100", first.slots)
    placed = q.schedule("a100")
    assert [p.request.key for p in placed] == ["big", "small"]


def test_a_later_request_never_takes_gpus_the_head_could_use() -> None:
    q = Queue(parse("a100:2"))
    assert q.submit(req("running", 1, count=1))
    assert q.submit(req("head", 2, count=2)) == []  # needs both; one is busy
    assert q.submit(req("later", 3, count=1)) == []  # would fit, but would delay the head
    assert [r.key for r in q.waiting["a100"]] == ["head", "later"]


def test_a_later_request_may_use_a_node_the_head_can_never_use() -> None:
    # The head asks for 4 GPUs per instance: the 2-GPU node is of no use to it.
    q = Queue(parse("big=a100:4;small=a100:2"))
    assert q.submit(req("running", 1, count=3))  # only the big node can hold it
    assert q.submit(req("head", 2, count=4)) == []
    [later] = q.submit(req("later", 3, count=2))
    assert later.request.key == "later" and later.slots[0].node == "small"
    assert q.position("head") == ("a100", 1)


def test_types_have_queues_of_their_own() -> None:
    q = Queue(parse("a100:1,t4:1"))
    assert q.submit(req("a", 1, count=1))
    assert q.submit(req("a-waits", 2, count=1)) == []
    assert q.submit(req("t", 3, count=1, gpu_type="t4"))


def test_cancel_takes_a_waiting_request_out_of_line() -> None:
    q = Queue(parse("a100:1"))
    assert q.submit(req("a", 1, count=1))
    assert q.submit(req("b", 2, count=1)) == []
    assert q.submit(req("c", 3, count=1)) == []
    assert q.cancel("b") == "a100"
    assert q.position("c") == ("a100", 1)


def test_restored_state_never_hands_out_a_gpu_in_use() -> None:
    inv = parse("a100:2")
    q = Queue(inv, used=[("local", "0")])
    [placed] = q.submit(req("m", 1, count=1))
    assert placed.slots[0].gpu_devices == ("1",)
    assert q.submit(req("n", 2, count=1)) == []


def test_impossible_requests_are_named_and_plan_tells_start_wait_or_never() -> None:
    q = Queue(parse("n1=a100:2;n2=a100:2"))
    assert q.impossible("a100", 4, 1) is not None  # 4 on one node: no node has 4
    assert "there are: a100" in (q.impossible("h100", 1, 1) or "")
    assert q.plan("a100", 2, 2).decision == "start"
    q.submit(req("m", 1, count=2, instances=2))
    plan = q.plan("a100", 1, 1)
    assert plan.decision == "wait" and plan.position == 1
    q.submit(req("w", 2, count=1))
    assert q.plan("a100", 1, 1).position == 2
    assert q.plan(None, 0, 3).decision == "start"
    assert q.plan("a100", 2, 3).decision == "impossible"
