"""The device: boots from config.json (or opens the provisioning portal), then measures
every interval and talks to the server over MQTT, over HTTP while the broker is
unreachable, and buffers in flash while neither is. One cooperative loop: every pass
feeds the watchdog, so nothing in it may block for long.
"""

import time

import sensorium_boot as loader

from sensorium_fw import FW_VERSION, config, proto, store
from sensorium_fw.backoff import Backoff
from sensorium_fw.buffer import RingBuffer
from sensorium_fw.clock import Clock
from sensorium_fw.control import Control
from sensorium_fw.links import HttpLink, MqttLink
from sensorium_fw.log import Log
from sensorium_fw.mqtt5 import NoSubscribers
from sensorium_fw.ota import Updater

STATE_FILE = "state.json"
BUFFER_DIR = "buffer"
NTP_EVERY_MS = 6 * 3600 * 1000
# Readings taken before the clock is first set wait in RAM (their tick count is turned
# into a timestamp once it is); past this many the oldest are dropped.
MAX_UNSTAMPED = 100
IDLE_MS = 50


class Device:
    def __init__(
        self, cfg, board, sensors, log, clock, root="", links=None, rand=None, boot=None, esp32=None
    ):
        self.cfg = cfg
        self.board = board
        self.sensors = sensors
        self.log = log
        self.clock = clock
        self.root = root
        self.device_id = cfg["device_id"] or board.mac_id()
        server = cfg["server"]
        if links is None:
            links = (
                MqttLink(server["host"], server["mqtt_port"], self.device_id, cfg["token"], log),
                HttpLink(server["host"], server["http_port"], self.device_id, cfg["token"], log),
            )
        self.mqtt, self.http = links
        # What the loader booted (sensorium_boot.Boot): the bundle's version, an update on
        # trial until a link is up, a rollback still to report. None: no loader.
        self.boot = boot
        self.fw_version = (boot.version if boot is not None else None) or FW_VERSION
        self._trial = boot.trial if boot is not None else None
        self.ota = Updater(
            root,
            server["host"],
            server["http_port"],
            cfg["token"],
            cfg["ota_public_key"],
            log,
            self.fw_version,
            esp32=esp32,
            rand=rand,
        )
        self.link = None
        self.mqtt_backoff = Backoff(rand=rand)
        self.http_backoff = Backoff(rand=rand)
        self.wifi_backoff = Backoff(rand=rand)
        self.ntp_backoff = Backoff(base_ms=2000, max_ms=600000, rand=rand)
        # Documents no subscriber took (MQTT 5 PUBACK 0x10) wait on board this long before
        # they are sent again; meanwhile `holding` and new readings go to the buffer.
        self.resend_backoff = Backoff(base_ms=1000, max_ms=30000, rand=rand)
        self.holding = False
        buffer_cfg = cfg["buffer"]
        self.buffer = RingBuffer(
            root + BUFFER_DIR, buffer_cfg["max_entries"], buffer_cfg["segment_entries"]
        )
        saved = store.read_json(root + STATE_FILE, {})
        state = self._initial_state()
        version = None
        if type(saved) is dict and type(saved.get("state")) is dict:
            state.update(saved["state"])
            version = saved.get("version")
        # Applied to the hardware at once: the relay comes back as it was before a reboot.
        self.control = Control(state, board, version if type(version) is int else None)
        self.unstamped = []
        self.replies = []  # control.Reply objects not yet delivered
        self.sent = 0  # telemetry entries delivered, live and backfilled
        now = time.ticks_ms()
        self._last_ms = now
        self.uptime_ms = 0
        self._next = {
            "sample": now,
            "mqtt": now,
            "http": now,
            "wifi": now,
            "ntp": now,
            "status": now,
            "resend": now,
        }
        self._status_due = True

    def _initial_state(self):
        state = {"interval_s": self.cfg["interval_s"]}
        pins = self.cfg["pins"]
        if pins.get("relay") is not None:
            state["relay"] = False
        if pins.get("led") is not None:
            state["led"] = False
        return state

    # --- the loop -----------------------------------------------------------------------

    def run(self, should_stop=None):
        self.board.start_watchdog(self.cfg["watchdog_s"])
        self.log.info("sensorium %s as %s" % (self.fw_version, self.device_id))
        while should_stop is None or not should_stop():
            waited = self.step()
            if waited < IDLE_MS:
                time.sleep_ms(IDLE_MS - waited)

    def _due(self, what, now):
        return time.ticks_diff(now, self._next[what]) >= 0

    def _later(self, what, now, delay_ms):
        self._next[what] = time.ticks_add(now, delay_ms)

    def step(self):
        """One pass of the loop; returns how long it waited for the server (ms)."""
        now = time.ticks_ms()
        self.uptime_ms += time.ticks_diff(now, self._last_ms)
        self._last_ms = now
        self.board.feed()
        self._button()
        self._check_trial()
        if not self._wifi(now):
            if self._due("sample", now):
                self._sample(now)
            return 0
        self._sync_clock(now)
        self._connect(now)
        if self._due("sample", now):
            self._sample(now)
        if self.link is None:
            return 0
        try:
            if not self.holding or self._due("resend", now):
                self._send_pending()
                self._backfill()
                if self.holding:  # what was kept has gone through
                    self.holding = False
                    self.resend_backoff.reset()
            started = time.ticks_ms()
            wait = 0
            if self.link is self.http:
                until_sample = time.ticks_diff(self._next["sample"], started)
                wait = max(0, min(until_sample - 500, self.cfg["http_poll_s"] * 1000))
            for event in self.link.poll(time.ticks_diff(started, now), wait):
                self._on_event(event)
            waited = time.ticks_diff(time.ticks_ms(), started)
            action = self.ota.step(self.board.feed)
            if not self.holding:
                self._send_pending()
        except OSError as exc:
            self._failed(exc)
            return 0
        if action == "reboot":
            self._act("reboot")
        return waited

    # --- connectivity -------------------------------------------------------------------

    def _wifi(self, now):
        if self.board.wifi_connected():
            self.wifi_backoff.reset()
            return True
        if self.link is not None:
            self._lost(OSError("Wi-Fi lost"))
        if self._due("wifi", now):
            wifi = self.cfg["wifi"]
            if self.board.connect_wifi(wifi["ssid"], wifi["password"], feed=self.board.feed):
                self.log.info("Wi-Fi up, ip %s" % self.board.ip())
                return True
            self._later("wifi", time.ticks_ms(), self.wifi_backoff.next_delay_ms())
        return False

    def _sync_clock(self, now):
        host = self.cfg["ntp_host"]
        if not host or not self._due("ntp", now):
            return
        try:
            self.clock.sync(host, self.cfg.get("ntp_port", 123))
        except (OSError, ValueError, IndexError) as exc:
            self.log.warn("NTP (%s): %s" % (host, exc))
            self._later("ntp", now, self.ntp_backoff.next_delay_ms())
            return
        self.ntp_backoff.reset()
        self._later("ntp", now, NTP_EVERY_MS)
        self._stamp_unstamped()

    def _connect(self, now):
        """MQTT whenever it can be had (retried with backoff, also while HTTP stands in);
        HTTP only while MQTT cannot."""
        if self.link is self.mqtt:
            return
        if self._due("mqtt", now):
            try:
                self.mqtt.connect()
            except OSError as exc:
                delay = self.mqtt_backoff.next_delay_ms()
                self.log.warn("MQTT: %s; again in %d ms" % (exc, delay))
                self._later("mqtt", now, delay)
            else:
                self.mqtt_backoff.reset()
                if self.link is not None:
                    self.link.close()
                self._up(self.mqtt)
                return
        if self.link is None and self._due("http", now):
            try:
                self.http.connect()
            except OSError as exc:
                delay = self.http_backoff.next_delay_ms()
                self.log.warn("HTTP: %s; again in %d ms" % (exc, delay))
                self._later("http", now, delay)
            else:
                self.http_backoff.reset()
                self._up(self.http)

    def _up(self, link):
        self.link = link
        self.holding = False
        self.control.reconnected()
        self._status_due = True
        self.log.info("connected over %s" % link.name)
        self._settle_trial()

    # --- updates on trial ---------------------------------------------------------------

    def _settle_trial(self):
        """A link is up: an update on trial stays (reported UPDATED; the status that
        follows carries its version), a rollback is reported FAILED with its reason."""
        trial, self._trial = self._trial, None
        if trial is not None:
            loader.confirm(self.root, trial)
            self.ota.finished(trial["job"])
            self.ota.report(trial["job"], "UPDATED", 1.0)
            self.log.info("update %s: %s reached the server" % (trial["job"], self.fw_version))
        note = self.boot.note if self.boot is not None else None
        if note is not None:
            self.boot.note = None
            if proto.is_job_id(note.get("job")):
                self.ota.finished(note["job"])
                self.ota.report(note["job"], "FAILED", error=str(note.get("error")))
            loader.reported(self.root)

    def _check_trial(self):
        """An update that has not reached the server within ota_trial_s is rolled back."""
        limit_s = self.cfg["ota_trial_s"]
        if self._trial is None or self.uptime_ms < limit_s * 1000:
            return
        error = "rolled back: %s did not reach the server within %d s" % (
            self._trial.get("version"),
            limit_s,
        )
        self.log.error(error)
        loader.rollback(self.root, error)
        self.shutdown()
        self.board.reset()

    def _failed(self, exc):
        """A send raised: a document no subscriber took is kept and the uplink waits a
        back-off before it is sent again (PROTOCOL.md); anything else drops the link."""
        if not isinstance(exc, NoSubscribers):
            self._lost(exc)
            return
        delay = self.resend_backoff.next_delay_ms()
        self.holding = True
        self._later("resend", time.ticks_ms(), delay)
        self.log.info("%s: kept, sent again in %d ms" % (exc, delay))

    def _lost(self, exc):
        link, self.link = self.link, None
        if link is None:
            return
        link.close()
        now = time.ticks_ms()
        self.log.warn("%s link lost: %s" % (link.name, exc))
        # Back off from the start: a broker that restarts is usually back within seconds.
        backoff = self.mqtt_backoff if link is self.mqtt else self.http_backoff
        self._later(link.name, now, backoff.next_delay_ms())

    # --- what goes up -------------------------------------------------------------------

    def _sample(self, now):
        interval_ms = self.control.interval_s * 1000
        # Keep the cadence: the next reading is due one interval after this one was.
        self._next["sample"] = time.ticks_add(self._next["sample"], interval_ms)
        if time.ticks_diff(self._next["sample"], now) <= 0:
            self._next["sample"] = time.ticks_add(now, interval_ms)
        values = self.sensors.read()
        if not values:
            return
        ts = self.clock.now_ms()
        if ts is None:
            self.unstamped.append((now, values))
            if len(self.unstamped) > MAX_UNSTAMPED:
                self.unstamped.pop(0)
            if self.link is not None and not self.holding:
                try:
                    self._send_unstamped()
                except OSError as exc:
                    self._failed(exc)
            return
        if self.link is not None and not self.holding and not len(self.buffer):
            try:
                if self.link.telemetry(proto.dumps(proto.entry(ts, values))):
                    self.sent += 1
                return
            except OSError as exc:
                self._failed(exc)
        self.buffer.append(ts, values)

    def _send_unstamped(self):
        # No clock yet: the server stamps them on arrival, which is close for live ones.
        while self.unstamped and self.link is not None:
            _ticks, values = self.unstamped[0]
            self.link.telemetry(proto.dumps(values))
            self.unstamped.pop(0)
            self.sent += 1

    def _stamp_unstamped(self):
        now_ticks = time.ticks_ms()
        now_ms = self.clock.now_ms()
        for ticks, values in self.unstamped:
            self.buffer.append(now_ms - time.ticks_diff(now_ticks, ticks), values)
        self.unstamped = []

    def _backfill(self):
        """One buffered segment per pass, oldest first, as timestamped batch documents;
        it is removed only once every document of it was accepted."""
        if self.link is None or not len(self.buffer):
            return
        oldest = self.buffer.peek()
        if oldest is None:
            return
        seq, entries = oldest
        sent = 0
        for payload, count in proto.batches(entries):
            if self.link.telemetry(payload):
                sent += count
            else:
                self.log.error("dropped %d buffered readings the server refused" % count)
        self.buffer.remove(seq)
        self.sent += sent
        self.log.info("backfilled %d readings, %d left" % (len(entries), len(self.buffer)))

    def _send_pending(self):
        link = self.link
        while self.ota.reports:
            link.ota_progress(proto.dumps(self.ota.reports[0]))
            self.ota.reports.pop(0)
        if self._status_due:
            link.status(proto.dumps(self.status()))
            self._status_due = False
            self._later("status", time.ticks_ms(), self.cfg["status_every_s"] * 1000)
        elif self._due("status", time.ticks_ms()):
            self._status_due = True
        if self.control.report_due:
            version, state = self.control.report()
            link.reported(proto.dumps(proto.reported_doc(version, state)))
            self.control.reported()
        if self.control.changed:
            self.control.changed = False
            self._save_state()
        while self.replies:
            reply = self.replies[0]
            doc = proto.result_doc(reply.status, reply.result, reply.error)
            link.result(reply.command_id, proto.dumps(doc))
            self.replies.pop(0)
            if reply.action:
                self._act(reply.action)
        # Only the lines pending now: what sending them logs waits for the next pass, so
        # a link that logs on every send cannot keep this loop going.
        pending = self.log.pending
        for _ in range(len(pending)):
            line = pending[0]
            link.log_line(proto.dumps(proto.log_doc(*line)))
            if pending and pending[0] is line:  # not already dropped for a newer line
                pending.pop(0)
        if self.unstamped:
            self._send_unstamped()

    def status(self):
        return proto.status_doc(
            self.fw_version,
            self.uptime_ms // 1000,
            rssi=self.board.rssi(),
            ip=self.board.ip(),
            free_heap=self.board.free_heap(),
            interval_s=self.control.interval_s,
        )

    # --- what comes down ----------------------------------------------------------------

    def _on_event(self, event):
        kind, body = event
        if kind == "ota":
            self.ota.assigned(body)
            return
        if kind == "desired":
            version, desired = body
            if self.control.apply_desired(version, desired):
                self.log.info("applied desired state v%d" % version)
            if self.control.interval_s * 1000 < time.ticks_diff(
                self._next["sample"], time.ticks_ms()
            ):
                self._next["sample"] = time.ticks_ms()
            return
        reply = self.control.handle_command(body, self.clock.now_ms(), self.uptime_ms // 1000)
        if reply is not None:
            self.replies.append(reply)
            if body.name == "set_interval":
                self._next["sample"] = time.ticks_ms()

    def _save_state(self):
        version, state = self.control.report()
        store.write_json(self.root + STATE_FILE, {"version": version, "state": state})

    def _act(self, action):
        if action == "reset_wifi":
            self.log.warn("forgetting the Wi-Fi network: the portal opens after the reboot")
            config.forget_wifi(self.root + config.PATH)
        self.shutdown()
        self.board.reset()

    def _button(self):
        if self.board.button_held_ms() >= self.cfg["long_press_s"] * 1000:
            self._act("reset_wifi")

    def shutdown(self):
        """Before a reboot: keep the energy counter, say goodbye (no LWT needed)."""
        for driver in self.sensors.drivers:
            energy = getattr(driver, "energy", None)
            if energy is not None:
                energy.save()
        if self.link is not None:
            try:
                self.link.status(proto.OFFLINE)
            except OSError:
                pass
            self.link.close()
            self.link = None


def main(root="", should_stop=None, started=None, boot=None):
    """Boot: the portal when the device is not configured (or the button is held), else
    the device loop. `root` is where the files live ("" on the device: flash root);
    `should_stop` ends the loop and `started` gets the Device (or the Portal) before it
    runs (host tests); `boot` is what the loader (sensorium_boot) found."""
    from sensorium_fw import sensors
    from sensorium_fw.board import Board

    cfg = config.load(root + config.PATH)
    board = Board((cfg or config.DEFAULTS)["pins"])
    clock = Clock()
    log = Log(clock)
    if cfg is None or config.problems(cfg) or _held_at_boot(board, cfg):
        from sensorium_fw import portal

        if cfg is not None:
            log.warn("provisioning: %s" % (", ".join(config.problems(cfg)) or "button held"))
        portal.run(board, log, root=root, should_stop=should_stop, started=started)
        return None
    device = Device(cfg, board, sensors.from_config(cfg, log, root), log, clock, root, boot=boot)
    if started is not None:
        started(device)
    device.run(should_stop)
    return device


def _held_at_boot(board, cfg):
    """The button held down at power-up and kept down for the long press."""
    board.button_held_ms()
    time.sleep_ms(20)
    while board.button_held_ms():
        if board.button_held_ms() >= cfg["long_press_s"] * 1000:
            return True
        time.sleep_ms(50)
    return False
