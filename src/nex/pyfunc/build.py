"""Python functions built into WASI 0.2 components with componentize-py, cached by digest.

A build copies the user's module (as ``nex_user_function``), the generated list of the
modules it imports, the entry module and the guest ``nex`` module into a directory of
their own, and runs componentize-py against the world ``nex:function`` of ``nex/wit``.
It runs on the user's side (``nex devrun``, ``nex apply``), never in a node: a node only
ever sees a component.

Builds are kept in a cache directory under the sha256 of everything that goes into
them (the source, the guest files, the WIT, componentize-py's version), so that the
same source is built once per machine, whichever process asks: a lock per digest makes
a second process wait for the first one's build instead of building it again.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import platformdirs

from nex.pyfunc.source import BuildError, check_source

GUEST = Path(__file__).with_name("guest")
WIT = Path(__file__).resolve().parent.parent / "wit"
WORLD = "nex:function/function"
USER_MODULE = "nex_user_function"
IMPORTS_MODULE = "nex_function_imports"
ENTRY_MODULE = "nex_function_entry"
CACHE_ENV = "NEX_PYTHON_BUILD_CACHE"
KEEP_BUILDS = 16  # the cache keeps the builds used last; each is about 18 MB
BUILD_TIMEOUT_S = 300  # a build takes seconds; a module that never finishes importing is stopped


@dataclass(frozen=True)
class Built:
    """A built component: its file (in the cache) and whether this call built it."""

    path: Path
    cached: bool


def default_cache_dir() -> Path:
    """``$NEX_PYTHON_BUILD_CACHE``, or the user's cache directory (``~/.cache/nex/python-functions``)."""
    given = os.environ.get(CACHE_ENV)
    return Path(given) if given else Path(platformdirs.user_cache_dir("nex")) / "python-functions"


def is_python_function(path: str | Path) -> bool:
    """A file that is built as a Python function: a ``.py`` file."""
    return Path(path).suffix.lower() == ".py"


def build_function(path: str | Path, shown: str | None = None, cache_dir: Path | None = None) -> Built:
    """The component of the Python function in ``path``, built now or found in the cache.

    Raises :class:`BuildError` (a BadRequest) for a module that does not compile, defines
    no ``handle`` or fails when it is imported, with the file and line.
    """
    path = Path(path)
    shown = shown or str(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise BuildError(shown, exc.strerror or str(exc)) from None
    checked = check_source(text, shown)
    imports = _imports_module(checked.imports)
    digest = build_digest(text, imports)
    cache = cache_dir or default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{digest}.wasm"
    if _use(target):
        return Built(target, cached=True)
    with _locked(cache / f"{digest}.lock"):
        if _use(target):  # built by another process while this one waited
            return Built(target, cached=True)
        with tempfile.TemporaryDirectory(prefix="nex-pybuild-") as work:
            _build(Path(work), text, imports, target, shown)
    _prune(cache)
    return Built(target, cached=False)


def build_digest(text: bytes, imports: str) -> str:
    """The sha256 of everything a build depends on."""
    digest = hashlib.sha256()
    for part in (text, imports.encode(), _toolchain_identity()):
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()


_identity: bytes | None = None


def _toolchain_identity() -> bytes:
    global _identity
    if _identity is None:
        parts = [f"componentize-py {metadata.version('componentize-py')}".encode()]
        for file in sorted([*GUEST.glob("*.py"), *WIT.rglob("*.wit")]):
            parts.append(file.name.encode() + b"\0" + file.read_bytes())
        _identity = b"\0\0".join(parts)
    return _identity


def _imports_module(modules: tuple[str, ...]) -> str:
    """Imports, at build time, of what the user's module imports anywhere: the component has
    no files to import from later. One that fails here fails later too, in the function."""
    lines = ['"""Generated: the modules the function imports, loaded while it is built."""', ""]
    for name in modules:
        lines += ["try:", f"    import {name}", "except BaseException:", "    pass"]
    return "\n".join(lines) + "\n"


def _use(target: Path) -> bool:
    try:
        os.utime(target)  # most recently used: the last to be pruned
        return True
    except FileNotFoundError:
        return False


class _locked:
    def __init__(self, path: Path) -> None:
        self._path = path

    def __enter__(self) -> None:
        self._file = self._path.open("a")
        fcntl.flock(self._file, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()


def _build(work: Path, text: bytes, imports: str, target: Path, shown: str) -> None:
    app = work / "app"
    app.mkdir()
    (app / f"{USER_MODULE}.py").write_bytes(text)
    (app / f"{IMPORTS_MODULE}.py").write_text(imports)
    for file in GUEST.glob("*.py"):
        (app / file.name).write_bytes(file.read_bytes())
    # componentize-py bundles the site-packages of $VIRTUAL_ENV (or of this Python): point it
    # at an empty one, so that nothing of this machine's packages goes into the component.
    no_packages = work / "no-packages"
    (no_packages / "lib" / "site-packages").mkdir(parents=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    command = [sys.executable, "-c", "import sys; from componentize_py import script; sys.exit(script())",
               "-q", "-d", str(WIT), "-w", WORLD, "componentize", ENTRY_MODULE, "-p", str(app), "-o", str(partial)]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work), "VIRTUAL_ENV": str(no_packages)}
    try:
        done = subprocess.run(command, cwd=app, env=env, capture_output=True, timeout=BUILD_TIMEOUT_S)
        if done.returncode != 0 or not partial.is_file():
            output = (done.stdout + done.stderr).decode("utf-8", "replace")
            raise BuildError(shown, *build_failure(output, app / f"{USER_MODULE}.py"))
        os.replace(partial, target)  # whole or not at all: a reader never sees half a component
    except subprocess.TimeoutExpired:
        raise BuildError(shown, f"componentize-py did not finish in {BUILD_TIMEOUT_S} s") from None
    finally:
        partial.unlink(missing_ok=True)


_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+)')
_EXCEPTION = re.compile(r"^(?P<type>[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)|[A-Za-z_]\w*Error)(: (?P<message>.*))?$")


def build_failure(output: str, user_file: Path) -> tuple[str, int | None]:
    """The message and line of a failed build, from componentize-py's output: the last
    exception of a Python traceback, at the innermost line of the user's module."""
    lines = output.splitlines()
    line = None
    last_exception = None
    user_paths = {str(user_file), f"/0/{user_file.name}", user_file.name}
    for text in lines:
        frame = _FRAME.match(text)
        if frame and (frame["file"] in user_paths or frame["file"].endswith("/" + user_file.name)):
            line = int(frame["line"])
        found = _EXCEPTION.match(text.strip())
        if found:
            last_exception = text.strip()
    if last_exception is not None:
        return _hint(last_exception), line
    # Not a Python error: the tool's own, in its last meaningful line (no backtrace).
    meaningful = [t.strip() for t in lines if t.strip() and not re.match(r"^\s*(\d+:|at |Stack backtrace|note:)", t)]
    return f"componentize-py failed: {meaningful[-1] if meaningful else 'no output'}", None


def _hint(exception: str) -> str:
    if exception.startswith("ModuleNotFoundError"):
        return exception + " (a Python function has the standard library and the nex module, nothing installed)"
    return exception


def _prune(cache: Path) -> None:
    builds = sorted(cache.glob("*.wasm"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in builds[KEEP_BUILDS:]:
        old.unlink(missing_ok=True)
        old.with_suffix(".lock").unlink(missing_ok=True)
