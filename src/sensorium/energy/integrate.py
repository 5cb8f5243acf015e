"""Energy from readings, spread over time slots: trapezoidal integration of power (W) and
the increases of an energy counter (kWh, may reset to zero), in Wh.

Pure arithmetic, no database: service.py feeds it readings, cached hours and rollups.
Each slot's Wh are a numpy float64 array: a year's summary adds, sums and prices 20
meters x 8,200 hourly slots, which as Python lists took most of its time.
"""

from __future__ import annotations

import operator
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

HOUR_MS = 3_600_000
W_MS_PER_WH = 3_600_000.0

Stretch = tuple[int, int]
Wh = NDArray[np.float64]


def sorted_unique(values: NDArray[np.int64]) -> list[int]:
    """The distinct values in ascending order (np.unique hashes first: slower for the
    nearly sorted cuts of a range)."""
    ordered = np.sort(values)
    if len(ordered) > 1:
        ordered = ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))]
    out: list[int] = ordered.tolist()
    return out


def sequential_sum(values: Wh) -> float:
    """values[0] + values[1] + ... in that order, like sum() over a list (cumsum adds in
    order; ndarray.sum() adds pairwise, which differs in the last bits)."""
    return float(np.cumsum(values)[-1]) if len(values) else 0.0


@dataclass(slots=True)
class Slots:
    """Consecutive stretches of time, slot i = [cuts[i], cuts[i+1]), with the energy and
    the unbridged milliseconds in each."""

    cuts: list[int]
    wh: Wh
    missing_ms: list[int]
    # Each slot's length in ms, computed on first use (may be shared by slots over the
    # same cuts: it is never written to).
    lengths: list[int] | None = field(default=None, compare=False, repr=False)

    def slot_lengths(self) -> list[int]:
        if self.lengths is None:
            self.lengths = list(map(operator.sub, self.cuts[1:], self.cuts[:-1]))
        return self.lengths

    @classmethod
    def over(cls, cuts: Sequence[int]) -> Slots:
        ordered = sorted_unique(np.asarray(cuts, dtype=np.int64))
        return cls(ordered, np.zeros(len(ordered) - 1), [0] * (len(ordered) - 1))

    @property
    def start(self) -> int:
        return self.cuts[0]

    @property
    def end(self) -> int:
        return self.cuts[-1]

    def index(self, ts: int) -> int:
        return bisect_right(self.cuts, ts) - 1

    def inside(self, a: int, b: int) -> bool:
        """Whether [a, b) lies within one slot."""
        i = self.index(a)
        return 0 <= i < len(self.wh) and self.cuts[i + 1] >= b

    def total(self) -> float:
        """The slots' sum, added in time order (as Python's sum() adds: the figures do not
        depend on numpy's pairwise summation)."""
        return sequential_sum(self.wh)

    @classmethod
    def sum_of(cls, cuts: list[int], parts: Sequence[Slots]) -> Slots:
        """Slot-wise sum of slots over these cuts (the same figures as merging them one
        after the other, in one pass: a year of hours from 20 meters)."""
        n = len(cuts) - 1
        if not parts:
            return cls(cuts, np.zeros(n), [0] * n)
        if any(len(p.wh) != n for p in parts):
            raise ValueError("slots of different lengths")
        # Part by part, slot-wise (the same additions in the same order as summing each
        # slot's parts).
        wh = np.zeros(n)
        for p in parts:
            wh += p.wh
        zero = [0] * n
        gaps: list[list[int]] = [p.missing_ms for p in parts if p.missing_ms != zero] or [zero]
        missing = list(gaps[0])
        for g in gaps[1:]:
            if g != missing:  # (meters often miss the same stretches)
                missing = list(map(max, missing, g))
        return cls(cuts, wh, missing)

    def merged(self, other: Slots, sign: float = 1.0) -> Slots:
        """Slot-wise self + sign x other (the same cuts)."""
        if len(self.wh) != len(other.wh):
            raise ValueError("slots of different lengths")
        wh = self.wh - other.wh if sign == -1.0 else self.wh + sign * other.wh
        if not any(other.missing_ms):
            missing = list(self.missing_ms)
        elif not any(self.missing_ms):
            missing = list(other.missing_ms)
        else:
            missing = list(map(max, self.missing_ms, other.missing_ms))
        return Slots(self.cuts, wh, missing)


