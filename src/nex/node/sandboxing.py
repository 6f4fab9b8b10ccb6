"""The node's sandbox choice (``--sandbox auto|oci|none``) and the sweep of dead nodes' containers."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from nex.node.config import SandboxMode
from nex.sandbox.runner import OciRunner, SandboxUnavailable, remove_bundle
from nex.types import ProcessGuard

log = logging.getLogger(__name__)

UNSAFE_TAG = "nex.unsafe"
SANDBOX_TAG = "nex.sandbox"


async def choose_sandbox(mode: SandboxMode, state_dir: Path,
                         guard: ProcessGuard) -> tuple[OciRunner | None, dict[str, str]]:
    """The runner native workloads use (None: plain processes) and the tags that say so.

    Raises SandboxUnavailable for ``oci`` when no OCI runtime works here.
    """
    if mode == SandboxMode.NONE:
        log.warning("UNSAFE: --sandbox none: native workloads run as plain processes with the "
                    "node's user and see the whole host; this node is tagged %s=true", UNSAFE_TAG)
        return None, {UNSAFE_TAG: "true"}
    runner, reason = await OciRunner.probe(state_dir, guard)
    if runner is not None:
        log.info("native workloads run sandboxed by %s", runner.binary)
        return runner, {SANDBOX_TAG: runner.name}
    if mode == SandboxMode.OCI:
        raise SandboxUnavailable(f"--sandbox oci: no OCI runtime works on this host ({reason})")
    log.warning("UNSAFE: no OCI runtime works on this host (%s); native workloads run as plain "
                "processes with the node's user and see the whole host. Install runc, or use "
                "--sandbox oci to refuse to start without it. This node is tagged %s=true",
                reason, UNSAFE_TAG)
    return None, {UNSAFE_TAG: "true"}


async def sweep_containers(runner: OciRunner | None, state_dir: Path) -> list[str]:
    """Remove the containers and bundles a dead node left, whatever this node's sandbox mode."""
    runner = runner or OciRunner.find(state_dir)
    if runner is None:
        return []
    swept = await runner.sweep()
    if runner.bundles_dir.is_dir():
        for leftover in runner.bundles_dir.iterdir():
            if not remove_bundle(leftover):
                log.warning("cannot unmount the rootfs of %s, left by a previous node", leftover)
    # Before issue 13 images were unpacked next to /run bundles, searchable by every host user,
    # devices and setuid files included: gone (they live in <state dir>/images now).
    legacy_images = runner.bundles_dir.with_name(f"{runner.bundles_dir.name}-images")
    if runner.bundles_dir.name != "bundles" and legacy_images.is_dir():
        shutil.rmtree(legacy_images, ignore_errors=True)
    return swept
