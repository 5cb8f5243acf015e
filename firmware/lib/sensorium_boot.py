"""The loader main.py runs: picks the application bundle, finishes an update or a
rollback that a power cut interrupted, and rolls back a new bundle that does not work.

It lives outside the bundles (flash: /lib/sensorium_boot.mpy, flashed once, never
replaced over the air), so a broken update can always be undone. Flash layout:

  app/          the running bundle: VERSION, sensorium_fw/…  (first on sys.path)
  app.prev/     the bundle before the last update (what a rollback restores)
  app.new/      a verified bundle being swapped in
  ota/trial.json  an update on trial: {"job", "version", "previous", "kind", "boots"}
  ota/note.json   a rollback to report once connected: {"job", "error"}

An update is on trial until its app reaches the server (`confirm()`). It is rolled back
when the app says so (`rollback()`: no connection within the configured time), when it
raises out of main(), and after MAX_TRIAL_BOOTS boots without a confirmation (a crash or
watchdog reset every time).
"""

import json
import os
import sys

APP_DIR = "app"
PREV_DIR = "app.prev"
NEW_DIR = "app.new"
BAD_DIR = "app.bad"
STATE_DIR = "ota"
TRIAL_FILE = "ota/trial.json"
NOTE_FILE = "ota/note.json"
IMAGE_FILE = "ota/image.json"
VERSION_FILE = "VERSION"
MAX_TRIAL_BOOTS = 3


# --- files -----------------------------------------------------------------------------------


def exists(path):
    try:
        os.stat(path)
    except OSError:
        return False
    return True


def is_dir(path):
    try:
        return os.stat(path)[0] & 0x4000 != 0
    except OSError:
        return False


def remove_tree(path):
    """Delete a file or a directory with everything in it (missing: nothing to do)."""
    if not exists(path):
        return
    if not is_dir(path):
        os.remove(path)
        return
    for name in os.listdir(path):
        remove_tree(path + "/" + name)
    os.rmdir(path)


def make_dirs(path):
    """mkdir -p (MicroPython's os has no makedirs)."""
    built = ""
    for part in path.split("/"):
        if not part:
            built += "/"
            continue
        built += part
        if not exists(built):
            os.mkdir(built)
        built += "/"


