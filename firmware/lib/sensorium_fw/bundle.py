"""Application bundles: an uncompressed POSIX tar (ustar, as `tar --format=ustar` and
Python's tarfile write) of the app directory, `VERSION` and `sensorium_fw/…`, unpacked
in 512-byte records and small copy chunks so memory use stays flat whatever its size.

Only regular files and directories are accepted, with relative names inside the bundle
(no absolute paths, no `..`); pax and GNU long-name records are refused rather than
misread.
"""

from sensorium_boot import make_dirs

BLOCK = 512
CHUNK = 2048
REQUIRED = ("VERSION", "sensorium_fw/__init__", "sensorium_fw/app")


class BundleError(ValueError):
    pass


def is_tar(head):
    """The first 512 bytes of a file look like a ustar archive."""
    return len(head) >= 263 and head[257:262] == b"ustar"


def _field(header, start, length):
    raw = header[start : start + length]
    end = raw.find(b"\x00")
    return raw if end < 0 else raw[:end]


def _octal(header, start, length):
    text = _field(header, start, length).strip()
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise BundleError("a tar header has a bad number") from None


def _checksum_ok(header):
    stored = _octal(header, 148, 8)
    total = 0
    for i in range(BLOCK):
        total += 32 if 148 <= i < 156 else header[i]
    return total == stored


def _clean_name(header):
    name = _field(header, 0, 100)
    prefix = _field(header, 345, 155) if header[257:262] == b"ustar" else b""
    if prefix:
        name = prefix + b"/" + name
    try:
        text = name.decode()
    except UnicodeError:
        raise BundleError("a file name in the bundle is not UTF-8") from None
    while text.startswith("./"):
        text = text[2:]
    text = text.rstrip("/")
    if text.startswith("/") or "\\" in text:
        raise BundleError("the bundle names a file outside it: %s" % text)
    if text in ("", "."):
        return ""
    for part in text.split("/"):
        if part in ("", ".", ".."):
            raise BundleError("the bundle names a file outside it: %s" % text)
    return text


def entries(f):
    """(name, kind, size) of each member, kind "file" or "dir"; for a file, its data
    follows in `f` (read it, or skip it with skip_data). Stops at the end marker."""
    while True:
        header = f.read(BLOCK)
        if len(header) < BLOCK:
            raise BundleError("the bundle ends in the middle of a tar header")
        if header == bytes(BLOCK):
            return
        if header[257:262] != b"ustar" or not _checksum_ok(header):
            raise BundleError("not a tar (ustar) archive, or a damaged one")
        kind = header[156:157]
        size = _octal(header, 124, 12)
        name = _clean_name(header)
        if kind in (b"0", b"\x00"):
            yield name, "file", size
        elif kind == b"5":
            if size:
                raise BundleError("a tar directory entry with data")
            yield name, "dir", 0
        else:
            raise BundleError(
                "unsupported tar entry type %r for %s (only files and directories)"
                % (kind.decode(), name or "-")
            )


def padding(size):
    return (BLOCK - size % BLOCK) % BLOCK


def extract(path, target, feed=None):
    """Unpack the bundle file `path` into the directory `target` (created; must not
    exist). Returns the VERSION it carries. Raises BundleError for a bad bundle."""
    make_dirs(target)
    seen = []
    with open(path, "rb") as f:
        for name, kind, size in entries(f):
            if not name:
                continue
            out_path = target + "/" + name
            if kind == "dir":
                make_dirs(out_path)
                continue
            if "/" in name:
                make_dirs(out_path[: out_path.rfind("/")])
            left = size
            with open(out_path, "wb") as out:
                while left:
                    data = f.read(min(CHUNK, left))
                    if not data:
                        raise BundleError("the bundle ends in the middle of %s" % name)
                    out.write(data)
                    left -= len(data)
                    if feed is not None:
                        feed()
            f.read(padding(size))
            dot = name.rfind(".")
            seen.append(name[:dot] if dot > name.rfind("/") else name)
    missing = [name for name in REQUIRED if name not in seen]
    if missing:
        raise BundleError("the bundle lacks %s" % ", ".join(missing))
    with open(target + "/VERSION") as f:
        version = f.read().strip()
    if not version:
        raise BundleError("the bundle's VERSION is empty")
    return version
