"""The outbox and the documents built from it: what a backfill sends is valid protocol,
in order, with its timestamps, within the batch limits."""

from __future__ import annotations

import orjson
import pytest

from sensorium.protocol import MAX_BATCH_ENTRIES, MAX_PAYLOAD_BYTES, parse_telemetry
from sensorium.simulator.buffer import Entry, Outbox, build_batches, next_document

NOW = 1_763_900_000_000


def entries(n: int, start: int = NOW - 3_600_000, keys: int = 3) -> list[Entry]:
    return [Entry(start + i * 1000, {f"k{j}": i + j / 10 for j in range(keys)}) for i in range(n)]


def test_a_backfill_is_split_into_valid_batches_of_at_most_1000_entries() -> None:
    waiting = entries(2500)
    documents = build_batches(waiting)
    assert [d.entries for d in documents] == [1000, 1000, 500]
    parsed = [parse_telemetry(d.payload, now_ms=NOW) for d in documents]
    points = [(r.ts, r.key, r.value) for readings in parsed for r in readings]
    expected = [(e.ts, k, v) for e in waiting for k, v in e.values.items()]
    assert points == expected  # every reading, in order, at the time it was taken
    assert [d.points for d in documents] == [3000, 3000, 1500]
    assert all(len(d.payload) <= MAX_PAYLOAD_BYTES for d in documents)


def test_batches_also_respect_the_size_limit() -> None:
    wide = entries(600, keys=40)  # ~600 bytes an entry: 1000 would not fit in 256 KiB
    documents = build_batches(wide)
    assert all(len(d.payload) <= MAX_PAYLOAD_BYTES for d in documents)
    assert all(d.entries <= MAX_BATCH_ENTRIES for d in documents)
    assert sum(d.entries for d in documents) == 600
    assert len(documents) >= 2
    for d in documents:
        assert len(parse_telemetry(d.payload, now_ms=NOW)) == d.points


def test_a_small_limit_splits_exactly_at_the_boundary() -> None:
    waiting = entries(10, keys=1)
    one = len(orjson.dumps(waiting[0].document()))
    documents = build_batches(waiting, max_bytes=2 + 3 * one + 2)  # "[a,b,c]"
    assert [d.entries for d in documents] == [3, 3, 3, 1]


def test_one_waiting_reading_is_sent_as_a_single_timestamped_object() -> None:
    document = next_document(entries(1))
    assert document is not None
    assert orjson.loads(document.payload) == {
        "ts": NOW - 3_600_000,
        "values": {"k0": 0.0, "k1": 0.1, "k2": 0.2},
    }
    assert next_document([]) is None


def test_an_entry_larger_than_a_document_is_refused() -> None:
    with pytest.raises(ValueError, match="one entry alone"):
        next_document(entries(1, keys=5), max_bytes=50)


def test_outbox_forgets_only_what_was_acknowledged_and_drops_oldest_when_full() -> None:
    outbox = Outbox(capacity=5)
    for entry in entries(7, keys=2):
        outbox.append(entry)
    assert len(outbox) == 5
    assert (outbox.dropped_entries, outbox.dropped_points, outbox.points) == (2, 4, 10)
    assert next(iter(outbox)).ts == NOW - 3_600_000 + 2000  # the two oldest went
    document = outbox.next_document()
    assert document is not None
    assert document.entries == 5
    outbox.remove_sent(document)
    assert (len(outbox), outbox.points) == (0, 0)
