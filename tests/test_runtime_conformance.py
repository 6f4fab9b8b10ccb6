"""The runtime contract (the docstring of nex.runtimes.base), checked on every runtime the registry knows.

One set of cases runs against each runtime :func:`nex.runtimes.registry.available_runtimes`
can give, with and without a sandbox: real processes, real runc, real agents on a real
nats-server. A :class:`Conformer` tells the cases how to use one runtime (the workloads
it runs, how to see that one runs, what one leaves on the host). A runtime added to the
registry is picked up here, and its cases fail until it has a conformer in CONFORMERS:
this file is the way to add a runtime.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import tempfile
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import pytest
from nats.aio.client import Client
from nats.errors import NoRespondersError, TimeoutError as NatsTimeoutError

from helpers import alive, build_wasm, eventually
from nex.api.errors import BadArtifact
from nex.api.models import Lifecycle, Limits, Trigger, WorkloadType
from nex.connection import ConnectOptions, connect
from nex.natsserver import NatsServer
from nex.node.sandboxing import sweep_containers
from nex.node.supervisor import Supervisor
from nex.runtimes.base import HANDLE_VERSION, ExitResult, Handle, IncompatibleHandle, Runtime, RuntimeContext, WorkloadSpec
from nex.runtimes.native import workload_processes
from nex.runtimes.registry import available_runtimes
from nex.sandbox import cgroups
from nex.sandbox.runner import ID_PREFIX, OciRunner

NAMESPACE = "default"
GRACE = 0.5
WASM_SOURCES = Path(__file__).parent / "wasm"


def registered() -> list[str]:
    """``<type>-<class>`` of every runtime the registry gives, on a node with a sandbox and without."""
    with tempfile.TemporaryDirectory() as tmp:
        plain = RuntimeContext(node_id="NCONFORM", state_dir=Path(tmp), connect_options=ConnectOptions())
        sandboxed = replace(plain, oci=OciRunner.for_state_dir("runc", Path(tmp)))
        return sorted({f"{kind.value}-{type(runtime).__name__}"
                       for context in (plain, sandboxed) for kind, runtime in available_runtimes(context).items()})


# -- how to use each runtime -----------------------------------------------------------------------

@dataclass
class Conformer:
    """One runtime under test: its context, its workloads, and what they leave on the host."""

    request: pytest.FixtureRequest
    state_dir: Path
    made: list[Runtime] = field(default_factory=list)
    lines: dict[str, list[bytes]] = field(default_factory=dict)  # stdout by workload id

    type: ClassVar[WorkloadType] = WorkloadType.NATIVE

    async def context(self) -> RuntimeContext:
        return RuntimeContext(node_id="NCONFORM", state_dir=self.state_dir, connect_options=ConnectOptions())

    async def make(self) -> Runtime:
        """A fresh instance on the same state dir (as the next node start makes)."""
        runtime = self.build(await self.context())
        self.made.append(runtime)
        return runtime

    def build(self, context: RuntimeContext) -> Runtime:
        raise NotImplementedError

    async def started(self, runtime: Runtime, spec: WorkloadSpec) -> Handle:
        """Prepared and started, its stdout kept in ``lines``."""
        lines = self.lines.setdefault(spec.id, [])

        def logs(stream: str, line: bytes) -> None:
            if stream == "stdout":
                lines.append(line)
        await runtime.prepare(spec)
        return await runtime.start(spec, logs)

    def spec(self, **fields: Any) -> WorkloadSpec:
        workload_id = uuid.uuid4().hex[:20]
        base = dict(id=workload_id, name="conform", namespace=NAMESPACE, type=self.type, lifecycle=Lifecycle.SERVICE,
                    work_dir=self.state_dir / "workloads" / workload_id)
        return WorkloadSpec(**{**base, **fields})

    def bad(self) -> WorkloadSpec:
        raise NotImplementedError

    def service(self) -> WorkloadSpec:
        raise NotImplementedError

    def job(self, code: int) -> WorkloadSpec | None:
        """A workload that ends by itself with ``code``; None: this runtime's workloads end when stopped."""
        return None

    def stubborn(self) -> WorkloadSpec:
        """A workload that does not end when asked (ignores SIGTERM, or a call that never returns)."""
        raise NotImplementedError

    async def provoke(self, spec: WorkloadSpec) -> None:
        """Make a started stubborn workload stubborn."""

    async def runs(self, spec: WorkloadSpec) -> bool:
        raise NotImplementedError

    async def left(self, spec: WorkloadSpec) -> list[str]:
        """What the workload of ``spec`` left on the host: [] when nothing."""
        raise NotImplementedError

    async def teardown(self) -> None:
        for runtime in self.made:
            await runtime.close()


