"""Over-the-air updates on the device (PROTOCOL.md "OTA").

An assignment (retained `devices/{id}/ota`, or `ota` in the HTTP state poll) starts a
job: the image is downloaded over HTTP with the device token into `ota/image.part`,
resuming with `Range` + `If-Range` from the bytes already staged when the connection
breaks (or the board reboots); then its size, SHA-256 and Ed25519 signature (over the
32 digest bytes, against `ota_public_key` from config.json) are checked. Anything wrong
is reported FAILED with the reason and the running firmware carries on.

Two kinds of image, told apart by their first byte:
- an application bundle (a tar, see bundle.py) is unpacked into `app.new/` and swapped
  in by the loader (sensorium_boot.install), which keeps the previous bundle;
- a full ESP32 app image (magic byte 0xE9) is streamed straight into the next OTA
  partition (esp32.Partition) and set to boot. Boards without OTA partitions refuse it.

Then the device reboots into the update, on trial until it reaches the server (app.py).

Progress goes up through the app's link (`reports`), DOWNLOADING rate-limited. Each loop
pass does at most STEP_MS of work so the loop, MQTT keep-alive and watchdog carry on.
"""

import binascii
import hashlib
import time

import sensorium_boot as loader

from sensorium_fw import bundle, ed25519, http_head, proto, store
from sensorium_fw.backoff import Backoff

JOB_FILE = "ota/job.json"
PART_FILE = "ota/image.part"
CHUNK = 2048
STEP_MS = 200
REPORT_EVERY_MS = 2000
IMAGE_MAGIC = 0xE9
FLASH_BLOCK = 4096
SAVE_EVERY = 16  # flash blocks between saved offsets of a full-image download
REMEMBERED_JOBS = 8
TIMEOUT_S = 10
NO_PARTITION = (
    "this board has no OTA partition for a full image (flash a MicroPython build with OTA "
    "partitions, e.g. ESP32_GENERIC-OTA, or send an application bundle)"
)


class Failed(Exception):
    """The job cannot succeed: reported FAILED with this reason."""


def _split_url(url, host, port):
    """(host, port, path) of the assignment's url (a path on the server, or http://…)."""
    if not url.startswith("http://"):
        return host, port, url
    rest = url[7:]
    slash = rest.find("/")
    authority, path = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
    if ":" in authority:
        name, number = authority.rsplit(":", 1)
        return name, int(number), path
    return authority, 80, path


def _text(raw):
    try:
        return raw[:200].decode()
    except UnicodeError:
        return "-"


class FileSink:
    """A bundle staged in a file; what is in it is what a resume starts from."""

    kind = "bundle"

    def __init__(self, path, offset):
        if offset == 0:
            loader.remove_tree(path)
        self.path = path
        self.f = open(path, "ab")  # noqa: SIM115 - open across loop passes, closed by close()

    def staged(self):
        return self.f.tell()

    def write(self, data):
        self.f.write(data)

    def close(self):
        self.f.close()

    def finish(self):
        self.close()


def _file_chunks(path):
    with open(path, "rb") as f:
        while True:
            data = f.read(CHUNK)
            if not data:
                return
            yield data


class PartitionSink:
    """A full image written into the next OTA partition, block by block (writeblocks
    erases what it writes); a resume restarts at the last saved block."""

    kind = "image"

    def __init__(self, partition, offset, size):
        info = partition.info()
        if size > info[3]:
            raise Failed("the image (%d bytes) is larger than partition %s" % (size, info[4]))
        self.partition = partition
        self.label = info[4]
        self.block = offset // FLASH_BLOCK
        self.buf = bytearray()

    def staged(self):
        return self.block * FLASH_BLOCK + len(self.buf)

    def write(self, data):
        self.buf += data
        while len(self.buf) >= FLASH_BLOCK:
            self.partition.writeblocks(self.block, self.buf[:FLASH_BLOCK])
            self.buf = self.buf[FLASH_BLOCK:]
            self.block += 1

    def saved_offset(self):
        return self.block * FLASH_BLOCK

    def close(self):
        self.buf = bytearray()

    def finish(self):
        if self.buf:
            self.partition.writeblocks(
                self.block, self.buf + b"\xff" * (FLASH_BLOCK - len(self.buf))
            )
            self.block += 1
            self.buf = bytearray()


