"""The node's state dir: nothing in it is for other users of the host, but for the sandboxes.

It holds the node's keys (node.nk, node.xk), the fleet's (fleet/), the NATS
operator and account seeds and every workload's credentials (nats/), the cached
artifacts (artifacts/) and compiled Wasm modules (wasm-modules/), the embedded
server's JetStream store (whose files nats-server makes group-readable), and the
handles of running workloads. Each of these is the node's alone (0700 for a
directory, no access for group or others on a file), and the state dir itself is
0711: others may pass through it but not list it, because the sandbox's mapped
user must reach the bundles and unpacked images kept in it (see
nex.sandbox.runner.bundle_base, which moves them to /run/nex-bundles when the state
dir is not searchable, e.g. an operator's 0700, which is kept).
"""

from __future__ import annotations

import logging
import stat
from pathlib import Path

log = logging.getLogger(__name__)

MODE = 0o711
# Where the sandbox's mapped user must pass: they keep 0711 directories of their own.
SANDBOX_ENTRIES = frozenset({"bundles", "images"})


def make_private(state_dir: Path) -> None:
    """Create ``state_dir`` (0711), and take from group and others what they must not have in it.

    Entries made by an older node (a 0755 artifact cache of 0555 files, say) lose their
    group and others' bits; a mode tighter than the one wanted is kept.
    """
    state_dir.mkdir(mode=MODE, parents=True, exist_ok=True)
    _tighten(state_dir, MODE)
    for entry in state_dir.iterdir():
        if entry.name not in SANDBOX_ENTRIES and not entry.is_symlink():
            _tighten(entry, 0o700)


def _tighten(path: Path, allowed: int) -> None:
    mode = stat.S_IMODE(path.lstat().st_mode)
    if mode & ~allowed & 0o077:
        path.chmod(mode & (allowed | 0o7700))
        log.info("%s had mode %04o: group and others' access taken away", path, mode)
