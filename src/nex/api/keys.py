"""The NATS nkey text encoding of public keys and seeds, for every key type. Pure, no I/O.

The ``nkeys`` package knows the signing types (server, account, user...) but not
curve (``X...``) keys; this encodes and decodes both, the way Go's nkeys does:
base32 (no padding) of prefix byte(s), the 32 raw bytes and a CRC16 (little endian).
"""

from __future__ import annotations

import base64
import binascii

import nkeys

PREFIX_ACCOUNT = nkeys.PREFIX_BYTE_ACCOUNT  # 'A'
PREFIX_USER = nkeys.PREFIX_BYTE_USER  # 'U'
PREFIX_CURVE = 23 << 3  # 'X'
_PREFIX_SEED = nkeys.PREFIX_BYTE_SEED  # 'S'
KEY_LEN = 32


class KeyDecodeError(ValueError):
    """Not a key of the expected type; the message never holds the text (it may be a seed)."""


def _b32decode(text: str) -> bytes:
    try:
        return base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError):
        raise KeyDecodeError("not base32") from None


def _with_crc(data: bytes) -> str:
    return base64.b32encode(data + bytes(nkeys.crc16_checksum(bytearray(data)))).rstrip(b"=").decode()


def _check_crc(raw: bytes) -> bytes:
    if len(raw) < 3 or bytes(nkeys.crc16_checksum(bytearray(raw[:-2]))) != raw[-2:]:
        raise KeyDecodeError("bad checksum")
    return raw[:-2]


def encode_public(prefix: int, raw: bytes) -> str:
    """The nkey text of a public key: ``prefix`` byte, ``raw`` key and CRC16, in base32."""
    if len(raw) != KEY_LEN:
        raise ValueError("a key is 32 bytes")
    return _with_crc(bytes([prefix]) + raw)


def decode_public(prefix: int, text: str) -> bytes:
    """The 32 raw bytes of a public key of type ``prefix``."""
    data = _check_crc(_b32decode(text))
    if len(data) != 1 + KEY_LEN or data[0] != prefix:
        raise KeyDecodeError("not a public key of the expected type")
    return data[1:]


def encode_seed(prefix: int, raw: bytes) -> str:
    """The nkey text of a seed: the seed prefix and ``prefix``, the ``raw`` seed and CRC16, in base32."""
    if len(raw) != KEY_LEN:
        raise ValueError("a seed is 32 bytes")
    return _with_crc(bytes([_PREFIX_SEED | prefix >> 5, (prefix & 31) << 3]) + raw)


def decode_seed(prefix: int, text: str) -> bytes:
    """The 32 raw bytes of a seed of type ``prefix``."""
    data = _check_crc(_b32decode(text.strip()))
    if len(data) != 2 + KEY_LEN or data[0] & 0xF8 != _PREFIX_SEED:
        raise KeyDecodeError("not a seed")
    if (data[0] & 7) << 5 | data[1] >> 3 != prefix:
        raise KeyDecodeError("not a seed of the expected type")
    return data[2:]
