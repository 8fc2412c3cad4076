"""Hash chains: any changed, removed or reordered event is found, and where."""

from __future__ import annotations

import dataclasses
import uuid

from hypothesis import given
from hypothesis import strategies as st

from modeltrail.core.events.chain import check_chains
from modeltrail.core.events.codec import default_codec
from modeltrail.core.events.envelope import EMPTY_STREAM, Draft, Event, StreamHead
from modeltrail.core.events.seal import Sealer


def chain_of(streams: list[int]) -> list[Event]:
    """Sealed events whose streams follow ``streams`` (stream numbers), positions 1…n."""
    sealer = Sealer(default_codec())
    heads: dict[str, StreamHead] = {}
    events = []
    for position, number in enumerate(streams, start=1):
        stream = f"namespace:s{number}"
        draft = Draft(
            "QuotaSet", stream, f"s{number}", {"namespace": f"s{number}", "max_models": position}
        )
        event = sealer.seal(draft, heads.get(stream, EMPTY_STREAM), actor="a", recorded_at=position)
        heads[stream] = StreamHead(event.stream_version, event.hash)
        events.append(event.at(position, position))
    return events


STREAMS = 4
stream_lists = st.lists(st.integers(0, STREAMS - 1), min_size=2, max_size=30)
# More events than streams: some stream has two events (pigeonhole), so every example
# has an event to remove with a later one of its stream after it, and a pair to swap.
repeating_stream_lists = st.lists(st.integers(0, STREAMS - 1), min_size=STREAMS + 1, max_size=30)


@given(stream_lists)
def test_an_untouched_log_verifies(streams: list[int]) -> None:
    checked, problems = check_chains(chain_of(streams))
    assert checked == len(streams)
    assert problems == []


@given(stream_lists, st.data())
def test_a_tampered_payload_is_found_at_its_event(streams: list[int], data: st.DataObject) -> None:
    events = chain_of(streams)
    i = data.draw(st.integers(0, len(events) - 1))
    flipped = bytes([events[i].payload[0] ^ 1]) + events[i].payload[1:]
    events[i] = dataclasses.replace(events[i], payload=flipped)
    _, problems = check_chains(events)
    assert problems and problems[0].position == events[i].position
    assert "altered" in problems[0].rule


@given(repeating_stream_lists, st.data())
def test_a_removed_event_breaks_its_stream(streams: list[int], data: st.DataObject) -> None:
    events = chain_of(streams)
    candidates = [
        i
        for i, e in enumerate(events)
        if any(later.stream == e.stream for later in events[i + 1 :])
    ]
    assert candidates
    i = data.draw(st.sampled_from(candidates))
    removed = events.pop(i)
    _, problems = check_chains(events)
    assert [p.stream for p in problems] == [removed.stream]


@given(repeating_stream_lists, st.data())
def test_reordered_events_of_a_stream_are_found(streams: list[int], data: st.DataObject) -> None:
    events = chain_of(streams)
    pairs = [
        (i, j)
        for i in range(len(events))
        for j in range(i + 1, len(events))
        if events[i].stream == events[j].stream
    ]
    assert pairs
    i, j = data.draw(st.sampled_from(pairs))
    events[i], events[j] = events[j], events[i]
    _, problems = check_chains(events)
    assert events[i].stream in {p.stream for p in problems}


def test_a_rewritten_hash_is_still_caught_by_the_next_link() -> None:
    """Recomputing one event's hash after tampering moves the break to the next event."""
    from modeltrail.core.events.chain import expected_hash

    events = chain_of([0, 0, 0])
    forged = dataclasses.replace(events[1], actor="mallory")
    forged = dataclasses.replace(forged, hash=expected_hash(forged))
    events[1] = forged
    _, problems = check_chains(events)
    assert [p.stream_version for p in problems] == [2]
    assert "prev_hash" in problems[0].rule


def test_event_ids_are_part_of_the_hash() -> None:
    events = chain_of([0])
    other = dataclasses.replace(events[0], event_id=uuid.uuid4())
    _, problems = check_chains([other])
    assert problems
