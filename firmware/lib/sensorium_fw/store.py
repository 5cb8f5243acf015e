"""Small JSON files in flash, replaced atomically (a power cut leaves the old or the new)."""

import json
import os


def read_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def write_json(path, doc):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    try:
        os.rename(tmp, path)
    except OSError:
        # FAT (unlike LittleFS) refuses to rename over an existing file.
        os.remove(path)
        os.rename(tmp, path)
