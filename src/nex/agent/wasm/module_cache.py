"""Compiled WebAssembly modules and components, kept on disk by artifact sha256 and wasmtime version.

Compiling with Cranelift costs tens of milliseconds per module (seconds for a large
component); loading a serialized one costs a read and a check. The cache lives under
the node's state dir, so a restarted node (or agent) does not compile again.

wasmtime's ``deserialize`` trusts what it reads: a serialized module is native code,
and a file planted in the cache (copied from another node, left by another program,
flipped on disk) would run as such. So every entry is authenticated: it carries an
HMAC-SHA256, under a key only this cache holds (``key``, made once, mode 0600), of its
kind (module or component), its artifact's sha256, the wasmtime version and its bytes.
An entry is read whole into memory, checked, and only then deserialized, so it cannot
change between the check and the load. An entry that fails the check (foreign, corrupt,
truncated, another artifact's renamed) or that wasmtime refuses (another engine
configuration) is compiled again and replaced. A directory or key that another user
could write is not used at all: the functions are compiled every time, and the log says why.

In memory, one compiled module or component per artifact serves every function of the agent
that runs it: copies of one function share its code (an 18 MB Python component is about
33 MiB compiled), and a second load while the first compiles waits for it instead of
compiling too. It is kept while a function holds it (a weak reference), so the last unload
frees it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
import threading
import time
import weakref
from importlib.metadata import version
from pathlib import Path
from typing import Callable, TypeVar

import wasmtime
from wasmtime import component

log = logging.getLogger(__name__)

WASMTIME_VERSION = version("wasmtime")
MAGIC = b"nex compiled wasm 1\n"
KEY_NAME = "key"
KEY_BYTES = 32
MODULE = "module"
COMPONENT = "component"

Compiled = TypeVar("Compiled", wasmtime.Module, component.Component)


class ModuleCache:
    """Compiles modules and components, or loads them compiled; ``directory`` None keeps nothing."""

    def __init__(self, engine: wasmtime.Engine, directory: Path | None) -> None:
        self._engine = engine
        self.directory = directory
        self.compiled = 0
        self.loaded = 0
        self.refused = 0  # entries that failed the check
        self.shared = 0  # loads served by what another function of the agent holds
        self._live: weakref.WeakValueDictionary[tuple[str, str], wasmtime.Module | component.Component]
        self._live = weakref.WeakValueDictionary()
        self._loading: dict[tuple[str, str], threading.Lock] = {}
        self._loading_guard = threading.Lock()
        self._key: bytes | None = None
        if directory is not None:
            self._key = _open_key(directory)
            if self._key is None:
                self.directory = None

    def path_for(self, sha256: str) -> Path | None:
        if self.directory is None:
            return None
        return self.directory / f"{sha256}-wasmtime-{WASMTIME_VERSION}.cwasm"

    def module(self, artifact: Path, sha256: str | None) -> wasmtime.Module:
        """The compiled module of ``artifact``; raises wasmtime.WasmtimeError if it does not compile."""
        return self._compiled(MODULE, artifact, sha256, wasmtime.Module.deserialize,
                              lambda: wasmtime.Module.from_file(self._engine, str(artifact)))

    def component(self, artifact: Path, sha256: str | None) -> component.Component:
        """The compiled component of ``artifact``; raises wasmtime.WasmtimeError if it does not compile."""
        return self._compiled(COMPONENT, artifact, sha256, component.Component.deserialize,
                              lambda: component.Component.from_file(self._engine, str(artifact)))

    def _compiled(self, kind: str, artifact: Path, sha256: str | None,
                  deserialize: Callable[[wasmtime.Engine, bytes], Compiled],
                  compile_: Callable[[], Compiled]) -> Compiled:
        if sha256 is None:
            return self._load_or_compile(kind, artifact, None, deserialize, compile_)
        key = (kind, sha256)
        with self._loading_guard:
            lock = self._loading.setdefault(key, threading.Lock())
        with lock:  # one load per artifact at a time: the others wait for it and share it
            live = self._live.get(key)
            if live is not None:
                self.shared += 1
                log.info("%s %s shared with the other functions that run it", kind, sha256)
                return live  # type: ignore[return-value]
            compiled = self._load_or_compile(kind, artifact, sha256, deserialize, compile_)
            self._live[key] = compiled
        with self._loading_guard:
            if not lock.locked():
                self._loading.pop(key, None)
        return compiled

    def _load_or_compile(self, kind: str, artifact: Path, sha256: str | None,
                         deserialize: Callable[[wasmtime.Engine, bytes], Compiled],
                         compile_: Callable[[], Compiled]) -> Compiled:
        cached = self.path_for(sha256) if sha256 else None
        if cached is not None and sha256 is not None:
            payload = self._read(cached, kind, sha256)
            if payload is not None:
                try:
                    loaded = deserialize(self._engine, payload)
                except wasmtime.WasmtimeError as exc:
                    log.warning("compiled %s %s is unusable (%s); compiling again", kind, cached.name,
                                " ".join(str(exc).split()))
                else:
                    self.loaded += 1
                    log.info("%s %s loaded compiled from the cache", kind, sha256)
                    return loaded
        started = time.perf_counter()
        compiled = compile_()
        self.compiled += 1
        log.info("%s %s compiled in %.0f ms", kind, sha256 or artifact.name, (time.perf_counter() - started) * 1000)
        if cached is not None and sha256 is not None:
            self._store(compiled.serialize(), cached, kind, sha256)
        return compiled

    def _mac(self, kind: str, sha256: str, payload: bytes | memoryview) -> bytes:
        assert self._key is not None
        mac = hmac.new(self._key, f"{kind}\0{sha256}\0{WASMTIME_VERSION}\0".encode(), hashlib.sha256)
        mac.update(payload)
        return mac.digest()

    def _read(self, path: Path, kind: str, sha256: str) -> bytes | None:
        """The entry's serialized bytes if it is one this cache wrote for this artifact, else None."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read the compiled %s %s: %s", kind, path.name, exc)
            return None
        head = len(MAGIC) + hashlib.sha256().digest_size
        payload = memoryview(data)[head:]
        if not data.startswith(MAGIC):
            self.refused += 1
            log.warning("compiled %s %s is not in this cache's format (an earlier release's, or foreign):"
                        " compiling again", kind, path.name)
            return None
        if not hmac.compare_digest(data[len(MAGIC):head], self._mac(kind, sha256, payload)):
            self.refused += 1
            log.warning("compiled %s %s was not written by this cache for this artifact (foreign or"
                        " corrupt): compiling again", kind, path.name)
            return None
        return bytes(payload)

    def _store(self, payload: bytes | bytearray, path: Path, kind: str, sha256: str) -> None:
        # Written aside and renamed: a reader never sees a half-written file.
        partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        try:
            with partial.open("wb") as f:
                f.write(MAGIC)
                f.write(self._mac(kind, sha256, payload))
                f.write(payload)
            partial.replace(path)
        except OSError as exc:
            log.warning("cannot cache the compiled %s in %s: %s", kind, path.parent, exc)
            partial.unlink(missing_ok=True)


