"""Wall-clock time from NTP, kept against the millisecond tick counter.

The RTC's epoch differs between MicroPython ports and versions (1970 or 2000) and the
floats of an ESP32 cannot hold epoch milliseconds, so the clock is an integer epoch-ms
offset to `time.ticks_ms()`, set from an SNTP answer.
"""

import struct
import time

# Seconds from the NTP era (1900) to the Unix epoch (1970).
NTP_DELTA = 2208988800
# Rebase well before ticks_diff stops being valid (2**29 ms, about 6 days).
_REBASE_MS = 24 * 3600 * 1000


def sntp_request():
    """A 48-byte SNTP client request (LI 0, version 4, mode 3)."""
    packet = bytearray(48)
    packet[0] = 0x23
    return packet


def sntp_epoch_ms(packet):
    """The server's transmit time of an SNTP answer, as Unix epoch milliseconds."""
    if len(packet) < 48:
        raise ValueError("short SNTP answer")
    if packet[0] & 0x07 not in (4, 5):  # mode: server or broadcast
        raise ValueError("not an SNTP server answer")
    if packet[1] == 0:  # stratum 0: kiss-o'-death
        raise ValueError("SNTP server refused (kiss-o'-death)")
    seconds, fraction = struct.unpack("!II", packet[40:48])
    if seconds == 0:
        raise ValueError("SNTP answer without a transmit time")
    return (seconds - NTP_DELTA) * 1000 + ((fraction * 1000) >> 32)


def sntp_query(host, port=123, timeout_s=2):
    import socket

    address = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0][-1]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.settimeout(timeout_s)
        sent = time.ticks_ms()
        sock.sendto(sntp_request(), address)
        answer = sock.recv(48)
        rtt = time.ticks_diff(time.ticks_ms(), sent)
    finally:
        sock.close()
    return sntp_epoch_ms(answer) + rtt // 2


class Clock:
    def __init__(self):
        self._base_ms = None
        self._base_ticks = 0
        self.synced_at = None

    @property
    def synced(self):
        return self._base_ms is not None

    def set_epoch_ms(self, epoch_ms):
        self._base_ticks = time.ticks_ms()
        self._base_ms = epoch_ms
        self.synced_at = self._base_ticks

    def now_ms(self):
        """Unix epoch milliseconds, or None before the first sync."""
        if self._base_ms is None:
            return None
        now = time.ticks_ms()
        elapsed = time.ticks_diff(now, self._base_ticks)
        if elapsed > _REBASE_MS:
            self._base_ms += elapsed
            self._base_ticks = now
            elapsed = 0
        return self._base_ms + elapsed

    def sync(self, host, port=123, timeout_s=2):
        """Set the clock from `host`; raises OSError/ValueError when it did not answer."""
        self.set_epoch_ms(sntp_query(host, port, timeout_s))
