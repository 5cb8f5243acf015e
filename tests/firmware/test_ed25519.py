"""The firmware's pure-Python Ed25519 verification and SHA-512 against `cryptography`
and hashlib: random keys and messages, every kind of damage refused."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.firmware import host


def ed25519() -> Any:
    return host.firmware("ed25519")


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@pytest.mark.parametrize("length", [0, 1, 55, 96, 111, 112, 113, 127, 128, 129, 239, 240, 1000])
def test_sha512_matches_hashlib_around_the_block_boundaries(length: int) -> None:
    data = random.Random(length).randbytes(length)
    assert ed25519().sha512(data) == hashlib.sha512(data).digest()


def test_signatures_of_random_keys_verify_and_damaged_ones_do_not() -> None:
    rng = random.Random(8032)
    module = ed25519()
    for n in range(60):
        key = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
        public = raw_public(key)
        # What the server signs: the 32 bytes of an image's SHA-256; some other lengths too.
        message = hashlib.sha256(rng.randbytes(100)).digest() if n % 3 else rng.randbytes(n)
        signature = key.sign(message)
        assert module.verify(public, message, signature)
        bit = rng.randrange(512)
        flipped = bytearray(signature)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert not module.verify(public, message, bytes(flipped))
        if message:
            changed = bytearray(message)
            changed[rng.randrange(len(message))] ^= 1 << rng.randrange(8)
            assert not module.verify(public, bytes(changed), signature)
        other = raw_public(Ed25519PrivateKey.from_private_bytes(rng.randbytes(32)))
        assert not module.verify(other, message, signature)


def test_a_non_canonical_s_is_refused_as_cryptography_refuses_it() -> None:
    from cryptography.exceptions import InvalidSignature

    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    public = raw_public(key)
    message = hashlib.sha256(b"image").digest()
    signature = key.sign(message)
    s = int.from_bytes(signature[32:], "little")
    forged = signature[:32] + (s + ed25519().L).to_bytes(32, "little")
    with pytest.raises(InvalidSignature):
        key.public_key().verify(forged, message)
    assert not ed25519().verify(public, message, forged)
