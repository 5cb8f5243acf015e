"""ota: Ed25519/SHA-512, bundles (tar), the loader's swap and rollback, and the updater's
verify and install steps (the download itself needs sockets: tests/firmware/test_ota.py)."""

import binascii
import hashlib
import os

import sensorium_boot as loader
from casekit import Log, raises
from sensorium_fw import bundle, ed25519, ota

# RFC 8032 section 7.1, tests 1-3: (secret seed, public key, message, signature).
RFC8032 = (
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
        "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
)
SEED = bytes(range(32))


def _h(text):
    return binascii.unhexlify(text)


def _hex(raw):
    return binascii.hexlify(raw).decode()


def _b64(raw):
    return binascii.b2a_base64(raw).decode().strip()


def public_key(seed):
    h = ed25519.sha512(seed)
    a = int.from_bytes(h[:32], "little") & ((1 << 254) - 8) | (1 << 254)
    return ed25519._encode(ed25519._double_scalar(a, ed25519.B, 0, ed25519.IDENTITY))


def sign(seed, message):
    """RFC 8032 signing, for the tests only (the device never signs)."""
    h = ed25519.sha512(seed)
    a = int.from_bytes(h[:32], "little") & ((1 << 254) - 8) | (1 << 254)
    big_a = public_key(seed)
    r = int.from_bytes(ed25519.sha512(h[32:] + message), "little") % ed25519.L
    big_r = ed25519._encode(ed25519._double_scalar(r, ed25519.B, 0, ed25519.IDENTITY))
    k = int.from_bytes(ed25519.sha512(big_r + big_a + message), "little") % ed25519.L
    return big_r + ((r + k * a) % ed25519.L).to_bytes(32, "little")


# --- SHA-512 and Ed25519 ---------------------------------------------------------------------


def case_sha512_matches_the_standard_vectors():
    assert _hex(ed25519.sha512(b"")) == (
        "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce"
        "47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"
    )
    assert _hex(ed25519.sha512(b"abc")) == (
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
    )
    two_blocks = (
        b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmno"
        b"ijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu"
    )
    assert _hex(ed25519.sha512(two_blocks)) == (
        "8e959b75dae313da8cf4f72814fc143f8f7779c6eb9f7fa17299aeadb6889018"
        "501d289e4900f7e4331b99dec4b5433ac7d329eeb6dd26545e96e55b874be909"
    )


def case_ed25519_accepts_the_rfc8032_vectors():
    for seed, key, message, signature in RFC8032:
        assert ed25519.verify(_h(key), _h(message), _h(signature))
        # The test signer reproduces them, so what it signs below is real Ed25519.
        assert public_key(_h(seed)) == _h(key)
        assert sign(_h(seed), _h(message)) == _h(signature)