class Processes(Conformer):
    """Native workloads as plain processes (``--sandbox none``)."""

    def build(self, context: RuntimeContext) -> Runtime:
        return available_runtimes(context)[WorkloadType.NATIVE]

    @property
    def programs(self) -> dict[str, Path]:
        return self.request.getfixturevalue("programs")

    def bad(self) -> WorkloadSpec:
        garbage = self.state_dir / "garbage"
        garbage.write_bytes(b"\0\1\2 this is no executable")
        garbage.chmod(0o755)
        return self.spec(artifact_path=garbage)

    def service(self) -> WorkloadSpec:
        return self.spec(artifact_path=self.programs["ticker"])

    def job(self, code: int) -> WorkloadSpec | None:
        return self.spec(artifact_path=self.programs["job"], lifecycle=Lifecycle.JOB, argv=[str(code)])

    def stubborn(self) -> WorkloadSpec:
        return self.spec(artifact_path=self.programs["stubborn"])

    async def provoke(self, spec: WorkloadSpec) -> None:
        # It runs before it ignores SIGTERM: its parent and child say when they do.
        await eventually(lambda: {line.split()[0] for line in self.lines[spec.id]} >= {b"parent", b"child"},
                         timeout=10)

    async def runs(self, spec: WorkloadSpec) -> bool:
        return bool(workload_processes(spec.id))

    async def left(self, spec: WorkloadSpec) -> list[str]:
        return [f"process {pid}" for pid in workload_processes(spec.id) if alive(pid)]


class Sandboxed(Processes):
    """Native workloads in runc (a node whose sandbox works)."""

    runner: OciRunner | None = None

    async def context(self) -> RuntimeContext:
        if self.runner is None:
            runner, reason = await OciRunner.probe(self.state_dir)
            if runner is None:
                pytest.skip(f"this host cannot sandbox: {reason}")
            self.runner = runner
        return replace(await super().context(), oci=self.runner)

    async def left(self, spec: WorkloadSpec) -> list[str]:
        assert self.runner is not None
        left = await super().left(spec)
        if (self.runner.root / f"{ID_PREFIX}{spec.id}").exists():
            left.append(f"container {ID_PREFIX}{spec.id}")
        if (self.runner.bundles_dir / spec.id).exists():
            left.append(f"bundle {self.runner.bundles_dir / spec.id}")
        return left

    async def teardown(self) -> None:
        await super().teardown()
        if self.runner is not None:  # even a failed case leaves nothing
            await sweep_containers(self.runner, self.state_dir)  # rootfs unmounted before removal
            shutil.rmtree(self.runner.bundles_dir, ignore_errors=True)


class GvisorSandboxed(Sandboxed):
    """Native workloads under gVisor (a node with ``--sandbox gvisor``): the same runtime, runsc's runner."""

    async def context(self) -> RuntimeContext:
        if self.runner is None:
            runner, reason = await OciRunner.probe_gvisor(self.state_dir)
            if runner is None:
                pytest.skip(f"gVisor does not run here: {reason}")
            self.runner = runner
        return replace(await Processes.context(self), oci=self.runner)

    def sandbox_processes(self, spec: WorkloadSpec) -> list[int]:
        """runsc's processes of the workload (its kernel and gofer name the bundle); the guest's own
        processes live in gVisor's kernel, not on the host."""
        assert self.runner is not None
        bundle = str(self.runner.bundles_dir / spec.id).encode()
        found = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                if bundle in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                pass
        return found

    async def runs(self, spec: WorkloadSpec) -> bool:
        return any(b"runsc-sandbox" in Path(f"/proc/{pid}/cmdline").read_bytes()
                   for pid in self.sandbox_processes(spec) if alive(pid))

    async def left(self, spec: WorkloadSpec) -> list[str]:
        left = await super().left(spec)
        left += [f"runsc process {pid}" for pid in self.sandbox_processes(spec) if alive(pid)]
        if cgroups.exists(f"/nex/{ID_PREFIX}{spec.id}"):
            left.append(f"cgroup /nex/{ID_PREFIX}{spec.id}")
        return left


