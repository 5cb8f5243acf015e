"""A device's outbox: readings waiting to be sent, and the telemetry documents built
from them (one timestamped reading, or a PROTOCOL batch for a backfill)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice

import orjson

from sensorium.protocol import MAX_BATCH_ENTRIES, MAX_PAYLOAD_BYTES


@dataclass(frozen=True, slots=True)
class Entry:
    """One sample: the device's clock (epoch ms) and what it measured then."""

    ts: int
    values: Mapping[str, float]

    def document(self) -> dict[str, object]:
        return {"ts": self.ts, "values": dict(self.values)}


@dataclass(frozen=True, slots=True)
class Document:
    """An encoded telemetry document and how many entries (and points) it carries."""

    payload: bytes
    entries: int
    points: int


def next_document(
    entries: Iterable[Entry],
    *,
    max_entries: int = MAX_BATCH_ENTRIES,
    max_bytes: int = MAX_PAYLOAD_BYTES,
) -> Document | None:
    """The document for the oldest entries: a single `{ts, values}` object when only one
    is waiting, else a batch of as many as fit in `max_entries` and `max_bytes`."""
    parts: list[bytes] = []
    points = 0
    size = 2  # "[" and "]"
    for entry in islice(entries, max_entries):
        part = orjson.dumps(entry.document())
        grown = size + len(part) + (1 if parts else 0)
        if grown > max_bytes:
            if not parts:
                raise ValueError(f"one entry alone is {len(part)} bytes (limit {max_bytes})")
            break
        parts.append(part)
        size = grown
        points += len(entry.values)
    if not parts:
        return None
    if len(parts) == 1:
        return Document(parts[0], 1, points)
    return Document(b"[" + b",".join(parts) + b"]", len(parts), points)


def build_batches(
    entries: Iterable[Entry],
    *,
    max_entries: int = MAX_BATCH_ENTRIES,
    max_bytes: int = MAX_PAYLOAD_BYTES,
) -> list[Document]:
    """All of `entries`, in order, as the documents a backfill sends."""
    pending = deque(entries)
    documents: list[Document] = []
    while (doc := next_document(pending, max_entries=max_entries, max_bytes=max_bytes)) is not None:
        documents.append(doc)
        for _ in range(doc.entries):
            pending.popleft()
    return documents


class Outbox:
    """Readings not yet acknowledged, oldest first, bounded like a device's flash buffer:
    when full the oldest are dropped (and counted)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._entries: deque[Entry] = deque()
        self._capacity = capacity
        self.dropped_entries = 0
        self.dropped_points = 0
        self.points = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries)

    def append(self, entry: Entry) -> None:
        if len(self._entries) >= self._capacity:
            lost = self._entries.popleft()
            self.dropped_entries += 1
            self.dropped_points += len(lost.values)
            self.points -= len(lost.values)
        self._entries.append(entry)
        self.points += len(entry.values)

    def next_document(self) -> Document | None:
        return next_document(self._entries)

    def remove_sent(self, document: Document) -> None:
        """Forget the oldest entries once the document holding them is acknowledged."""
        for _ in range(document.entries):
            self.points -= len(self._entries.popleft().values)
