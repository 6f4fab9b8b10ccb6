"""Curve25519 xkeys and sealed boxes, in the format of Go's nkeys. Pure, no I/O.

A sealed message is what Go's ``CurveKeyPair.Seal(input, recipient)`` returns::

    b"xkv1" || nonce (24 random bytes) || NaCl box (XSalsa20-Poly1305, 16-byte tag first)

made with the sender's private key and the recipient's public key; the recipient
opens it with its private key and the sender's public key. Public keys travel as
nkey text (``X...``), seeds as ``SX...``.

The sealed environment of a deploy is that box around the compact JSON of a
``{"NAME": "value"}`` map, base64-encoded (standard alphabet, padded) into the
request's ``sealed_env`` field, with the sender's public xkey in ``sender_xkey``.
"""

from __future__ import annotations

import base64
import binascii
import json
import os

from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey

from nex.api.errors import SealedEnvError
from nex.api.keys import PREFIX_CURVE, KeyDecodeError, decode_public, decode_seed, encode_public, encode_seed

VERSION = b"xkv1"
NONCE_LEN = 24
MAX_ENV_BYTES = 128 * 1024


class XKey:
    """A curve key pair; ``public`` is its nkey text (``X...``)."""

    def __init__(self, raw_seed: bytes) -> None:
        self._private = PrivateKey(raw_seed)
        self.public = encode_public(PREFIX_CURVE, bytes(self._private.public_key))

    @classmethod
    def create(cls) -> XKey:
        return cls(os.urandom(32))

    @classmethod
    def from_seed(cls, seed: str) -> XKey:
        return cls(decode_seed(PREFIX_CURVE, seed))

    def seed(self) -> str:
        return encode_seed(PREFIX_CURVE, bytes(self._private))

    def seal(self, data: bytes, recipient: str, nonce: bytes | None = None) -> bytes:
        """``data`` sealed to ``recipient`` (an ``X...`` public key); ``nonce`` only for test vectors."""
        box = Box(self._private, _public(recipient))
        nonce = os.urandom(NONCE_LEN) if nonce is None else nonce
        return VERSION + nonce + box.encrypt(data, nonce).ciphertext

    def open(self, sealed: bytes, sender: str) -> bytes:
        """The plaintext of a box ``sender`` sealed to this key; raises SealedEnvError."""
        if len(sealed) <= len(VERSION) + NONCE_LEN or not sealed.startswith(VERSION):
            raise SealedEnvError("sealed data is not in the xkv1 format")
        nonce = sealed[len(VERSION):len(VERSION) + NONCE_LEN]
        try:
            return Box(self._private, _public(sender)).decrypt(sealed[len(VERSION) + NONCE_LEN:], nonce)
        except CryptoError:
            raise SealedEnvError(
                "sealed env does not open with this node's xkey: it was sealed to another node, "
                "by another sender key, or altered") from None


def _public(text: str) -> PublicKey:
    try:
        return PublicKey(decode_public(PREFIX_CURVE, text))
    except KeyDecodeError:
        raise SealedEnvError("not an xkey public key (X...)") from None


def is_public_xkey(text: str) -> bool:
    try:
        decode_public(PREFIX_CURVE, text)
    except KeyDecodeError:
        return False
    return True


def seal_env(env: dict[str, str], sender: XKey, recipient: str) -> str:
    """The ``sealed_env`` field for ``env``."""
    data = json.dumps(env, separators=(",", ":"), sort_keys=True).encode()
    return base64.b64encode(sender.seal(data, recipient)).decode()


def open_env(sealed_env: str, sender: str, recipient: XKey) -> dict[str, str]:
    """The environment a ``sealed_env`` field holds; errors name keys at most, never values."""
    if len(sealed_env) > MAX_ENV_BYTES:
        raise SealedEnvError(f"sealed_env is over {MAX_ENV_BYTES} bytes")
    try:
        sealed = base64.b64decode(sealed_env, validate=True)
    except (binascii.Error, ValueError):
        raise SealedEnvError("sealed_env is not base64") from None
    plain = recipient.open(sealed, sender)
    try:
        env = json.loads(plain)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the interpreter's limit
        raise SealedEnvError("sealed env is not a JSON object") from None
    if not isinstance(env, dict):
        raise SealedEnvError("sealed env is not a JSON object")
    for key, value in env.items():
        if not key or "=" in key or "\0" in key:
            raise SealedEnvError("sealed env holds an invalid variable name")
        if not isinstance(value, str):
            raise SealedEnvError(f"sealed env variable {key!r} is not a string")
    return env
