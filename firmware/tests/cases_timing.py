"""clock (SNTP parsing, the epoch-ms clock) and backoff."""

import struct

from sensorium_fw import clock
from sensorium_fw.backoff import Backoff


def _answer(seconds, fraction, mode=4, stratum=2):
    packet = bytearray(48)
    packet[0] = 0x20 | mode
    packet[1] = stratum
    packet[40:48] = struct.pack("!II", seconds, fraction)
    return bytes(packet)


def case_sntp_request_is_a_version_4_client_packet():
    request = clock.sntp_request()
    assert len(request) == 48
    assert request[0] == 0x23


def case_sntp_answer_to_epoch_milliseconds():
    # 2025-11-23 12:13:20 UTC and a half.
    seconds = 1763900000 + clock.NTP_DELTA
    assert clock.sntp_epoch_ms(_answer(seconds, 1 << 31)) == 1763900000500
    for bad in (_answer(seconds, 0, mode=3), _answer(seconds, 0, stratum=0), _answer(0, 0), b"x"):
        try:
            clock.sntp_epoch_ms(bad)
        except ValueError:
            continue
        raise AssertionError("accepted a bad SNTP answer")


def case_clock_counts_from_the_sync():
    c = clock.Clock()
    assert c.now_ms() is None
    assert not c.synced
    c.set_epoch_ms(1763900000000)
    now = c.now_ms()
    assert c.synced
    assert 1763900000000 <= now < 1763900000000 + 1000


def case_backoff_doubles_with_jitter_up_to_the_cap():
    draws = [0, (1 << 24) - 1]
    backoff = Backoff(base_ms=1000, max_ms=8000, rand=lambda bits: draws[len(seen) % 2])
    seen = []
    for _ in range(12):
        seen.append(backoff.next_delay_ms())
    steps = [1000, 2000, 4000, 8000, 8000, 8000, 8000, 8000, 8000, 8000, 8000, 8000]
    assert len(seen) == len(steps)
    for i, step in enumerate(steps):
        assert step // 2 <= seen[i] <= step, (seen[i], step)
    assert seen[0] == 500
    assert seen[1] >= 1999
    backoff.reset()
    assert backoff.next_delay_ms() <= 1000


def case_backoff_real_randomness_stays_in_range():
    backoff = Backoff(base_ms=100, max_ms=400)
    for _ in range(50):
        assert 50 <= backoff.next_delay_ms() <= 400
