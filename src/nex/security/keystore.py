"""Key files: the node's xkey in its state dir, a user's issuer nkey and xkey in ``~/.nex``.

Seeds are written once, mode 0600, with O_EXCL so two processes starting at once
never overwrite each other's key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nkeys

from nex.security.xkeys import XKey

NODE_XKEY_FILE = "node.xk"
ISSUER_FILE = "issuer.nk"
USER_XKEY_FILE = "xkey.xk"
NEX_HOME_ENV = "NEX_HOME"


def nex_home() -> Path:
    """``$NEX_HOME``, or ``~/.nex``."""
    return Path(os.environ.get(NEX_HOME_ENV) or Path.home() / ".nex")


def _write_once(path: Path, make_seed) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another process made it first: use theirs
    with os.fdopen(fd, "w") as f:
        f.write(make_seed())


def load_or_create_xkey(path: Path) -> XKey:
    if not path.exists():
        _write_once(path, lambda: XKey.create().seed())
    return XKey.from_seed(path.read_text())


def load_or_create_issuer(path: Path) -> nkeys.KeyPair:
    if not path.exists():
        _write_once(path, lambda: nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT).decode())
    return nkeys.from_seed(path.read_bytes().strip())


@dataclass(frozen=True)
class UserKeys:
    """What a user signs requests with (an account nkey) and seals env with (an xkey)."""

    issuer: nkeys.KeyPair
    xkey: XKey

    @property
    def issuer_public(self) -> str:
        return self.issuer.public_key.decode()

    @classmethod
    def load(cls, home: Path | None = None, create: bool = False) -> UserKeys | None:
        """The keys in ``home`` (default :func:`nex_home`); made on first use when ``create``."""
        home = home or nex_home()
        issuer_path, xkey_path = home / ISSUER_FILE, home / USER_XKEY_FILE
        if not create and not (issuer_path.exists() and xkey_path.exists()):
            return None
        return cls(load_or_create_issuer(issuer_path), load_or_create_xkey(xkey_path))
