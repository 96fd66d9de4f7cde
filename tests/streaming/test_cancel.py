"""Generation stamps: stale output is recognisable after a barge-in."""
import dataclasses

import pytest

from streaming.cancel import Generation, Stamped


def test_stale_generation_is_detected_after_bump():
    gen = Generation()
    before = gen.stamp("hello")
    assert gen.is_current(before.generation)
    gen.bump("turn_detected")
    assert not gen.is_current(before.generation)
    assert gen.is_current(gen.stamp("again").generation)


def test_bump_returns_new_generation_and_records_reason():
    gen = Generation()
    assert gen.current == 0 and gen.last_reason is None
    assert gen.bump("turn_detected") == 1
    assert gen.bump("client_cancelled") == 2
    assert gen.current == 2 and gen.last_reason == "client_cancelled"


def test_consumer_drops_only_stale_items():
    gen = Generation()
    queued = [gen.stamp(1), gen.stamp(2)]
    gen.bump("turn_detected")
    queued.append(gen.stamp(3))
    assert [s.item for s in queued if gen.is_current(s.generation)] == [3]


def test_stamped_is_immutable():
    s = Stamped(generation=0, item="x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.generation = 1  # type: ignore[misc]
