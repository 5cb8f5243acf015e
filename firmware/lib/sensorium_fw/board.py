"""The ESP32 itself: Wi-Fi, the relay/LED/button pins, the watchdog, reset. Everything
else in the firmware reaches the hardware through here or through a driver."""

import gc
import time

import machine
import network

_AUTH_OPEN = 0


def _hex(mac):
    return "".join("%02x" % b for b in mac)


class Board:
    def __init__(self, pins):
        """`pins`: the config's {"relay", "led", "button"} pin numbers (None: absent)."""
        self.wlan = network.WLAN(network.STA_IF)
        self._relay = self._output(pins.get("relay"))
        self._led = self._output(pins.get("led"))
        self._pwm = None
        button = pins.get("button")
        self._button = (
            None if button is None else machine.Pin(button, machine.Pin.IN, machine.Pin.PULL_UP)
        )
        self._wdt = None
        self._pressed_at = None

    @staticmethod
    def _output(number):
        if number is None:
            return None
        pin = machine.Pin(number, machine.Pin.OUT)
        pin.value(0)
        return pin

    # --- identity and health ------------------------------------------------------------

    def mac_id(self):
        """The Wi-Fi MAC as the device id the server expects (12 lowercase hex digits)."""
        return _hex(self.wlan.config("mac"))

    def free_heap(self):
        gc.collect()
        return gc.mem_free()

    def rssi(self):
        try:
            return self.wlan.status("rssi")
        except (OSError, ValueError):
            return None

    def ip(self):
        try:
            return self.wlan.ifconfig()[0] if self.wlan.isconnected() else None
        except OSError:
            return None

    # --- Wi-Fi ---------------------------------------------------------------------------

    def wifi_connected(self):
        return self.wlan.isconnected()

    def connect_wifi(self, ssid, password, timeout_ms=15000, feed=None):
        """Join `ssid`; True once connected within `timeout_ms`."""
        self.wlan.active(True)
        if self.wlan.isconnected():
            return True
        try:
            self.wlan.connect(ssid, password)
        except OSError:
            return False
        started = time.ticks_ms()
        while time.ticks_diff(time.ticks_ms(), started) < timeout_ms:
            if self.wlan.isconnected():
                return True
            if feed is not None:
                feed()
            time.sleep_ms(100)
        return self.wlan.isconnected()

    def scan(self):
        """Networks in range: [{"ssid", "rssi", "channel"}], strongest first, one per SSID."""
        self.wlan.active(True)
        best = {}
        for found in self.wlan.scan():
            ssid = found[0].decode("utf-8", "replace") if isinstance(found[0], bytes) else found[0]
            if not ssid:
                continue  # hidden network
            rssi = found[3]
            if ssid not in best or rssi > best[ssid]["rssi"]:
                best[ssid] = {"ssid": ssid, "rssi": rssi, "channel": found[2]}
        return sorted(best.values(), key=lambda n: -n["rssi"])

    def start_access_point(self, essid):
        ap = network.WLAN(network.AP_IF)
        ap.active(True)
        ap.config(essid=essid, authmode=_AUTH_OPEN)
        return ap.ifconfig()[0]

    # --- outputs (the control hooks) -----------------------------------------------------

    def apply(self, key, value):
        """Drive the hardware behind a desired-state key (control.KNOWN_KEYS)."""
        if key == "relay" and self._relay is not None:
            self._relay.value(1 if value else 0)
        elif key == "led" and self._led is not None:
            self._release_pwm()
            self._led.value(1 if value else 0)
        elif key == "brightness" and self._led is not None:
            duty = max(0, min(255, int(value)))
            if self._pwm is None:
                self._pwm = machine.PWM(self._led, freq=1000)
            self._pwm.duty_u16(duty * 257)

    def _release_pwm(self):
        if self._pwm is not None:
            self._pwm.deinit()
            self._pwm = None

    def blink(self, times):
        if self._led is None:
            return
        self._release_pwm()
        was = self._led.value()
        for _ in range(times):
            self._led.value(1)
            time.sleep_ms(150)
            self._led.value(0)
            time.sleep_ms(150)
            self.feed()
        self._led.value(was)

    # --- button, watchdog, reset ---------------------------------------------------------

    def button_held_ms(self):
        """How long the (active-low) button has been held down; 0 when released."""
        if self._button is None or self._button.value():
            self._pressed_at = None
            return 0
        now = time.ticks_ms()
        if self._pressed_at is None:
            self._pressed_at = now
        return time.ticks_diff(now, self._pressed_at)

    def start_watchdog(self, timeout_s):
        # Once started, the ESP32's watchdog cannot be stopped: every loop must feed it.
        self._wdt = machine.WDT(timeout=timeout_s * 1000)

    def feed(self):
        if self._wdt is not None:
            self._wdt.feed()

    def reset(self):
        machine.reset()
