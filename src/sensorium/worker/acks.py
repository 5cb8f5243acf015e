"""Acknowledging MQTT messages in order, and only once their data is committed."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

# A message's place in the queue: an int, not an object, so the thousands of messages a
# busy worker holds until their batch commits give the garbage collector nothing to scan
# (docs/benchmarks.md, "MQTT ingest", session 6). Unique per AckQueue; negative for a
# message that needs no ack (QoS 0, or from a connection already gone).
Ticket = int


class Waiting(NamedTuple):
    """The message every later acknowledgement waits for."""

    ticket: Ticket
    topic: str
    received_at: float


class AckQueue:
    """PUBACKs go out in the order the PUBLISHes arrived (MQTT 5 §4.6), each only after
    its message is durably handled. Acks from an earlier connection are never sent: the
    broker redelivers those messages on the new connection under new ids.

    The connection a message came on is counted in paho's network thread when the message
    arrives (`generation`), not when the event loop gets to it: messages of the old
    connection can still be waiting in the event loop's queue when the new one is up, and
    their ids mean other messages (or nothing) on the new connection.

    Each queued message is a plain tuple of numbers and a string (ticket, mid, qos,
    generation, topic, received at), which the collector stops tracking the first time it
    sees it; which of them are done is a set of tickets."""

    def __init__(self, send: Callable[[int, int, int], object]) -> None:
        self._send = send
        self._queue: deque[tuple[Ticket, int, int, int, str, float]] = deque()
        # Done, but behind one that is not.
        self._done: set[Ticket] = set()
        self._next = 0
        self._unacked = 0
        # Tickets below it belong to a connection already gone.
        self._floor = 0
        self.generation = 0

    def __len__(self) -> int:
        return len(self._queue)

    def new_connection(self, generation: int) -> None:
        """Connection `generation` is up: whatever an earlier one left is void."""
        if generation > self.generation:
            self.generation = generation
            self._queue.clear()
            self._done.clear()
            self._floor = self._next

    def track(self, mid: int, qos: int, *, generation: int, topic: str = "") -> Ticket:
        self.new_connection(generation)
        if qos > 0 and generation == self.generation:
            ticket = self._next
            self._next += 1
            self._queue.append((ticket, mid, qos, generation, topic, time.monotonic()))
            return ticket
        self._unacked -= 1
        return self._unacked

    def complete(self, ticket: Ticket) -> None:
        queue = self._queue
        if ticket < self._floor or not queue or ticket < queue[0][0]:
            return  # needs no ack, its connection is gone, or it was acked already
        if ticket != queue[0][0]:
            self._done.add(ticket)
            return
        done = self._done
        send = self._send
        while True:
            _ticket, mid, qos, generation, _topic, _at = queue.popleft()
            send(mid, qos, generation)
            if not queue or not done:
                return
            head = queue[0][0]
            if head not in done:
                return
            done.remove(head)

    def oldest(self) -> Waiting | None:
        """The message every later acknowledgement waits for, if any."""
        for ticket, _mid, _qos, _generation, topic, received_at in self._queue:
            if ticket not in self._done:
                return Waiting(ticket, topic, received_at)
        return None