@dataclass(slots=True)
class Integrator:
    """Adds readings, in time order, to slots. `counter`: the values are a kWh counter;
    else they are power in W."""

    slots: Slots
    counter: bool
    max_gap_ms: int
    missing: list[Stretch] = field(default_factory=list)
    estimated: bool = False

    def pair(self, t1: int, v1: float, t2: int, v2: float) -> tuple[float, Stretch | None]:
        """The energy (Wh) between two consecutive readings, and the stretch between them
        when it is not known.

        Power further apart than the gap limit is not bridged. A counter measures across
        any gap; when it went down, it was reset (a reboot), so its new value is what
        accrued since and what came before the reset is lost if the gap was long."""
        if self.counter:
            if v2 >= v1:
                return (v2 - v1) * 1000.0, None
            return v2 * 1000.0, (t1, t2) if t2 - t1 > self.max_gap_ms else None
        if t2 - t1 > self.max_gap_ms:
            return 0.0, (t1, t2)
        return (v1 + v2) / 2.0 * (t2 - t1) / W_MS_PER_WH, None

    def bridge(self, t1: int, v1: float, t2: int, v2: float) -> None:
        """The stretch between two consecutive readings, split at the slot edges in
        proportion (power interpolated linearly, so the pieces add up to the trapezoid)."""
        if t2 <= t1:
            return
        wh, gap = self.pair(t1, v1, t2, v2)
        if gap is not None:
            self.miss(*gap)
        if wh == 0.0:
            return
        a0, b0 = max(t1, self.slots.start), min(t2, self.slots.end)
        if a0 >= b0:
            return
        span = t2 - t1
        i = self.slots.index(a0)
        cuts = self.slots.cuts
        while i < len(self.slots.wh) and cuts[i] < b0:
            a, b = max(a0, cuts[i]), min(b0, cuts[i + 1])
            if self.counter:
                share = wh * (b - a) / span
            else:
                pa = v1 + (v2 - v1) * (a - t1) / span
                pb = v1 + (v2 - v1) * (b - t1) / span
                share = (pa + pb) / 2.0 * (b - a) / W_MS_PER_WH
            self.slots.wh[i] += share
            i += 1

    def block(self, t1: int, t2: int, wh: float, missing: Sequence[Sequence[int]]) -> None:
        """Energy known only as a total over [t1, t2] (a cached hour, or a rollup once the
        raw points are gone): spread evenly, though it normally falls in one slot."""
        for a, b in missing:
            self.miss(a, b)
        if wh == 0.0:
            return
        if t2 <= t1:
            i = self.slots.index(t1)
            if 0 <= i < len(self.slots.wh) and t1 < self.slots.end:
                self.slots.wh[i] += wh
            return
        a0, b0 = max(t1, self.slots.start), min(t2, self.slots.end)
        i = self.slots.index(a0)
        cuts = self.slots.cuts
        while a0 < b0 and i < len(self.slots.wh) and cuts[i] < b0:
            a, b = max(a0, cuts[i]), min(b0, cuts[i + 1])
            self.slots.wh[i] += wh * (b - a) / (t2 - t1)
            i += 1

    def miss(self, a: int, b: int) -> None:
        a, b = max(a, self.slots.start), min(b, self.slots.end)
        if a >= b:
            return
        if self.missing and self.missing[-1][1] >= a:
            self.missing[-1] = (self.missing[-1][0], max(b, self.missing[-1][1]))
        else:
            self.missing.append((a, b))
        cuts, missing_ms = self.slots.cuts, self.slots.missing_ms
        i = self.slots.index(a)
        k = min(bisect_left(cuts, b), len(missing_ms))  # slots i..k-1 start before b
        # The first and last slot may be cut; those between lie wholly inside [a, b) and
        # get their whole length, added slice-wise (a stretch can span a year of hours).
        missing_ms[i] += min(b, cuts[i + 1]) - max(a, cuts[i])
        if k - 1 > i:
            missing_ms[k - 1] += min(b, cuts[k]) - max(a, cuts[k - 1])
        if k - 2 > i:
            lengths = self.slots.slot_lengths()[i + 1 : k - 1]
            if any(missing_ms[i + 1 : k - 1]):
                missing_ms[i + 1 : k - 1] = map(operator.add, missing_ms[i + 1 : k - 1], lengths)
            else:
                missing_ms[i + 1 : k - 1] = lengths


def estimate_interior(
    *,
    counter: bool,
    max_gap_ms: int,
    n: int,
    vsum: float,
    vmin: float,
    vmax: float,
    first: tuple[int, float],
    last: tuple[int, float],
) -> tuple[float, list[Stretch]]:
    """The energy between a bucket's first and last reading from its rollup alone, when
    its raw points are gone.

    A counter whose first value is its minimum and last its maximum shows no reset; its
    increase is last - first. Power assumes evenly spaced readings (the trapezoid is then
    spacing x (sum - (first + last) / 2)), exact for constant power."""
    (t0, v0), (t1, v1) = first, last
    if n < 2 or t1 <= t0:
        return 0.0, []
    if counter:
        if vmin >= v0 and vmax <= v1:
            return (v1 - v0) * 1000.0, []
        # It went down inside: at least one reset, after which it counted up to `last`.
        return ((vmax - v0) + v1) * 1000.0, []
    spacing = (t1 - t0) / (n - 1)
    if spacing > max_gap_ms:
        return 0.0, [(t0, t1)]
    return spacing * (vsum - (v0 + v1) / 2.0) / W_MS_PER_WH, []
