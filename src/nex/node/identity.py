"""The node's identity: an nkey pair made on first start, kept in the state dir."""

from __future__ import annotations

import os
from pathlib import Path

import nkeys

SEED_FILE = "node.nk"


def load_or_create(state_dir: Path) -> nkeys.KeyPair:
    """The node's key pair; its public key (``N...``) is the node id."""
    path = state_dir / SEED_FILE
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_SERVER)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(seed)
    return nkeys.from_seed(path.read_bytes().strip())


def node_id(keys: nkeys.KeyPair) -> str:
    return keys.public_key.decode()
