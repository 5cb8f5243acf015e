"""Ed25519 signature verification (RFC 8032) and SHA-512 (FIPS 180-4) in plain Python.

MicroPython on the ESP32 has hashlib.sha256 but neither SHA-512 nor Ed25519, and an
update must be checked on the device against the public key it was flashed with
(PROTOCOL.md "OTA"). Only verification is here: the device never signs. The arithmetic
is RFC 8032's reference with Python's arbitrary-precision integers (MicroPython has
them), in extended twisted Edwards coordinates; [S]B - [k]A is computed in one pass
(Straus/Shamir) and compared with R by its encoding, as OpenSSL and ref10 do.
Nothing here is constant-time: it only handles public data.
"""

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = (-121665 * pow(121666, P - 2, P)) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
_BY = (4 * pow(5, P - 2, P)) % P
_BX = 15112221349535400772501151409588531511454012693041857206046113283949847762202
# The base point B in extended coordinates (X, Y, Z, T) with x = X/Z, y = Y/Z, xy = T/Z.
B = (_BX, _BY, 1, (_BX * _BY) % P)
IDENTITY = (0, 1, 1, 0)

# --- SHA-512 --------------------------------------------------------------------------------

_M64 = 0xFFFFFFFFFFFFFFFF
_K512 = (
    0x428A2F98D728AE22, 0x7137449123EF65CD, 0xB5C0FBCFEC4D3B2F, 0xE9B5DBA58189DBBC,
    0x3956C25BF348B538, 0x59F111F1B605D019, 0x923F82A4AF194F9B, 0xAB1C5ED5DA6D8118,
    0xD807AA98A3030242, 0x12835B0145706FBE, 0x243185BE4EE4B28C, 0x550C7DC3D5FFB4E2,
    0x72BE5D74F27B896F, 0x80DEB1FE3B1696B1, 0x9BDC06A725C71235, 0xC19BF174CF692694,
    0xE49B69C19EF14AD2, 0xEFBE4786384F25E3, 0x0FC19DC68B8CD5B5, 0x240CA1CC77AC9C65,
    0x2DE92C6F592B0275, 0x4A7484AA6EA6E483, 0x5CB0A9DCBD41FBD4, 0x76F988DA831153B5,
    0x983E5152EE66DFAB, 0xA831C66D2DB43210, 0xB00327C898FB213F, 0xBF597FC7BEEF0EE4,
    0xC6E00BF33DA88FC2, 0xD5A79147930AA725, 0x06CA6351E003826F, 0x142929670A0E6E70,
    0x27B70A8546D22FFC, 0x2E1B21385C26C926, 0x4D2C6DFC5AC42AED, 0x53380D139D95B3DF,
    0x650A73548BAF63DE, 0x766A0ABB3C77B2A8, 0x81C2C92E47EDAEE6, 0x92722C851482353B,
    0xA2BFE8A14CF10364, 0xA81A664BBC423001, 0xC24B8B70D0F89791, 0xC76C51A30654BE30,
    0xD192E819D6EF5218, 0xD69906245565A910, 0xF40E35855771202A, 0x106AA07032BBD1B8,
    0x19A4C116B8D2D0C8, 0x1E376C085141AB53, 0x2748774CDF8EEB99, 0x34B0BCB5E19B48A8,
    0x391C0CB3C5C95A63, 0x4ED8AA4AE3418ACB, 0x5B9CCA4F7763E373, 0x682E6FF3D6B2B8A3,
    0x748F82EE5DEFB2FC, 0x78A5636F43172F60, 0x84C87814A1F0AB72, 0x8CC702081A6439EC,
    0x90BEFFFA23631E28, 0xA4506CEBDE82BDE9, 0xBEF9A3F7B2C67915, 0xC67178F2E372532B,
    0xCA273ECEEA26619C, 0xD186B8C721C0C207, 0xEADA7DD6CDE0EB1E, 0xF57D4F7FEE6ED178,
    0x06F067AA72176FBA, 0x0A637DC5A2C898A6, 0x113F9804BEF90DAE, 0x1B710B35131C471B,
    0x28DB77F523047D84, 0x32CAAB7B40C72493, 0x3C9EBE0A15C9BEBC, 0x431D67C49C100D4C,
    0x4CC5D4BECB3E42B6, 0x597F299CFC657E2A, 0x5FCB6FAB3AD6FAEC, 0x6C44198C4A475817,
)  # fmt: skip
_H512 = (
    0x6A09E667F3BCC908, 0xBB67AE8584CAA73B, 0x3C6EF372FE94F82B, 0xA54FF53A5F1D36F1,
    0x510E527FADE682D1, 0x9B05688C2B3E6C1F, 0x1F83D9ABFB41BD6B, 0x5BE0CD19137E2179,
)  # fmt: skip


