"""Acknowledging MQTT messages in order, and only once their data is committed."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class Pending:
    generation: int
    mid: int
    qos: int
    topic: str = ""
    received_at: float = field(default_factory=time.monotonic)
    done: bool = False
    attempts: int = 0


class AckQueue:
    """PUBACKs go out in the order the PUBLISHes arrived (MQTT 5 §4.6), each only after
    its message is durably handled. Acks from an earlier connection are never sent: the
    broker redelivers those messages on the new connection under new ids.

    The connection a message came on is counted in paho's network thread when the message
    arrives (`generation`), not when the event loop gets to it: messages of the old
    connection can still be waiting in the event loop's queue when the new one is up, and
    their ids mean other messages (or nothing) on the new connection."""

    def __init__(self, send: Callable[[int, int, int], object]) -> None:
        self._send = send
        self._queue: deque[Pending] = deque()
        self.generation = 0

    def __len__(self) -> int:
        return len(self._queue)

    def new_connection(self, generation: int) -> None:
        """Connection `generation` is up: whatever an earlier one left is void."""
        if generation > self.generation:
            self.generation = generation
            self._queue.clear()

    def track(self, mid: int, qos: int, *, generation: int, topic: str = "") -> Pending:
        self.new_connection(generation)
        entry = Pending(generation, mid, qos, topic)
        if qos > 0 and generation == self.generation:
            self._queue.append(entry)
        return entry

    def complete(self, entry: Pending) -> None:
        entry.done = True
        queue = self._queue
        while queue and queue[0].done:
            head = queue.popleft()
            if head.generation == self.generation:
                self._send(head.mid, head.qos, head.generation)

    def oldest(self) -> Pending | None:
        """The message every later acknowledgement waits for, if any."""
        for entry in self._queue:
            if not entry.done:
                return entry
        return None
