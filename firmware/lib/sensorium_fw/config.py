"""config.json: what a device needs to reach its server, and its sensor wiring.

Written by the provisioning portal (or by hand, then copied with mpremote). Missing
members take the defaults below; `problems()` says what still prevents a start.
"""

from sensorium_fw import store

PATH = "config.json"

DEFAULTS = {
    "wifi": {"ssid": "", "password": ""},
    "server": {"host": "", "mqtt_port": 1883, "http_port": 8000},
    "device_id": "",  # empty: the Wi-Fi MAC, as the server expects
    "token": "",
    "interval_s": 60,
    "status_every_s": 300,
    "ntp_host": "pool.ntp.org",
    "pins": {"relay": None, "led": 2, "button": 0},
    "sensors": {
        "dht22": None,  # {"pin": 4}
        "scd4x": None,  # {"sda": 21, "scl": 22}
        "sct013": None,  # {"pin": 34, "calibration": 30.0, "voltage": 230.0, "mains_hz": 50}
    },
    "buffer": {"max_entries": 5000, "segment_entries": 100},
    "watchdog_s": 60,
    "long_press_s": 5,
    "http_poll_s": 20,
    # Over-the-air updates: the server's public key (base64 of the raw 32 bytes, from
    # `GET /api/v1/firmware/public-key`); an update that has not reached the server
    # this many seconds after its first boot is rolled back.
    "ota_public_key": "",
    "ota_trial_s": 600,
}


def with_defaults(cfg, defaults=DEFAULTS):
    """`cfg` with every missing member filled in from `defaults` (nested objects too)."""
    merged = {}
    for key in defaults:
        default = defaults[key]
        value = cfg.get(key, default) if type(cfg) is dict else default
        if type(default) is dict and type(value) is dict:
            value = with_defaults(value, default)
        merged[key] = value
    if type(cfg) is dict:
        for key in cfg:
            if key not in merged:
                merged[key] = cfg[key]
    return merged


def _port(value):
    return type(value) is int and 0 < value < 65536


def problems(cfg):
    """What is missing or wrong, as short sentences; [] when the device can start."""
    found = []
    if not cfg["wifi"]["ssid"]:
        found.append("no Wi-Fi network")
    server = cfg["server"]
    if not server["host"]:
        found.append("no server host")
    if not _port(server["mqtt_port"]) or not _port(server["http_port"]):
        found.append("server ports must be 1-65535")
    if not cfg["token"]:
        found.append("no device token")
    device_id = cfg["device_id"]
    if device_id and (len(device_id) != 12 or device_id.strip("0123456789abcdef")):
        found.append("device_id must be 12 lowercase hex digits")
    interval = cfg["interval_s"]
    if type(interval) is not int or not 1 <= interval <= 86400:
        found.append("interval_s must be 1-86400")
    if type(cfg["ota_public_key"]) is not str:
        found.append("ota_public_key must be a base64 text")
    trial = cfg["ota_trial_s"]
    if type(trial) is not int or trial < 1:
        found.append("ota_trial_s must be a positive number of seconds")
    return found


def load(path=PATH):
    """The configuration with defaults, or None when there is no readable file."""
    cfg = store.read_json(path)
    if type(cfg) is not dict:
        return None
    return with_defaults(cfg)


def save(cfg, path=PATH):
    store.write_json(path, cfg)


def forget_wifi(path=PATH):
    """After `reset_wifi` / a long button press: the next boot opens the portal."""
    cfg = load(path)
    if cfg is None:
        return
    cfg["wifi"] = {"ssid": "", "password": ""}
    save(cfg, path)
