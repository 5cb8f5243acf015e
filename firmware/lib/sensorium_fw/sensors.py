"""The sensors config.json declares, read together into one telemetry reading."""

from sensorium_fw import proto


class Sensors:
    def __init__(self, drivers, log):
        """`drivers`: objects with `read() -> dict`, in the order their values merge (a
        later driver's key wins: a DHT22's temperature over the SCD4x's)."""
        self.drivers = drivers
        self.log = log

    def read(self):
        values = {}
        for driver in self.drivers:
            try:
                values.update(driver.read())
            except Exception as exc:  # one broken driver must not stop the rest
                self.log.error("%s: %s" % (type(driver).__name__, exc))
        return proto.clean_values(values)


def from_config(cfg, log, root=""):
    """Drivers for the config's "sensors" section (a None entry: not fitted)."""
    import machine

    declared = cfg["sensors"]
    drivers = []
    scd = declared.get("scd4x")
    if scd:
        from sensorium_fw.scd4x import SCD4x

        i2c = machine.I2C(
            scd.get("bus", 0),
            sda=machine.Pin(scd.get("sda", 21)),
            scl=machine.Pin(scd.get("scl", 22)),
            freq=100000,
        )
        drivers.append(SCD4x(i2c, log))
    dht_cfg = declared.get("dht22")
    if dht_cfg:
        import dht

        from sensorium_fw.dht22 import DHT22

        drivers.append(DHT22(dht.DHT22(machine.Pin(dht_cfg.get("pin", 4))), log))
    sct = declared.get("sct013")
    if sct:
        from sensorium_fw.sct013 import SCT013, EnergyMeter

        adc = machine.ADC(machine.Pin(sct.get("pin", 34)))
        if hasattr(machine.ADC, "ATTN_11DB"):
            adc.atten(machine.ADC.ATTN_11DB)  # the full 0-3.1 V range
        drivers.append(
            SCT013(
                adc,
                EnergyMeter(root + "energy.json"),
                log,
                calibration=sct.get("calibration", 30.0),
                voltage=sct.get("voltage", 230.0),
                mains_hz=sct.get("mains_hz", 50),
                cycles=sct.get("cycles", 10),
            )
        )
    return Sensors(drivers, log)
