"""Exponential backoff with jitter for every reconnect (Wi-Fi, MQTT, HTTP): a fleet that
lost its server does not come back all at once."""

import random


class Backoff:
    """Delays of base, 2 x base, 4 x base … up to `max_ms`, each drawn uniformly from the
    upper half of its step ("equal jitter": never zero, never in lockstep)."""

    def __init__(self, base_ms=1000, max_ms=120000, rand=None):
        self.base_ms = base_ms
        self.max_ms = max_ms
        self.attempts = 0
        self._rand = rand or random.getrandbits

    def next_delay_ms(self):
        step = self.base_ms << min(self.attempts, 20)
        if step > self.max_ms:
            step = self.max_ms
        self.attempts += 1
        half = step // 2
        return half + self._uniform(step - half)

    def _uniform(self, n):
        # getrandbits exists on every MicroPython port; randint may not.
        if n <= 0:
            return 0
        return (self._rand(24) * n) >> 24

    def reset(self):
        self.attempts = 0