def _rotr(x, n):
    return ((x >> n) | (x << (64 - n))) & _M64


def _compress(state, block):
    w = [int.from_bytes(block[i : i + 8], "big") for i in range(0, 128, 8)]
    for i in range(16, 80):
        a = w[i - 15]
        b = w[i - 2]
        s0 = _rotr(a, 1) ^ _rotr(a, 8) ^ (a >> 7)
        s1 = _rotr(b, 19) ^ _rotr(b, 61) ^ (b >> 6)
        w.append((w[i - 16] + s0 + w[i - 7] + s1) & _M64)
    a, b, c, d, e, f, g, h = state
    for i in range(80):
        t1 = h + (_rotr(e, 14) ^ _rotr(e, 18) ^ _rotr(e, 41)) + ((e & f) ^ (~e & g)) + _K512[i]
        t1 = (t1 + w[i]) & _M64
        t2 = (_rotr(a, 28) ^ _rotr(a, 34) ^ _rotr(a, 39)) + ((a & b) ^ (a & c) ^ (b & c))
        h = g
        g = f
        f = e
        e = (d + t1) & _M64
        d = c
        c = b
        b = a
        a = (t1 + t2) & _M64
    out = (a, b, c, d, e, f, g, h)
    return [(state[i] + out[i]) & _M64 for i in range(8)]


def sha512(data):
    """The SHA-512 digest (64 bytes) of `data` (any length)."""
    data = bytes(data)
    state = list(_H512)
    length = len(data)
    tail = data[length - length % 128 :] + b"\x80"
    tail += b"\x00" * ((112 - len(tail)) % 128) + (length * 8).to_bytes(16, "big")
    for start in range(0, length - length % 128, 128):
        state = _compress(state, data[start : start + 128])
    for start in range(0, len(tail), 128):
        state = _compress(state, tail[start : start + 128])
    return b"".join(x.to_bytes(8, "big") for x in state)


# --- the curve -------------------------------------------------------------------------------


def _add(p, q):
    """P + Q (RFC 8032 5.1.4, extended coordinates, a = -1)."""
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = 2 * t1 * t2 * D % P
    dd = 2 * z1 * z2 % P
    e = b - a
    f = dd - c
    g = dd + c
    h = b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _double(p):
    x1, y1, z1, _t1 = p
    a = x1 * x1 % P
    b = y1 * y1 % P
    c = 2 * z1 * z1 % P
    h = a + b
    e = h - (x1 + y1) * (x1 + y1) % P
    g = a - b
    f = c + g
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _negate(p):
    x, y, z, t = p
    return ((-x) % P, y, z, (-t) % P)


def _encode(p):
    x, y, z, _t = p
    zinv = pow(z, P - 2, P)
    x = x * zinv % P
    y = y * zinv % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _decode(s):
    """The point a 32-byte encoding stands for; None when it is not one (RFC 8032 5.1.3,
    with y >= p refused)."""
    if len(s) != 32:
        return None
    y = int.from_bytes(s, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= P:
        return None
    yy = y * y % P
    x2 = (yy - 1) * pow(D * yy + 1, P - 2, P) % P
    if x2 == 0:
        if sign:
            return None
        return (0, y, 1, 0)
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P != 0:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P != 0:
        return None
    if (x & 1) != sign:
        x = P - x
    return (x, y, 1, x * y % P)


def _double_scalar(s, p, k, q):
    """[s]P + [k]Q, both scalars below 2**256, in one double-and-add pass."""
    both = _add(p, q)
    acc = IDENTITY
    started = False  # (MicroPython's int has no bit_length(): skip the leading zeros)
    for i in range(255, -1, -1):
        if started:
            acc = _double(acc)
        bits = ((s >> i) & 1) | (((k >> i) & 1) << 1)
        if bits:
            started = True
        if bits == 1:
            acc = _add(acc, p)
        elif bits == 2:
            acc = _add(acc, q)
        elif bits == 3:
            acc = _add(acc, both)
    return acc


def verify(public_key, message, signature):
    """True when `signature` (64 bytes) is `public_key`'s (32 bytes) Ed25519 signature of
    `message` (bytes). A non-canonical S (>= L) or an undecodable key/R is refused."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    public_key = bytes(public_key)
    signature = bytes(signature)
    a = _decode(public_key)
    if a is None:
        return False
    r_bytes = signature[:32]
    if _decode(r_bytes) is None:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= L:
        return False
    k = int.from_bytes(sha512(r_bytes + public_key + bytes(message)), "little") % L
    # R must equal [S]B - [k]A: compare encodings (canonical on our side).
    return _encode(_double_scalar(s, B, k, _negate(a))) == r_bytes
