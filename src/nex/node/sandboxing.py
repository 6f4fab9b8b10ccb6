"""The node's sandbox choice (``--sandbox auto|oci|gvisor|none``), its tier, and the sweep of dead nodes' containers.

The tier is the tag ``nex.isolation`` (:data:`nex.api.models.ISOLATION_TAG`): ``process``
(plain processes), ``container`` (runc or crun) or ``gvisor`` (runsc). The older tags stay as
aliases: ``nex.sandbox=<runtime>`` on a sandboxed node, ``nex.unsafe=true`` on the others.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from nex.api.models import ISOLATION_TAG, Isolation
from nex.node.config import SandboxMode
from nex.sandbox.runner import OciRunner, SandboxUnavailable, remove_bundle
from nex.types import ProcessGuard

log = logging.getLogger(__name__)

UNSAFE_TAG = "nex.unsafe"
SANDBOX_TAG = "nex.sandbox"
TIER_TAGS = (ISOLATION_TAG, SANDBOX_TAG, UNSAFE_TAG)
"""Set by the node from its sandbox alone, whatever its config's tags say."""


def _unsafe() -> dict[str, str]:
    return {ISOLATION_TAG: Isolation.PROCESS.value, UNSAFE_TAG: "true"}


async def choose_sandbox(mode: SandboxMode, state_dir: Path, guard: ProcessGuard,
                         gvisor_platform: str | None = None) -> tuple[OciRunner | None, dict[str, str]]:
    """The runner native workloads and containers use (None: plain processes) and the tags that say so.

    Raises SandboxUnavailable for ``oci`` or ``gvisor`` when that runtime does not run a container here.
    """
    if mode == SandboxMode.NONE:
        log.warning("UNSAFE: --sandbox none: native workloads run as plain processes with the "
                    "node's user and see the whole host; this node is tagged %s=true", UNSAFE_TAG)
        return None, _unsafe()
    if mode == SandboxMode.GVISOR:
        runner, reason = await OciRunner.probe_gvisor(state_dir, guard, gvisor_platform)
        if runner is None:
            raise SandboxUnavailable(f"--sandbox gvisor: gVisor does not run a container on this host ({reason})")
        log.info("native workloads and containers run under gVisor: %s --platform=%s", runner.binary,
                 runner.gvisor.platform if runner.gvisor else "?")
        return runner, {ISOLATION_TAG: Isolation.GVISOR.value, SANDBOX_TAG: runner.name}
    runner, reason = await OciRunner.probe(state_dir, guard)
    if runner is not None:
        log.info("native workloads run sandboxed by %s", runner.binary)
        return runner, {ISOLATION_TAG: Isolation.CONTAINER.value, SANDBOX_TAG: runner.name}
    if mode == SandboxMode.OCI:
        raise SandboxUnavailable(f"--sandbox oci: no OCI runtime works on this host ({reason})")
    log.warning("UNSAFE: no OCI runtime works on this host (%s); native workloads run as plain "
                "processes with the node's user and see the whole host. Install runc, or use "
                "--sandbox oci to refuse to start without it. This node is tagged %s=true",
                reason, UNSAFE_TAG)
    return None, _unsafe()


async def sweep_containers(runner: OciRunner | None, state_dir: Path) -> list[str]:
    """Remove the containers and bundles a dead node left, whatever this node's sandbox mode
    (runc's and runsc's, each under its own root)."""
    runners = OciRunner.find_all(state_dir)
    if runner is not None:
        runners = [runner, *(r for r in runners if r.root != runner.root)]
    if not runners:
        return []
    swept = []
    for each in runners:
        swept += await each.sweep()
    bundles_dir = runners[0].bundles_dir
    if bundles_dir.is_dir():
        for leftover in bundles_dir.iterdir():
            if not remove_bundle(leftover):
                log.warning("cannot unmount the rootfs of %s, left by a previous node", leftover)
    # Before issue 13 images were unpacked next to /run bundles, searchable by every host user,
    # devices and setuid files included: gone (they live in <state dir>/images now).
    legacy_images = bundles_dir.with_name(f"{bundles_dir.name}-images")
    if bundles_dir.name != "bundles" and legacy_images.is_dir():
        shutil.rmtree(legacy_images, ignore_errors=True)
    return swept
