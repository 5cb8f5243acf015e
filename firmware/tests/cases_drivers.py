"""Driver math: SCD4x CRC and conversion, SCT-013 RMS and power, DHT22 plausibility,
the energy counter."""

import math

from casekit import close, fresh_dir
from sensorium_fw import dht22, scd4x, sct013


def case_scd4x_crc_matches_the_datasheet_example():
    assert scd4x.crc8(b"\xbe\xef") == 0x92


def case_scd4x_words_round_trip_and_bad_crc_is_refused():
    data = scd4x.encode_words([0x01F4, 0x6667, 0x5EB9])
    assert data[2] == scd4x.crc8(b"\x01\xf4")
    assert scd4x.decode_words(data) == [0x01F4, 0x6667, 0x5EB9]
    broken = bytearray(data)
    broken[4] ^= 0x10
    for bad in (bytes(broken), data[:-1]):
        try:
            scd4x.decode_words(bad)
        except ValueError:
            continue
        raise AssertionError("accepted %r" % (bad,))


def case_scd4x_conversion():
    co2, temperature, humidity = scd4x.convert([500, 0x6667, 0x5EB9])
    assert co2 == 500
    assert close(temperature, 25.0, rel=1e-3)
    assert close(humidity, 37.0, rel=1e-3)


def _sine(n, cycles, amplitude, offset, phase=0.4):
    return [offset + amplitude * math.sin(2 * math.pi * cycles * i / n + phase) for i in range(n)]


def case_sct013_rms_of_whole_cycles_is_peak_over_root_two():
    for amplitude in (50.0, 1000.0, 20000.0):
        mean, rms = sct013.mean_and_rms(_sine(400, 10, amplitude, 32768))
        assert close(mean, 32768, rel=1e-3)
        assert close(rms, amplitude / math.sqrt(2), rel=0.01)


def case_sct013_current_and_power():
    # An SCT-013-030 (30 A per volt) carrying 10 A rms puts 1/3 V rms on the ADC.
    _mean, rms_uv = sct013.mean_and_rms(_sine(400, 10, 1e6 * math.sqrt(2) / 3, 1650000))
    amps = sct013.current_a(rms_uv * 1e-6, 30.0)
    assert close(amps, 10.0, rel=0.01)
    assert close(sct013.power_w(230.0, amps), 2300.0, rel=0.01)
    assert sct013.current_a(0.001, 30.0, noise_floor_a=0.05) == 0.0


def case_sct013_window_spans_whole_cycles():
    count, period_us = sct013.window(50, 10, 40)
    assert (count, period_us) == (400, 500)
    assert count * period_us == 10 * 1000000 // 50
    count, period_us = sct013.window(60, 6, 40)
    assert abs(count * period_us - 6 * 1000000 / 60) < period_us


def case_energy_counter_is_exact_and_persisted():
    directory = fresh_dir("energy")
    meter = sct013.EnergyMeter(directory + "/energy.json", save_every_s=3600)
    for _ in range(3600):
        meter.add(1000.0, 1000)  # 1 kW for an hour, one second at a time
    assert meter.joules == 3600000
    assert close(meter.kwh, 1.0)
    meter.add(0.4, 1000)
    meter.add(0.4, 1000)
    meter.add(0.4, 1000)  # fractions of a joule add up instead of vanishing
    assert meter.joules == 3600001
    meter.save()
    again = sct013.EnergyMeter(directory + "/energy.json")
    assert again.joules == 3600001


def case_dht22_implausible_readings_are_not_values():
    assert dht22.check(21.34, 40.0) == {"temperature": 21.3, "humidity": 40.0}
    assert dht22.check(-41.0, 40.0) is None
    assert dht22.check(21.0, 100.5) is None
    assert dht22.check(None, 40.0) is None
