"""Ed25519 keys for firmware images: made by `sensorium ota keygen`, kept in files outside
the database, never logged.

A signature is Ed25519 over the 32 bytes of the image's SHA-256 digest, base64-encoded
(PROTOCOL.md "OTA"); a device checks it against the raw 32-byte public key it was
flashed with (`public_key_b64`).
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sensorium.config import InsecureSettings, Settings

log = logging.getLogger(__name__)

DEV_KEY_NAME = "ota-signing-key.pem"
SIGNATURE_BYTES = 64


class KeyFileError(InsecureSettings):
    """A key file that is missing, unreadable, not a key, or readable by others."""


def public_path(private_path: Path) -> Path:
    return private_path.with_name(private_path.name + ".pub")


def generate_key_files(path: Path) -> Ed25519PublicKey:
    """A new key pair: the private key at `path` (PEM, mode 0600, never overwritten) and
    the public key beside it (`<path>.pub`, PEM)."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written whole beside it, then linked into place: another process never reads a
    # half-written key, and an existing key (and every device flashed with its public
    # half) is kept (link raises FileExistsError).
    fd, staged = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:  # mkstemp: mode 0600
            out.write(pem)
        os.link(staged, path)
    finally:
        os.unlink(staged)
    public = key.public_key()
    public_path(path).write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return public


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read the OTA {what} {path}: {exc.strerror}") from None


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The signing key, refused when group or others may read the file (as ssh does)."""
    try:
        info = path.stat()
    except OSError as exc:
        raise KeyFileError(f"cannot read the OTA signing key {path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise KeyFileError(f"the OTA signing key {path} is not a regular file")
    if info.st_mode & 0o077:
        raise KeyFileError(
            f"the OTA signing key {path} is accessible by others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}"
        )
    try:
        key = serialization.load_pem_private_key(_read(path, "signing key"), password=None)
    except (ValueError, TypeError):
        raise KeyFileError(
            f"{path} is not an unencrypted PEM private key (make one with `sensorium ota keygen`)"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A PEM public key, or the raw 32 bytes in base64 (what devices are flashed with)."""
    data = _read(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            raw = base64.b64decode(data.strip(), validate=True)
            key = Ed25519PublicKey.from_public_bytes(raw)
        except (binascii.Error, ValueError):
            raise KeyFileError(f"{path} is not an Ed25519 public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} is not an Ed25519 public key")
    return key


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True, slots=True)
class OtaKeys:
    """What this installation signs with (if anything) and verifies against."""

    public: Ed25519PublicKey
    private: Ed25519PrivateKey | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> OtaKeys:
        settings.check_secure()
        if settings.ota_signing_key is not None:
            private = load_private_key(settings.ota_signing_key)
            public = private.public_key()
            if settings.ota_public_key is not None:
                configured = load_public_key(settings.ota_public_key)
                if _raw(configured) != _raw(public):
                    raise KeyFileError(
                        "SENSORIUM_OTA_PUBLIC_KEY is not the public half of "
                        "SENSORIUM_OTA_SIGNING_KEY"
                    )
            return cls(public, private)
        if settings.ota_public_key is not None:
            return cls(load_public_key(settings.ota_public_key))
        # Dev mode only (check_secure refused production): a key of this data directory.
        path = settings.data_dir / DEV_KEY_NAME
        if not path.exists():
            try:
                generate_key_files(path)
            except FileExistsError:
                pass  # another process on this data directory made it first: use that one
            else:
                log.warning(
                    "dev mode: made an OTA signing key at %s; set SENSORIUM_OTA_SIGNING_KEY "
                    "for production",
                    path,
                )
        private = load_private_key(path)
        return cls(private.public_key(), private)

    @property
    def can_sign(self) -> bool:
        return self.private is not None

    @property
    def public_key_b64(self) -> str:
        return base64.b64encode(_raw(self.public)).decode()

    @property
    def public_key_pem(self) -> str:
        return self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    def sign(self, digest: bytes) -> str:
        assert self.private is not None
        return base64.b64encode(self.private.sign(digest)).decode()

    def verify(self, digest: bytes, signature: bytes) -> bool:
        try:
            self.public.verify(signature, digest)
        except InvalidSignature:
            return False
        return True


def decode_signature(text: str) -> bytes | None:
    """The 64 signature bytes of a base64 text; None when it is not one."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == SIGNATURE_BYTES else None