class Containers(Sandboxed):
    """OCI images in runc."""

    type = WorkloadType.OCI

    def build(self, context: RuntimeContext) -> Runtime:
        return available_runtimes(context)[WorkloadType.OCI]

    @property
    def images(self) -> dict[str, Path]:
        return self.request.getfixturevalue("images")

    def bad(self) -> WorkloadSpec:
        garbage = self.state_dir / "garbage.tar"
        garbage.write_bytes(b"this is no image layout tarball" * 100)
        return self.spec(artifact_path=garbage)

    def service(self) -> WorkloadSpec:
        return self.spec(artifact_path=self.images["ticker"])

    def job(self, code: int) -> WorkloadSpec | None:
        return self.spec(artifact_path=self.images["job"], lifecycle=Lifecycle.JOB, argv=[str(code)])

    def stubborn(self) -> WorkloadSpec:
        return self.spec(artifact_path=self.images["stubborn"])


class Functions(Conformer):
    """Functions in an agent, on a nats-server of their own: they run while they answer on their trigger."""

    server: NatsServer | None = None
    nc: Client | None = None

    async def context(self) -> RuntimeContext:
        if self.server is None:
            self.server = NatsServer(store_dir=self.state_dir / "jetstream", port=0)
            await self.server.start()
            self.nc = await connect(ConnectOptions(servers=[self.server.url]), max_reconnect_attempts=0)
        return replace(await super().context(), connect_options=ConnectOptions(servers=[self.server.url]))

    def build(self, context: RuntimeContext) -> Runtime:
        return available_runtimes(context)[self.type]

    async def teardown(self) -> None:
        await super().teardown()
        if self.nc is not None:
            await self.nc.close()
        if self.server is not None:
            await self.server.stop()

    def function(self, artifact: Path, **limits: Any) -> WorkloadSpec:
        workload_id = uuid.uuid4().hex[:20]
        return self.spec(id=workload_id, lifecycle=Lifecycle.FUNCTION, artifact_path=artifact,
                         triggers=[Trigger(subject=f"conform.{workload_id}")], limits=Limits(**limits))

    def call(self) -> bytes:
        return b""

    async def runs(self, spec: WorkloadSpec) -> bool:
        assert self.nc is not None
        try:
            await self.nc.request(spec.triggers[0].subject, self.call(), timeout=2)
        except NoRespondersError:
            return False
        return True

    async def left(self, spec: WorkloadSpec) -> list[str]:
        return [f"a function answering on {spec.triggers[0].subject}"] if await self.runs(spec) else []

    async def provoke(self, spec: WorkloadSpec) -> None:
        assert self.nc is not None
        with pytest.raises((NatsTimeoutError, asyncio.TimeoutError)):  # the call never ends
            await self.nc.request(spec.triggers[0].subject, self.endless_call(), timeout=0.5)

    def endless_call(self) -> bytes:
        return b""


class JavaScript(Functions):
    type = WorkloadType.JAVASCRIPT

    def script(self, source: str) -> Path:
        path = self.state_dir / f"{uuid.uuid4().hex}.js"
        path.write_text(source)
        return path

    def bad(self) -> WorkloadSpec:
        return self.function(self.script("(subject, payload) => {\n  return (\n}\n"))

    def service(self) -> WorkloadSpec:
        return self.function(self.script("(subject, payload) => 'up'"))

    def stubborn(self) -> WorkloadSpec:
        return self.function(self.script("(subject, payload) => { if (payload.length) { while (true) {} } "
                                         "return 'up' }"), timeout_ms=60_000)

    def endless_call(self) -> bytes:
        return b"loop"


class Wasm(Functions):
    type = WorkloadType.WASM

    @property
    def module(self) -> Path:
        return self.request.getfixturevalue("wasm_module")

    def bad(self) -> WorkloadSpec:
        garbage = self.state_dir / "garbage.wasm"
        garbage.write_bytes(b"\0asm\x01\0\0\0this is no section")
        return self.function(garbage)

    def call(self) -> bytes:
        return b"up"

    def service(self) -> WorkloadSpec:
        return self.function(self.module)

    def stubborn(self) -> WorkloadSpec:
        return self.function(self.module, timeout_ms=60_000)

    def endless_call(self) -> bytes:
        return b"loop"