def case_ed25519_refuses_any_flipped_bit():
    _seed, key, message, signature = RFC8032[2]
    key, message, signature = _h(key), _h(message), _h(signature)
    for bit in range(0, 512, 7):
        bad = bytearray(signature)
        bad[bit // 8] ^= 1 << (bit % 8)
        assert not ed25519.verify(key, message, bytes(bad)), bit
    for bit in range(16):
        bad = bytearray(message)
        bad[bit // 8] ^= 1 << (bit % 8)
        assert not ed25519.verify(key, bytes(bad), signature), bit
    for bit in range(0, 256, 11):
        bad = bytearray(key)
        bad[bit // 8] ^= 1 << (bit % 8)
        assert not ed25519.verify(bytes(bad), message, signature), bit
    other = public_key(SEED)
    assert not ed25519.verify(other, message, signature)


def case_ed25519_refuses_a_non_canonical_s_and_bad_lengths():
    _seed, key, message, signature = RFC8032[0]
    key, message, signature = _h(key), _h(message), _h(signature)
    s = int.from_bytes(signature[32:], "little")
    # S + L is the same scalar mod L, so the equation holds: only the range check stops it.
    assert s + ed25519.L < 2**256
    forged = signature[:32] + (s + ed25519.L).to_bytes(32, "little")
    assert not ed25519.verify(key, message, forged)
    assert not ed25519.verify(key, message, signature[:63])
    assert not ed25519.verify(key[:31], message, signature)
    # A key whose y is not below p is not an encoding of a point.
    assert not ed25519.verify(b"\xff" * 31 + b"\x7f", message, signature)


# --- bundles ---------------------------------------------------------------------------------


def tar(members):
    """A ustar archive of (name, data) members; data None: a directory; a third item
    overrides the type flag."""
    out = bytearray()
    for member in members:
        name, data = member[0], member[1]
        flag = member[2] if len(member) > 2 else ("5" if data is None else "0")
        header = bytearray(512)
        raw = name.encode()
        header[0 : len(raw)] = raw
        header[100:108] = b"0000644\x00"
        header[108:116] = b"0000000\x00"
        header[116:124] = b"0000000\x00"
        size = 0 if data is None else len(data)
        header[124:136] = ("%011o" % size).encode() + b"\x00"
        header[136:148] = b"00000000000\x00"
        header[148:156] = b"        "
        header[156] = ord(flag)
        header[257:263] = b"ustar\x00"
        header[263:265] = b"00"
        header[148:156] = ("%06o" % sum(header)).encode() + b"\x00 "
        out += header
        if data:
            out += data + bytes((512 - len(data) % 512) % 512)
    return bytes(out + bytes(1024))


APP_SOURCE = b"def main(*args, **kwargs):\n    return 'new'\n"


def good_bundle(version="1.3.0", extra=()):
    members = [
        ("./", None),
        ("./VERSION", version.encode() + b"\n"),
        ("./sensorium_fw/", None),
        ("./sensorium_fw/__init__.py", ("FW_VERSION = '%s'\n" % version).encode()),
        ("./sensorium_fw/app.py", APP_SOURCE),
        ("./sensorium_fw/big.py", b"# " + b"x" * 5000 + b"\n"),
    ]
    members.extend(extra)  # (MicroPython has no unpacking in list displays)
    return tar(members)


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _fresh(name):
    loader.remove_tree(name)
    os.mkdir(name)
    return name + "/"


def case_a_bundle_unpacks_with_its_version():
    root = _fresh("ota_unpack")
    _write(root + "b.tar", good_bundle())
    assert bundle.is_tar(good_bundle()[:512])
    assert bundle.extract(root + "b.tar", root + "out") == "1.3.0"
    assert _read(root + "out/sensorium_fw/app.py") == APP_SOURCE
    assert len(_read(root + "out/sensorium_fw/big.py")) == 5003
    assert sorted(os.listdir(root + "out")) == ["VERSION", "sensorium_fw"]


def case_bad_bundles_are_refused():
    root = _fresh("ota_bad")
    cases = (
        (good_bundle(extra=[("../evil.py", b"x")]), "outside"),
        (good_bundle(extra=[("/etc/evil.py", b"x")]), "outside"),
        (good_bundle(extra=[("sensorium_fw/a/../../x", b"x")]), "outside"),
        (good_bundle(extra=[("link", None, "2")]), "unsupported"),
        (tar([("VERSION", b"1.3.0")]), "lacks sensorium_fw/__init__, sensorium_fw/app"),
        (good_bundle()[:1500], "ends in the middle"),
        (b"\x00" * 100 + good_bundle()[100:], "not a tar"),
    )
    for raw, words in cases:
        _write(root + "b.tar", raw)
        loader.remove_tree(root + "out")
        exc = raises(bundle.BundleError, bundle.extract, root + "b.tar", root + "out")
        assert words in str(exc), (words, str(exc))
    assert not loader.exists(root + "evil.py")


# --- the loader ------------------------------------------------------------------------------


def _bundle_dir(path, version):
    loader.make_dirs(path + "/sensorium_fw")
    _write(path + "/VERSION", version.encode())


def case_install_swaps_and_keeps_the_previous_bundle():
    root = _fresh("ota_install")
    _bundle_dir(root + "app", "1.0.0")
    assert loader.prepare(root).version == "1.0.0"
    _bundle_dir(root + "app.new", "1.3.0")
    loader.install(root, "j_1", "1.3.0")
    assert loader.bundle_version(root + "app") == "1.3.0"
    assert loader.bundle_version(root + "app.prev") == "1.0.0"
    assert not loader.exists(root + "app.new")
    boot = loader.prepare(root)
    assert boot.version == "1.3.0"
    assert boot.trial["job"] == "j_1"
    assert boot.trial["boots"] == 1
    assert boot.trial["previous"] == "1.0.0"
    loader.confirm(root, boot.trial)
    again = loader.prepare(root)
    assert again.trial is None
    assert again.version == "1.3.0"
    assert loader.bundle_version(root + "app.prev") == "1.0.0"  # kept


def case_rollback_restores_the_previous_bundle_and_leaves_a_note():
    root = _fresh("ota_rollback")
    _bundle_dir(root + "app", "1.0.0")
    _bundle_dir(root + "app.new", "1.3.0")
    loader.install(root, "j_2", "1.3.0")
    loader.prepare(root)
    assert loader.rollback(root, "rolled back: no server")
    boot = loader.prepare(root)
    assert boot.version == "1.0.0"
    assert boot.trial is None
    assert boot.note == {"job": "j_2", "error": "rolled back: no server"}
    loader.reported(root)
    assert loader.prepare(root).note is None
    assert not loader.rollback(root, "nothing on trial")


def case_a_bundle_that_never_confirms_is_rolled_back_after_max_boots():
    root = _fresh("ota_boots")
    _bundle_dir(root + "app", "1.0.0")
    _bundle_dir(root + "app.new", "1.3.0")
    loader.install(root, "j_3", "1.3.0")
    for boots in range(1, loader.MAX_TRIAL_BOOTS + 1):
        boot = loader.prepare(root)
        assert (boot.version, boot.trial["boots"]) == ("1.3.0", boots)
    boot = loader.prepare(root)
    assert boot.version == "1.0.0"
    assert boot.trial is None
    assert "did not start" in boot.note["error"]


def case_an_install_or_rollback_cut_by_a_power_loss_is_finished_at_boot():
    root = _fresh("ota_torn")
    _bundle_dir(root + "app", "1.0.0")
    _bundle_dir(root + "app.new", "1.3.0")
    # Power lost after the trial was written and app/ moved away, before app.new/ moved.
    loader.make_dirs(root + "ota")
    trial = {"job": "j_4", "version": "1.3.0", "boots": 0, "previous_dir": root + "app"}
    loader.write_json(root + loader.TRIAL_FILE, trial)
    os.rename(root + "app", root + "app.prev")
    boot = loader.prepare(root)
    assert boot.version == "1.3.0"
    assert boot.trial["job"] == "j_4"
    assert loader.bundle_version(root + "app.prev") == "1.0.0"
    # A rollback lost between its two renames: app/ gone, app.prev/ still there.
    trial = loader.read_json(root + loader.TRIAL_FILE)
    trial["error"] = "rolled back: test"
    loader.write_json(root + loader.TRIAL_FILE, trial)
    os.rename(root + "app", root + "app.bad")
    boot = loader.prepare(root)
    assert boot.version == "1.0.0"
    assert boot.trial is None
    assert boot.note["error"] == "rolled back: test"


class _App:
    def __init__(self, fail):
        self.fail = fail
        self.boots = []

    def main(self, root, should_stop, started, boot):
        self.boots.append(boot)
        if self.fail:
            raise ValueError("broken bundle")
        return "ran"


def case_a_bundle_that_crashes_on_trial_is_rolled_back():
    root = _fresh("ota_crash")
    _bundle_dir(root + "app", "1.0.0")
    _bundle_dir(root + "app.new", "1.3.0")
    loader.install(root, "j_5", "1.3.0")
    resets = []
    app = _App(fail=True)
    raises(ValueError, loader.main, root, None, None, lambda: app, lambda: resets.append(1))
    assert resets == [1]
    assert loader.bundle_version(root + "app") == "1.0.0"
    assert "ValueError: broken bundle" in loader.read_json(root + loader.NOTE_FILE)["error"]
    # Off trial, a crash is just a crash: nothing rolled back, no reset here.
    ok = _App(fail=False)
    assert loader.main(root, None, None, lambda: ok, lambda: resets.append(2)) == "ran"
    assert resets == [1]


# --- the updater -----------------------------------------------------------------------------


def _updater(root, image, key=None, esp32=None, version="1.3.0", kind="bundle"):
    digest = hashlib.sha256(image).digest()
    updater = ota.Updater(
        root, "127.0.0.1", 1, "token", _b64(key or public_key(SEED)), Log(), "1.0.0", esp32
    )

    class Assigned:
        def to_dict(self):
            return {
                "job": "j_9",
                "version": version,
                "size": len(image),
                "sha256": _hex(digest),
                "signature": _b64(sign(SEED, digest)),
                "url": "/api/v1/firmware/jobs/j_9/image",
            }

    assigned = Assigned()
    for name, value in assigned.to_dict().items():
        setattr(assigned, name, value)
    updater.assigned(assigned)
    if updater.job is not None:
        updater.job["kind"] = kind
        updater.job["phase"] = "verify"
    return updater


def _states(updater):
    return [doc["state"] for doc in updater.reports]


def case_a_staged_bundle_is_verified_unpacked_and_installed():
    root = _fresh("ota_update")
    _bundle_dir(root + "app", "1.0.0")
    image = good_bundle()
    updater = _updater(root, image)
    _write(root + ota.PART_FILE, image)
    feed = []
    assert updater.step(lambda: feed.append(1)) is None
    assert _states(updater) == ["DOWNLOADING", "VERIFIED"]
    assert feed
    assert updater.step(lambda: None) is None  # unpacks into app.new/
    assert _states(updater)[-1] == "UPDATING"
    assert loader.bundle_version(root + "app.new") == "1.3.0"
    assert updater.step(lambda: None) is None  # the UPDATING report is not out yet
    updater.reports = []
    assert updater.step(lambda: None) == "reboot"
    assert loader.bundle_version(root + "app") == "1.3.0"
    assert loader.read_json(root + loader.TRIAL_FILE)["job"] == "j_9"
    assert not loader.exists(root + ota.PART_FILE)
    assert "j_9" in updater.done
    assert updater.job is None


def case_a_tampered_image_or_a_wrong_key_fails_and_changes_nothing():
    root = _fresh("ota_refused")
    _bundle_dir(root + "app", "1.0.0")
    image = good_bundle()
    for key, damage, reason in (
        (None, 700, "SHA-256 mismatch"),
        (public_key(b"\x01" * 32), None, "bad signature"),
    ):
        updater = _updater(root, image, key=key)
        staged = bytearray(image)
        if damage is not None:
            staged[damage] ^= 0x01
        _write(root + ota.PART_FILE, bytes(staged))
        updater.step(lambda: None)
        failed = updater.reports[-1]
        assert failed["state"] == "FAILED", failed
        assert reason in failed["error"], failed
        assert updater.job is None
        assert "j_9" in updater.done
        assert not loader.exists(root + ota.PART_FILE)
        assert loader.bundle_version(root + "app") == "1.0.0"
        assert not loader.exists(root + loader.TRIAL_FILE)
        # The same job assigned again (the retained message) is not tried again.
        loader.remove_tree(root + ota.JOB_FILE)
        updater.done = ["j_9"]


def case_a_bundle_with_another_version_inside_is_refused():
    root = _fresh("ota_version")
    image = good_bundle(version="1.2.9")
    updater = _updater(root, image)
    _write(root + ota.PART_FILE, image)
    updater.step(lambda: None)
    updater.step(lambda: None)
    assert updater.reports[-1]["state"] == "FAILED"
    assert "VERSION is 1.2.9, the assignment says 1.3.0" in updater.reports[-1]["error"]
    assert not loader.exists(root + "app.new")


class _Slot:
    """An OTA app partition of esp32.Partition (4 KiB blocks, erased to 0xFF)."""

    def __init__(self, label, size):
        self.label = label
        self.data = bytearray(b"\xff" * size)
        self.writes = 0
        self.booted = False

    def info(self):
        return (0, 16, 0x110000, len(self.data), self.label, False)

    def writeblocks(self, block, buf):
        assert len(buf) == 4096
        self.data[block * 4096 : block * 4096 + 4096] = buf
        self.writes += 1

    def readblocks(self, block, buf):
        buf[:] = self.data[block * 4096 : block * 4096 + len(buf)]

    def set_boot(self):
        self.booted = True

    def get_next_update(self):
        return self


class _Esp32:
    """The esp32 module's Partition, for a board with two OTA slots."""

    def __init__(self, slot):
        self.slot = slot
        self.Partition = self
        self.RUNNING = 1
        self.valid = False

    def __call__(self, which):
        assert which == self.RUNNING
        return self.slot

    def mark_app_valid_cancel_rollback(self):
        self.valid = True


class _NoOta(_Esp32):
    """ESP32_GENERIC's partition table: one factory app, no OTA slots."""

    def __call__(self, which):
        return self

    def get_next_update(self):
        raise OSError(2)


def case_a_full_image_goes_to_the_next_ota_partition():
    root = _fresh("ota_image")
    image = b"\xe9" + bytes(range(256)) * 40  # 10,241 bytes: two blocks and a bit
    slot = _Slot("ota_1", 64 * 1024)
    esp32 = _Esp32(slot)
    updater = _updater(root, image, esp32=esp32, kind=None)
    updater.job["phase"] = "download"
    updater._write(image[:5000])  # as the download does, in pieces
    updater._write(image[5000:])
    assert updater.job["kind"] == "image"
    updater._sink.finish()
    assert slot.data[: len(image)] == image
    assert slot.data[len(image) : 3 * 4096] == b"\xff" * (3 * 4096 - len(image))
    updater.job["phase"] = "verify"
    updater.step(lambda: None)
    updater.step(lambda: None)
    assert _states(updater)[-2:] == ["VERIFIED", "UPDATING"], updater.reports
    assert slot.booted
    updater.reports = []
    assert updater.step(lambda: None) == "reboot"
    trial = loader.read_json(root + loader.TRIAL_FILE)
    assert (trial["kind"], trial["label"], trial["version"]) == ("image", "ota_1", "1.3.0")


def case_a_full_image_without_an_ota_partition_is_refused():
    root = _fresh("ota_noslot")
    image = b"\xe9" + bytes(9000)
    updater = _updater(root, image, esp32=_NoOta(None), kind=None)
    updater.job["phase"] = "download"
    exc = raises(ota.Failed, updater._write, image[:4000])
    assert "no OTA partition" in str(exc)
    small = _Slot("ota_1", 4096)
    updater = _updater(root, image, esp32=_Esp32(small), kind=None)
    updater.job["phase"] = "download"
    exc = raises(ota.Failed, updater._write, image[:4000])
    assert "larger than partition ota_1" in str(exc)


def case_withdrawn_or_finished_assignments():
    root = _fresh("ota_withdrawn")
    updater = _updater(root, good_bundle())
    assert updater.busy
    _write(root + ota.PART_FILE, b"partial")
    updater.assigned(None)
    assert updater.job is None
    assert not loader.exists(root + ota.PART_FILE)
    # What the device already runs is not downloaded again (the assignment of the
    # update it came from, still retained until the server saw its status).
    again = _updater(root, good_bundle(), version="1.0.0")
    assert again.job is None
    assert again.reports == []
    assert "j_9" in again.done
