"""Which uid an instance gets: the same for the same instance, never one another instance holds."""

from __future__ import annotations

from pier.isolation import BUILD_UID, UID_BASE, UID_COUNT, instance_uid


def test_an_instance_gets_the_same_uid_from_its_id_and_never_a_taken_one() -> None:
    first = instance_uid("0123abcd-v1-1-beef", [])
    assert first == instance_uid("0123abcd-v1-1-beef", [])
    assert UID_BASE <= first < UID_BASE + UID_COUNT and first != BUILD_UID
    second = instance_uid("0123abcd-v1-1-beef", [first])
    assert second != first and UID_BASE <= second < UID_BASE + UID_COUNT


def test_the_range_wraps_around_to_find_a_free_uid() -> None:
    last = UID_BASE + UID_COUNT - 1
    taken = [uid for uid in range(UID_BASE, UID_BASE + UID_COUNT) if uid != UID_BASE]
    assert instance_uid("any", taken) == UID_BASE
    assert last in taken