def _open_key(directory: Path) -> bytes | None:
    """The cache's key, made on first use; None (no cache) if another user could write the directory or key."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # compiled artifacts: the node's alone
        if not _private(directory):
            log.warning("the compiled-module cache %s is not private to this user (owner and mode 0700):"
                        " not using it", directory)
            return None
        key_path = directory / KEY_NAME
        if not key_path.exists():
            partial = directory / f".{KEY_NAME}.{os.getpid()}.{threading.get_ident()}"
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(KEY_BYTES))
            try:
                os.link(partial, key_path)  # the first agent's key wins; the others read it
            except FileExistsError:
                pass
            finally:
                partial.unlink()
        fd = os.open(key_path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            if not _private(Path(f"/proc/self/fd/{f.fileno()}"), file=True):
                log.warning("the key of the compiled-module cache %s is not private to this user: not using"
                            " the cache", directory)
                return None
            key = f.read()
    except OSError as exc:
        log.warning("cannot use the compiled-module cache %s: %s", directory, exc)
        return None
    if len(key) != KEY_BYTES:
        log.warning("the key of the compiled-module cache %s is not %d bytes: not using the cache",
                    directory, KEY_BYTES)
        return None
    return key


def _private(path: Path, file: bool = False) -> bool:
    st = path.stat()
    return st.st_uid == os.getuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH | (
        stat.S_IRGRP | stat.S_IROTH if file else 0))
