"""The offline ring buffer in flash: readings taken while no server is reachable, kept
until they are backfilled as timestamped batches (PROTOCOL.md "Telemetry").

Entries are JSON lines `[ts, {values}]` appended to numbered segment files in one
directory. A segment holds at most `segment_entries` entries, so one segment is one batch
document that fits in RAM; when the buffer is full the oldest segment is dropped (and
counted). Appends are the only writes, which LittleFS handles without wearing the flash,
and a line torn by a power cut is skipped when read back.
"""

import json
import os

from sensorium_fw import proto

_SUFFIX = ".jsonl"


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


class RingBuffer:
    def __init__(self, directory, max_entries=5000, segment_entries=100):
        if not 1 <= segment_entries <= proto.MAX_BATCH_ENTRIES:
            raise ValueError("segment_entries must be from 1 to %d" % proto.MAX_BATCH_ENTRIES)
        self.directory = directory
        self.segment_entries = segment_entries
        # Whole segments are dropped, so one more than `max_entries` needs: at least the
        # newest `max_entries` readings are always kept.
        self.max_segments = (max_entries + segment_entries - 1) // segment_entries + 1
        self.dropped = 0
        if not _exists(directory):
            os.mkdir(directory)
        self._segments = self._scan()
        # Entries per segment; counted once at boot, then kept up to date.
        self._counts = {}
        for seq in self._segments:
            self._counts[seq] = len(self._read(seq))
        # The segment taking appends; never one from before a reboot, whose last line may
        # be torn.
        self._open = None

    def _scan(self):
        found = []
        for name in os.listdir(self.directory):
            if name.endswith(_SUFFIX):
                try:
                    found.append(int(name[: -len(_SUFFIX)]))
                except ValueError:
                    pass
        found.sort()
        return found

    def _path(self, seq):
        return "%s/%08d%s" % (self.directory, seq, _SUFFIX)

    def __len__(self):
        total = 0
        for seq in self._segments:
            total += self._counts[seq]
        return total

    def append(self, ts, values):
        """Keep one reading taken at `ts` (epoch ms)."""
        if type(ts) is not int:
            raise ValueError("buffered readings need a timestamp")
        seq = self._open
        if seq is None or self._counts[seq] >= self.segment_entries:
            seq = self._new_segment()
        line = proto.dumps([ts, values]) + b"\n"
        with open(self._path(seq), "ab") as f:
            f.write(line)
        self._counts[seq] += 1

    def _new_segment(self):
        seq = self._segments[-1] + 1 if self._segments else 1
        self._segments.append(seq)
        self._counts[seq] = 0
        self._open = seq
        while len(self._segments) > self.max_segments:
            oldest = self._segments[0]
            self.dropped += self._counts[oldest]
            self.remove(oldest)
        return seq

    def _read(self, seq):
        entries = []
        if not _exists(self._path(seq)):
            return entries
        with open(self._path(seq), "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break  # torn by a power cut while writing
                try:
                    ts, values = json.loads(line)
                except (ValueError, TypeError):
                    continue
                if type(ts) is int and type(values) is dict and values:
                    entries.append({"ts": ts, "values": values})
        return entries

    def peek(self):
        """(segment, entries) of the oldest readings, or None when empty. Appends go to a
        new segment from now on, so the returned one can be removed once it was sent."""
        while self._segments:
            seq = self._segments[0]
            if seq == self._open:
                self._open = None
            entries = self._read(seq)
            if entries:
                return seq, entries
            self.remove(seq)
        return None

    def remove(self, seq):
        """Forget a segment (it was delivered, or dropped when the buffer is full)."""
        try:
            os.remove(self._path(seq))
        except OSError:
            pass
        if seq in self._counts:
            del self._counts[seq]
        if seq in self._segments:
            self._segments.remove(seq)
        if self._open == seq:
            self._open = None