# By ``<type>-<class>`` as registered() names them; ``@gvisor``: the same runtime on a gVisor node.
CONFORMERS: dict[str, type[Conformer]] = {
    "native-NativeRuntime": Processes,
    "native-SandboxedNativeRuntime": Sandboxed,
    "native-SandboxedNativeRuntime@gvisor": GvisorSandboxed,
    "oci-OciRuntime": Containers,
    "javascript-JavaScriptRuntime": JavaScript,
    "wasm-WasmRuntime": Wasm,
}


@pytest.fixture(scope="module")
def images(programs, tmp_path_factory) -> dict[str, Path]:
    """Image-layout tarballs of the ticker, the job and the stubborn program."""
    from oci_helpers import build_image

    built = {}
    for name in ("ticker", "job", "stubborn"):
        directory = tmp_path_factory.mktemp(f"image-{name}")
        image = build_image(directory, programs[name], entrypoint=["/bin/imagemain"])
        built[name] = image.tarball(directory / f"{name}.tar")
    return built


@pytest.fixture(scope="module")
def wasm_module(tmp_path_factory) -> Path:
    return build_wasm(WASM_SOURCES / "fn.c", tmp_path_factory.mktemp("wasm") / "fn.wasm")


# The tiers of a node are runners, not runtimes: under gVisor the native runtime runs the suite (OCI
# images under gVisor are tests/test_oci.py's; their cleanup is the same runner's).
@pytest.fixture(params=[*registered(), "native-SandboxedNativeRuntime@gvisor"])
async def subject(request):
    conformer_class = CONFORMERS.get(request.param)
    if conformer_class is None:
        pytest.fail(f"the runtime {request.param} of the registry has no conformance fixture: "
                    f"add a Conformer for it to CONFORMERS in tests/test_runtime_conformance.py")
    # The container's root must search every directory above a rootfs: not a pytest temp dir.
    state = Path(tempfile.mkdtemp(prefix="nex-conform-"))
    state.chmod(0o711)
    conformer = conformer_class(request, state)
    try:
        yield conformer
    finally:
        await conformer.teardown()
        shutil.rmtree(state, ignore_errors=True)


async def nothing_left(subject: Conformer, spec: WorkloadSpec) -> bool:
    return await subject.left(spec) == []


# -- the contract ----------------------------------------------------------------------------------

async def test_it_is_a_runtime_and_answers_what_the_supervisor_asks(subject: Conformer):
    runtime = await subject.make()
    await runtime.warm()
    await runtime.refresh_stats()
    agents = runtime.agents_up()

    assert isinstance(runtime, Runtime)
    assert runtime.type == subject.type
    assert runtime.capabilities.lifecycles
    assert all(agents.values()), agents  # warm: every agent it keeps runs


async def test_a_bad_artifact_is_refused_and_leaves_nothing(subject: Conformer):
    runtime = await subject.make()
    spec = subject.bad()
    with pytest.raises(BadArtifact):
        await subject.started(runtime, spec)

    assert await subject.left(spec) == []


async def test_start_returns_once_running(subject: Conformer):
    runtime = await subject.make()
    spec = subject.service()
    handle = await subject.started(runtime, spec)

    assert await subject.runs(spec)  # at once: no waiting for it
    assert handle.workload_id == spec.id and handle.type == subject.type
    assert Handle.from_dict(json.loads(json.dumps(handle.to_dict()))) == handle


