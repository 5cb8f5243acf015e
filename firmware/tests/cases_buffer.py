"""buffer: the offline ring buffer in flash."""

import os

from casekit import fresh_dir
from sensorium_fw.buffer import RingBuffer


def _all(buffer):
    out = []
    while True:
        oldest = buffer.peek()
        if oldest is None:
            return out
        seq, entries = oldest
        out += entries
        buffer.remove(seq)


def case_entries_come_back_oldest_first_in_segments():
    directory = fresh_dir("buf_order")
    buffer = RingBuffer(directory, max_entries=100, segment_entries=4)
    for i in range(10):
        buffer.append(1763900000000 + i * 1000, {"co2": 400 + i})
    assert len(buffer) == 10
    _seq, entries = buffer.peek()
    assert len(entries) == 4
    assert entries[0] == {"ts": 1763900000000, "values": {"co2": 400}}
    rest = _all(buffer)
    assert [e["values"]["co2"] for e in rest] == list(range(400, 410))
    assert len(buffer) == 0
    assert buffer.peek() is None


def case_survives_a_reboot():
    directory = fresh_dir("buf_reboot")
    buffer = RingBuffer(directory, max_entries=100, segment_entries=4)
    for i in range(6):
        buffer.append(1000 + i, {"n": i})
    again = RingBuffer(directory, max_entries=100, segment_entries=4)
    assert len(again) == 6
    again.append(2000, {"n": 6})  # goes to a new segment, never after a torn line
    assert [e["values"]["n"] for e in _all(again)] == [0, 1, 2, 3, 4, 5, 6]


def case_a_torn_last_line_is_skipped():
    directory = fresh_dir("buf_torn")
    buffer = RingBuffer(directory, max_entries=100, segment_entries=10)
    buffer.append(1000, {"n": 1})
    buffer.append(2000, {"n": 2})
    name = directory + "/" + os.listdir(directory)[0]
    with open(name, "ab") as f:
        f.write(b'[3000,{"n":')  # power cut mid-write
    again = RingBuffer(directory, max_entries=100, segment_entries=10)
    assert [e["values"]["n"] for e in _all(again)] == [1, 2]


def case_when_full_the_oldest_are_dropped_and_counted():
    directory = fresh_dir("buf_full")
    buffer = RingBuffer(directory, max_entries=8, segment_entries=4)
    for i in range(13):
        buffer.append(1000 + i, {"n": i})
    assert buffer.dropped == 4
    assert len(buffer) == 9
    kept = [e["values"]["n"] for e in _all(buffer)]
    assert kept == list(range(4, 13))


def case_appends_while_sending_go_to_a_new_segment():
    directory = fresh_dir("buf_send")
    buffer = RingBuffer(directory, max_entries=100, segment_entries=10)
    buffer.append(1000, {"n": 1})
    seq, entries = buffer.peek()
    buffer.append(2000, {"n": 2})
    buffer.remove(seq)  # delivered
    assert [e["values"]["n"] for e in _all(buffer)] == [2]
    assert entries == [{"ts": 1000, "values": {"n": 1}}]


def case_readings_need_a_timestamp():
    buffer = RingBuffer(fresh_dir("buf_ts"), max_entries=10, segment_entries=2)
    try:
        buffer.append(None, {"n": 1})
    except ValueError:
        return
    raise AssertionError("a reading without a timestamp was buffered")
