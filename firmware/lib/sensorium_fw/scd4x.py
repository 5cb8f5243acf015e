"""Sensirion SCD40/SCD41 CO2 sensor over I2C (datasheet "SCD4x", v1.x).

Commands are 16-bit words sent MSB first; every 16-bit word the sensor returns is
followed by a CRC-8 (polynomial 0x31, init 0xFF): a reading whose CRC does not match is
thrown away instead of being published.
"""

import time

ADDRESS = 0x62
START_PERIODIC_MEASUREMENT = 0x21B1
READ_MEASUREMENT = 0xEC05
STOP_PERIODIC_MEASUREMENT = 0x3F86
GET_DATA_READY_STATUS = 0xE4B8
GET_SERIAL_NUMBER = 0x3682


def crc8(data):
    """Sensirion CRC-8: polynomial 0x31, init 0xFF, no reflection, no final XOR."""
    crc = 0xFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31 if crc & 0x80 else crc << 1) & 0xFF
    return crc


def decode_words(buf):
    """The 16-bit words of a response (word, CRC byte, word, CRC byte …)."""
    if len(buf) % 3:
        raise ValueError("SCD4x response length %d is not a multiple of 3" % len(buf))
    words = []
    for i in range(0, len(buf), 3):
        if crc8(buf[i : i + 2]) != buf[i + 2]:
            raise ValueError("SCD4x CRC mismatch in word %d" % (i // 3))
        words.append((buf[i] << 8) | buf[i + 1])
    return words


def encode_words(words):
    """Words with their CRCs, as the sensor sends them (and as command arguments go)."""
    out = bytearray()
    for word in words:
        pair = bytes(((word >> 8) & 0xFF, word & 0xFF))
        out += pair
        out.append(crc8(pair))
    return bytes(out)


def convert(words):
    """(co2 ppm, temperature °C, relative humidity %) from read_measurement's words."""
    co2, raw_t, raw_rh = words
    return co2, -45 + 175 * raw_t / 65535, 100 * raw_rh / 65535


class SCD4x:
    """Periodic measurement (one new reading every 5 s); `read()` returns the latest."""

    def __init__(self, i2c, log, address=ADDRESS):
        self.i2c = i2c
        self.address = address
        self.log = log
        self.started = False
        self._failing = False

    def _command(self, command, delay_ms=1):
        self.i2c.writeto(self.address, bytes(((command >> 8) & 0xFF, command & 0xFF)))
        time.sleep_ms(delay_ms)

    def _read_words(self, command, count, delay_ms=1):
        self._command(command, delay_ms)
        return decode_words(self.i2c.readfrom(self.address, 3 * count))

    def start(self):
        # A sensor still measuring from before a soft reboot ignores other commands.
        self._command(STOP_PERIODIC_MEASUREMENT, 500)
        self._command(START_PERIODIC_MEASUREMENT)
        self.started = True

    def data_ready(self):
        (status,) = self._read_words(GET_DATA_READY_STATUS, 1)
        return status & 0x07FF != 0

    def read(self):
        """{"co2", "temperature", "humidity"}; {} when there is no new valid reading."""
        try:
            if not self.started:
                self.start()
                return {}
            if not self.data_ready():
                return {}
            co2, temperature, humidity = convert(self._read_words(READ_MEASUREMENT, 3))
        except (OSError, ValueError) as exc:
            self.started = False
            if not self._failing:
                self.log.warn("scd4x: no reading (%s)" % exc)
            self._failing = True
            return {}
        if self._failing:
            self.log.info("scd4x: readings are back")
            self._failing = False
        if co2 == 0:  # the first reading after power-up can be empty
            return {}
        return {
            "co2": co2,
            "temperature": round(temperature, 2),
            "humidity": round(humidity, 1),
        }