async def test_wait_gives_an_exit_result(subject: Conformer):
    runtime = await subject.make()
    failing, succeeding = subject.job(3), subject.job(0)
    if failing is None or succeeding is None:  # it ends when stopped
        spec = subject.service()
        handle = await subject.started(runtime, spec)
        waiting = asyncio.create_task(runtime.wait(handle))
        assert await subject.runs(spec)  # a call answered: the wait goes on
        assert not waiting.done()
        await runtime.stop(handle, GRACE)
        result = await asyncio.wait_for(waiting, 10)
        assert isinstance(result, ExitResult) and result.success, result
        return
    failed = await asyncio.wait_for(runtime.wait(await subject.started(runtime, failing)), 30)
    succeeded = await asyncio.wait_for(runtime.wait(await subject.started(runtime, succeeding)), 30)

    assert isinstance(failed, ExitResult) and (failed.exit_code, failed.success) == (3, False), failed
    assert isinstance(succeeded, ExitResult) and (succeeded.exit_code, succeeded.success) == (0, True), succeeded
    assert await subject.left(failing) == [] and await subject.left(succeeding) == []


async def test_stop_is_idempotent(subject: Conformer):
    runtime = await subject.make()
    spec = subject.service()
    handle = await subject.started(runtime, spec)
    waiting = asyncio.create_task(runtime.wait(handle))
    await runtime.stop(handle, GRACE)
    await asyncio.wait_for(runtime.stop(handle, GRACE), 5)
    result = await asyncio.wait_for(waiting, 10)
    await asyncio.wait_for(runtime.stop(handle, GRACE), 5)  # after its end, too

    assert isinstance(result, ExitResult)
    assert await subject.left(spec) == []


async def test_the_grace_period_is_followed_by_a_kill(subject: Conformer):
    runtime = await subject.make()
    spec = subject.stubborn()
    handle = await subject.started(runtime, spec)
    waiting = asyncio.create_task(runtime.wait(handle))
    await subject.provoke(spec)
    begun = time.monotonic()
    await asyncio.wait_for(runtime.stop(handle, GRACE), GRACE + 10)
    took = time.monotonic() - begun
    result = await asyncio.wait_for(waiting, 10)

    assert GRACE * 0.8 <= took < GRACE + 5, took  # it waited the grace, then ended it
    assert isinstance(result, ExitResult)
    if runtime.capabilities.lifecycles != frozenset({Lifecycle.FUNCTION}):
        assert result.signal == signal.SIGKILL, result
    assert await subject.left(spec) == []


async def test_cleanup_from_a_persisted_handle_in_a_fresh_instance(subject: Conformer):
    old = await subject.make()
    spec = subject.service()
    handle = await subject.started(old, spec)
    persisted = Handle.from_dict(json.loads(json.dumps(handle.to_dict())))
    fresh = await subject.make()
    await fresh.cleanup(persisted)

    if old.capabilities.outlives_node:
        await eventually(lambda: nothing_left(subject, spec), timeout=10)
        assert await subject.left(spec) == []
    else:  # its workloads die with their agent: nothing to clean, and cleaning starts nothing
        assert not any(fresh.agents_up().values())


async def test_a_handle_of_another_version_is_refused_yet_swept_at_start(subject: Conformer):
    old = await subject.make()
    spec = subject.service()
    await subject.started(old, spec)
    # Another version's data may mean anything: it is not read.
    other = Handle(workload_id=spec.id, type=subject.type, data={"layout": "of another version"},
                   version=HANDLE_VERSION + 1)
    fresh = await subject.make()
    with pytest.raises(IncompatibleHandle) as refused:
        await fresh.cleanup(other)

    assert refused.value.version == HANDLE_VERSION + 1
    assert await subject.runs(spec), "a refused handle touches nothing"
    handles = subject.state_dir / "handles"
    handles.mkdir(mode=0o700, exist_ok=True)
    (handles / f"{spec.id}.json").write_text(json.dumps(other.to_dict()))
    supervisor = Supervisor("NCONFORM", subject.state_dir, {subject.type: fresh}, None, None)  # type: ignore[arg-type]
    swept = await supervisor.sweep_leftovers()

    assert swept == 1 and not list(handles.glob("*.json"))
    if fresh.capabilities.outlives_node:
        await eventually(lambda: nothing_left(subject, spec), timeout=10)
        assert await subject.left(spec) == []


async def test_close_releases_everything(subject: Conformer):
    runtime = await subject.make()
    spec = subject.service()
    handle = await subject.started(runtime, spec)
    agents = [pid for pid in (handle.data.get("agent_pid"),) if pid]
    await runtime.close()
    await runtime.close()

    assert await subject.left(spec) == []
    assert not [pid for pid in agents if alive(pid)]
    assert not any(runtime.agents_up().values())