def read_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def write_json(path, doc):
    """Replace `path` atomically (a power cut leaves the old or the new)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    try:
        os.rename(tmp, path)
    except OSError:
        os.remove(path)  # FAT refuses to rename over an existing file
        os.rename(tmp, path)


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def bundle_version(directory):
    """The VERSION a bundle directory carries; None without one."""
    try:
        with open(directory + "/" + VERSION_FILE) as f:
            version = f.read().strip()
    except OSError:
        return None
    return version or None


# --- what the app learns at boot ---------------------------------------------------------


class Boot:
    """The bundle being run (`version`: its VERSION, or None when running a flashed lib/
    without bundles), the update on trial (`trial`) and a rollback still to report (`note`)."""

    def __init__(self, root, version, trial, note):
        self.root = root
        self.version = version
        self.trial = trial
        self.note = note


def _swap_in_new(root):
    """app.new becomes app, the running one app.prev (each step can be redone)."""
    if not exists(root + NEW_DIR):
        return
    if exists(root + APP_DIR):
        # (No app/: cut short after it became app.prev/, which is kept.)
        remove_tree(root + PREV_DIR)
        os.rename(root + APP_DIR, root + PREV_DIR)
    os.rename(root + NEW_DIR, root + APP_DIR)


def _swap_back(root, trial):
    if trial.get("kind") == "image":
        _previous_partition_boot()
        return
    remove_tree(root + BAD_DIR)
    if exists(root + PREV_DIR):
        if exists(root + APP_DIR):
            os.rename(root + APP_DIR, root + BAD_DIR)
        os.rename(root + PREV_DIR, root + APP_DIR)
    elif exists(root + APP_DIR) and trial.get("previous_dir") is None:
        # The first bundle ever installed over a flashed lib/: back to that lib/.
        os.rename(root + APP_DIR, root + BAD_DIR)
    remove_tree(root + BAD_DIR)


def _previous_partition_boot():
    import esp32

    esp32.Partition(esp32.Partition.RUNNING).get_next_update().set_boot()


def prepare(root=""):
    """Put the bundles in order after whatever the last boot was doing; count a trial
    boot, rolling back past MAX_TRIAL_BOOTS. Returns a Boot."""
    if not exists(root + APP_DIR) and exists(root + PREV_DIR) and not exists(root + NEW_DIR):
        os.rename(root + PREV_DIR, root + APP_DIR)  # a rollback cut between renames
    trial = read_json(root + TRIAL_FILE)
    if type(trial) is dict:
        if trial.get("error"):
            _finish_rollback(root, trial)  # cut short by a power loss: finish it
            trial = None
        else:
            _swap_in_new(root)  # an install cut short: finish it
            trial["boots"] = trial.get("boots", 0) + 1
            write_json(root + TRIAL_FILE, trial)
            if trial["boots"] > MAX_TRIAL_BOOTS:
                rollback(root, "%s did not start: %d boots without reaching the server"
                         % (trial.get("version"), MAX_TRIAL_BOOTS))  # fmt: skip
                trial = None
    else:
        trial = None
        remove_tree(root + NEW_DIR)  # extracted, never installed (the update was given up)
    note = read_json(root + NOTE_FILE)
    return Boot(root, _running_version(root), trial, note if type(note) is dict else None)


def _running_version(root):
    version = bundle_version(root + APP_DIR)
    image = read_json(root + IMAGE_FILE)
    # A full image installed over the air reports its version while it runs with the
    # bundle it was installed under.
    if (
        type(image) is dict
        and image.get("bundle") == version
        and _running_label() == image.get("label")
    ):
        return image.get("version")
    return version


def _running_label():
    try:
        import esp32

        return esp32.Partition(esp32.Partition.RUNNING).info()[4]
    except (ImportError, AttributeError, OSError):
        return None


# --- what the app asks of it ---------------------------------------------------------------


def install(root, job, version, kind="bundle", label=None):
    """A verified update becomes the one booted next, on trial. For a bundle, app.new/
    holds it; for a full image, the next OTA partition was already set to boot."""
    make_dirs(root + STATE_DIR)
    trial = {
        "job": job,
        "version": version,
        "previous": _running_version(root),
        "previous_dir": root + APP_DIR if exists(root + APP_DIR) else None,
        "kind": kind,
        "boots": 0,
    }
    if kind == "image":
        trial["label"] = label
        trial["bundle"] = bundle_version(root + APP_DIR)
    write_json(root + TRIAL_FILE, trial)
    if kind == "bundle":
        _swap_in_new(root)


def confirm(root, trial):
    """The new bundle (or image) reached the server: it stays."""
    if trial.get("kind") == "image":
        import esp32

        esp32.Partition.mark_app_valid_cancel_rollback()
        write_json(
            root + IMAGE_FILE,
            {"version": trial["version"], "label": trial.get("label"), "bundle": trial["bundle"]},
        )
    _remove(root + TRIAL_FILE)


def rollback(root, error):
    """Back to the previous bundle (or partition); the reason is kept in ota/note.json for
    the app to report. The caller reboots."""
    trial = read_json(root + TRIAL_FILE)
    if type(trial) is not dict:
        return False
    trial["error"] = error
    write_json(root + TRIAL_FILE, trial)
    _finish_rollback(root, trial)
    return True


def _finish_rollback(root, trial):
    _swap_back(root, trial)
    write_json(root + NOTE_FILE, {"job": trial.get("job"), "error": trial["error"]})
    _remove(root + TRIAL_FILE)


def reported(root):
    """The rollback note was delivered."""
    _remove(root + NOTE_FILE)


# --- main.py's entry -------------------------------------------------------------------------


def _load_app(root):
    sys.path.insert(0, root + APP_DIR)
    from sensorium_fw import app

    return app


def main(root="", should_stop=None, started=None, load=None, reset=None):
    """Boot the bundle in app/ (`load` imports its app module: host tests pass their own;
    `reset` reboots: machine.reset on the board)."""
    boot = prepare(root)
    if reset is None:
        import machine

        reset = machine.reset
    try:
        app = _load_app(root) if load is None else load()
        return app.main(root, should_stop, started, boot=boot)
    except Exception as exc:
        if boot.trial is not None and rollback(
            root, "%s crashed: %s: %s" % (boot.trial.get("version"), type(exc).__name__, exc)
        ):
            print("sensorium: the new bundle crashed, rolled back")
            reset()
        raise
