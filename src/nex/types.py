"""The vocabulary shared by the runtimes and the drivers below them.

A leaf: it imports nothing of nex but the wire contract, so that ``nex.sandbox`` (the OCI
driver) and ``nex.runtimes`` (which drive it) speak of an exit, a log line and the reaper's
guard in the same words without the driver importing the layer above it.
``nex.runtimes.base`` names them in the runtime contract.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol

from nex.api.models import ExitInfo


@dataclass(frozen=True)
class ExitResult:
    exit_code: int | None = None
    signal: int | None = None
    oom_killed: bool = False
    error: str | None = None

    @property
    def success(self) -> bool:
        return self.exit_code == 0 and self.error is None and not self.oom_killed

    def info(self) -> ExitInfo:
        return ExitInfo(**asdict(self))


class LogSink(Protocol):
    def __call__(self, stream: str, line: bytes) -> None: ...


class ProcessGuard(Protocol):
    """Kills the process groups and containers it watches if the node dies (see nex.reaper)."""

    def watch(self, pgid: int) -> None: ...

    def release(self, pgid: int) -> None: ...

    def watch_container(self, runtime: str, root: str, container_id: str) -> None: ...

    def release_container(self, runtime: str, root: str, container_id: str) -> None: ...


class NoGuard:
    """A guard that watches nothing: for code run outside a node (tests, benchmarks)."""

    def watch(self, pgid: int) -> None:
        pass

    def release(self, pgid: int) -> None:
        pass

    def watch_container(self, runtime: str, root: str, container_id: str) -> None:
        pass

    def release_container(self, runtime: str, root: str, container_id: str) -> None:
        pass
