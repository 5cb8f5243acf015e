"""Acknowledging MQTT messages in order, and only once their data is committed."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Pending:
    generation: int
    mid: int
    qos: int
    done: bool = False


class AckQueue:
    """PUBACKs go out in the order the PUBLISHes arrived (MQTT 5 §4.6), each only after
    its message is durably handled. Acks from an earlier connection are never sent: the
    broker redelivers those messages on the new connection under new ids."""

    def __init__(self, send: Callable[[int, int], object]) -> None:
        self._send = send
        self._queue: deque[_Pending] = deque()
        self.generation = 0

    def __len__(self) -> int:
        return len(self._queue)

    def new_connection(self) -> None:
        self.generation += 1
        self._queue.clear()

    def track(self, mid: int, qos: int) -> _Pending:
        entry = _Pending(self.generation, mid, qos)
        if qos > 0:
            self._queue.append(entry)
        return entry

    def complete(self, entry: _Pending) -> None:
        entry.done = True
        queue = self._queue
        while queue and queue[0].done:
            head = queue.popleft()
            if head.generation == self.generation:
                self._send(head.mid, head.qos)
