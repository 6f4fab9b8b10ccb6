"""Compiled WebAssembly modules, kept on disk by artifact sha256 and wasmtime version.

Compiling with Cranelift costs tens of milliseconds per module (seconds for a large
one); loading a serialized module is a file map. The cache lives under the node's
state dir, so a restarted node (or agent) does not compile again. Only this
process writes there, and ``Module.deserialize_file`` trusts what it reads: the
directory must stay the node's own. A file that wasmtime refuses (another engine
configuration, a truncated write) is compiled again and replaced.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from importlib.metadata import version
from pathlib import Path

import wasmtime

log = logging.getLogger(__name__)

WASMTIME_VERSION = version("wasmtime")


class ModuleCache:
    """Compiles modules, or loads them compiled; ``directory`` None keeps nothing."""

    def __init__(self, engine: wasmtime.Engine, directory: Path | None) -> None:
        self._engine = engine
        self.directory = directory
        self.compiled = 0
        self.loaded = 0
        if directory is not None:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # compiled artifacts: the node's alone

    def path_for(self, sha256: str) -> Path | None:
        if self.directory is None:
            return None
        return self.directory / f"{sha256}-wasmtime-{WASMTIME_VERSION}.cwasm"

    def module(self, artifact: Path, sha256: str | None) -> wasmtime.Module:
        """The compiled module of ``artifact``; raises wasmtime.WasmtimeError if it does not compile."""
        cached = self.path_for(sha256) if sha256 else None
        if cached is not None and cached.exists():
            try:
                module = wasmtime.Module.deserialize_file(self._engine, str(cached))
            except wasmtime.WasmtimeError as exc:
                log.warning("compiled module %s is unusable (%s); compiling again", cached.name,
                            " ".join(str(exc).split()))
            else:
                self.loaded += 1
                log.info("module %s loaded compiled from the cache", sha256)
                return module
        started = time.perf_counter()
        module = wasmtime.Module.from_file(self._engine, str(artifact))
        self.compiled += 1
        log.info("module %s compiled in %.0f ms", sha256 or artifact.name, (time.perf_counter() - started) * 1000)
        if cached is not None:
            self._store(module, cached)
        return module

    @staticmethod
    def _store(module: wasmtime.Module, path: Path) -> None:
        # Written aside and renamed: a reader never maps a half-written file.
        partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        try:
            partial.write_bytes(module.serialize())
            partial.replace(path)
        except OSError as exc:
            log.warning("cannot cache the compiled module in %s: %s", path.parent, exc)
            partial.unlink(missing_ok=True)