def _partition_chunks(partition, size):
    buf = bytearray(FLASH_BLOCK)
    left = size
    block = 0
    while left > 0:
        partition.readblocks(block, buf)
        yield bytes(buf[: min(left, FLASH_BLOCK)])
        left -= FLASH_BLOCK
        block += 1


def _next_partition(esp32):
    if esp32 is None:
        try:
            import esp32
        except ImportError:
            raise Failed(NO_PARTITION) from None
    try:
        return esp32.Partition(esp32.Partition.RUNNING).get_next_update()
    except (OSError, AttributeError):
        raise Failed(NO_PARTITION) from None


class Updater:
    """The update job of one device. `assigned()` takes what the server assigns, `step()`
    does the next piece of work and returns "reboot" when the update is installed."""

    def __init__(
        self, root, host, port, token, public_key, log, running_version, esp32=None, rand=None
    ):
        self.root = root
        self.host = host
        self.port = port
        self.token = token
        self.public_key = public_key
        self.log = log
        self.running_version = running_version
        self.esp32 = esp32
        self.reports = []  # progress documents waiting for the link
        self.backoff = Backoff(rand=rand)
        self._sock = None
        self._sink = None
        self._start = 0
        self._next_try = time.ticks_ms()
        self._reported_at = None
        saved = store.read_json(root + JOB_FILE, {})
        if type(saved) is not dict:
            saved = {}
        self.job = saved.get("job") if type(saved.get("job")) is dict else None
        self.done = saved.get("done") if type(saved.get("done")) is list else []
        if self.job is not None and self.job.get("phase") == "swap":
            self.job["phase"] = "install"  # app.new may be incomplete: unpack it again

    # --- state ----------------------------------------------------------------------------

    def _save(self):
        loader.make_dirs(self.root + "ota")
        store.write_json(self.root + JOB_FILE, {"job": self.job, "done": self.done})

    def finished(self, job_id):
        """`job_id` is over for this device (updated, failed or rolled back): a redelivered
        assignment of it is ignored."""
        if job_id in self.done:
            return
        self.done.append(job_id)
        while len(self.done) > REMEMBERED_JOBS:
            self.done.pop(0)
        self._save()

    def report(self, job_id, state, progress=None, error=None):
        doc = proto.progress_doc(job_id, state, progress, error)
        last = self.reports[-1] if self.reports else None
        if last is not None and last["state"] == state == "DOWNLOADING":
            self.reports[-1] = doc  # only the latest progress matters
        else:
            self.reports.append(doc)

    @property
    def busy(self):
        return self.job is not None

    # --- what the server assigns ----------------------------------------------------------

    def assigned(self, assignment):
        """A new assignment (proto.Assignment) or None when it was withdrawn."""
        job = self.job
        if assignment is None:
            if job is not None and job["phase"] != "swap":
                self.log.warn("update %s withdrawn by the server" % job["job"])
                self._drop()
            return
        if job is not None and assignment.job == job["job"]:
            return
        if assignment.job in self.done:
            return
        if assignment.version == self.running_version:
            self.finished(assignment.job)  # the update this firmware came from
            return
        if job is not None:
            self.log.warn("update %s replaced by %s" % (job["job"], assignment.job))
            self._drop()
        self.job = assignment.to_dict()
        self.job["phase"] = "download"
        self.job["kind"] = None
        self.job["offset"] = 0
        self._save()
        self.backoff.reset()
        self._next_try = time.ticks_ms()
        self.log.info("update %s to %s: %d bytes" % (assignment.job, assignment.version,
                                                     assignment.size))  # fmt: skip
        self.report(assignment.job, "DOWNLOADING", 0.0)
        self._reported_at = time.ticks_ms()

    # --- the work -------------------------------------------------------------------------

    def step(self, feed):
        """One piece of the job; "reboot" once the update is installed and every report
        went out (the caller reboots)."""
        job = self.job
        if job is None:
            return None
        try:
            phase = job["phase"]
            if phase == "download":
                self._pump(feed)
            elif phase == "verify":
                self._verify(feed)
            elif phase == "install":
                self._install(feed)
            elif phase == "swap" and not self.reports:
                return self._swap()
        except Failed as exc:
            self._fail(str(exc))
        except OSError as exc:
            # Flash full, a file that vanished…: not something a retry fixes.
            self._fail("%s failed on the device: %s" % (job["phase"], exc))
        return None

    def _fail(self, reason):
        job = self.job
        self.log.error("update %s failed: %s" % (job["job"], reason))
        self.report(job["job"], "FAILED", error=reason)
        self._drop()
        self.finished(job["job"])

    def _drop(self):
        """Forget the job and what was staged for it."""
        self._close()
        self._sink = None
        loader.remove_tree(self.root + PART_FILE)
        loader.remove_tree(self.root + loader.NEW_DIR)
        self.job = None
        self._save()

    def _close(self):
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
        if self._sink is not None:
            self._sink.close()

    def _retry(self, why):
        self._close()
        self._sink = None
        delay = self.backoff.next_delay_ms()
        self._next_try = time.ticks_add(time.ticks_ms(), delay)
        self.log.warn("update download: %s; resuming in %d ms" % (why, delay))

    # --- download -------------------------------------------------------------------------

    def _staged(self):
        job = self.job
        if job["kind"] == "bundle":
            try:
                import os

                return os.stat(self.root + PART_FILE)[6]
            except OSError:
                return 0
        if job["kind"] == "image":
            return job["offset"]
        return 0

    def _open_sink(self, offset, first):
        job = self.job
        if job["kind"] is None:
            job["kind"] = "image" if first[0] == IMAGE_MAGIC else "bundle"
            self._save()
        if job["kind"] == "image":
            return PartitionSink(_next_partition(self.esp32), offset, job["size"])
        loader.make_dirs(self.root + "ota")
        return FileSink(self.root + PART_FILE, offset)

    def _connect(self, offset):
        import socket  # (here: the pure parts of this module run where there is none)

        job = self.job
        host, port, path = _split_url(job["url"], self.host, self.port)
        address = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0][-1]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(TIMEOUT_S)
            sock.connect(address)
            lines = [
                "GET %s HTTP/1.1" % path,
                "Host: %s:%d" % (host, port),
                "Authorization: Bearer " + self.token,
                "Connection: close",
            ]
            if offset:
                # If-Range: the rest of this very image, or all of it when it changed.
                lines.append("Range: bytes=%d-" % offset)
                lines.append('If-Range: "%s"' % job["sha256"])
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            status, headers, rest = http_head.read(sock, 8192)
        except BaseException:
            sock.close()
            raise
        return sock, status, headers, rest

    def _open(self):
        """Connect and read the head; leaves the socket and the sink ready to pump."""
        job = self.job
        offset = self._staged()
        if offset >= job["size"]:
            offset = 0  # more staged than the image has: start again
            job["kind"] = None
            job["offset"] = 0
        sock, status, headers, rest = self._connect(offset)
        if status == 206:
            if not headers.get("content-range", "").startswith("bytes %d-" % offset):
                sock.close()
                raise OSError("a range that does not start at byte %d" % offset)
        elif status == 200:
            if offset:
                self.log.warn("update download: the server sent the whole image again")
            offset = 0
        elif status == 416:
            sock.close()
            job["kind"] = None
            job["offset"] = 0
            loader.remove_tree(self.root + PART_FILE)
            raise OSError("range refused (416): starting again")
        elif status in (400, 401, 403, 404, 409, 410):
            sock.close()
            raise Failed("the server refused the download (HTTP %d): %s" % (status, _text(rest)))
        else:
            sock.close()
            raise OSError("the server answered %d" % status)
        length = headers.get("content-length")
        if length is not None and offset + int(length) != job["size"]:
            sock.close()
            raise Failed(
                "size: the server has %d bytes, the assignment says %d"
                % (offset + int(length), job["size"])
            )
        self._sock = sock
        self._start = offset
        if rest:
            self._write(rest)

    def _write(self, data):
        if self._sink is None:
            self._sink = self._open_sink(self._start, data)
        if self._sink.staged() + len(data) > self.job["size"]:
            raise Failed("size: the server sent more than the %d bytes assigned" % self.job["size"])
        self._sink.write(data)

    def _pump(self, feed):
        job = self.job
        now = time.ticks_ms()
        if self._sock is None:
            if time.ticks_diff(now, self._next_try) < 0:
                return
            try:
                self._open()
            except OSError as exc:
                self._retry(exc)
                return
        started = time.ticks_ms()
        size = job["size"]
        try:
            while self._staged_now() < size and time.ticks_diff(time.ticks_ms(), started) < STEP_MS:
                data = self._sock.recv(CHUNK)
                if not data:
                    raise OSError("connection closed at byte %d of %d" % (self._staged_now(), size))
                self._write(data)
                feed()
        except OSError as exc:
            self._keep_offset()
            self._retry(exc)
            return
        self._keep_offset()
        staged = self._staged_now()
        if staged >= size:
            self._close()
            self._sink.finish()
            self._sink = None
            self.backoff.reset()
            job["phase"] = "verify"
            self._save()
            self.report(job["job"], "DOWNLOADED", 1.0)
            return
        now = time.ticks_ms()
        if time.ticks_diff(now, self._reported_at or now) >= REPORT_EVERY_MS:
            self.report(job["job"], "DOWNLOADING", int(staged * 1000 / size) / 1000)
            self._reported_at = now

    def _staged_now(self):
        return self._sink.staged() if self._sink is not None else self._staged()

    def _keep_offset(self):
        """A full image's resume point, saved every SAVE_EVERY blocks (a bundle's is the
        size of its staged file)."""
        sink = self._sink
        if sink is None or sink.kind != "image":
            return
        saved = sink.saved_offset()
        if saved - self.job["offset"] >= SAVE_EVERY * FLASH_BLOCK:
            self.job["offset"] = saved
            self._save()

    # --- verify and install ---------------------------------------------------------------

    def _chunks(self):
        job = self.job
        if job["kind"] == "image":
            return _partition_chunks(_next_partition(self.esp32), job["size"])
        return _file_chunks(self.root + PART_FILE)

    def _verify(self, feed):
        job = self.job
        size = job["size"]
        digest = hashlib.sha256()
        count = 0
        head = b""
        for data in self._chunks():
            if len(head) < 512:
                head += data[: 512 - len(head)]
            digest.update(data)
            count += len(data)
            feed()
        if count != size:
            raise Failed("size: %d bytes staged, the assignment says %d" % (count, size))
        raw = digest.digest()
        got = binascii.hexlify(raw).decode()
        if got != job["sha256"]:
            raise Failed("SHA-256 mismatch: the image has %s, the assignment says %s"
                         % (got, job["sha256"]))  # fmt: skip
        if not self.public_key:
            raise Failed("no ota_public_key in config.json: the signature cannot be checked")
        try:
            key = binascii.a2b_base64(self.public_key.encode())
            signature = binascii.a2b_base64(job["signature"].encode())
        except ValueError:
            raise Failed("the key or the signature is not base64") from None
        if len(key) != 32:
            raise Failed("ota_public_key in config.json is not a 32-byte Ed25519 key")
        feed()
        if not ed25519.verify(key, raw, signature):
            raise Failed("bad signature: the image is not signed by this device's key")
        feed()
        if job["kind"] == "bundle" and not bundle.is_tar(head):
            raise Failed("neither an application bundle (tar) nor an ESP32 image (0xE9)")
        job["phase"] = "install"
        self._save()
        self.report(job["job"], "VERIFIED")

    def _install(self, feed):
        job = self.job
        if job["kind"] == "bundle":
            target = self.root + loader.NEW_DIR
            loader.remove_tree(target)
            try:
                version = bundle.extract(self.root + PART_FILE, target, feed)
            except bundle.BundleError as exc:
                raise Failed("bad bundle: %s" % exc) from None
            if version != job["version"]:
                raise Failed("the bundle's VERSION is %s, the assignment says %s"
                             % (version, job["version"]))  # fmt: skip
        else:
            partition = _next_partition(self.esp32)
            partition.set_boot()
            job["label"] = partition.info()[4]
        job["phase"] = "swap"
        self._save()
        self.report(job["job"], "UPDATING")

    def _swap(self):
        job = self.job
        loader.install(self.root, job["job"], job["version"], job["kind"], job.get("label"))
        loader.remove_tree(self.root + PART_FILE)
        self.job = None
        self.finished(job["job"])
        self.log.info("update %s installed: rebooting into %s" % (job["job"], job["version"]))
        return "reboot"
