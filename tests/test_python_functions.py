"""Python functions (issue 17): a module with ``handle(subject, payload)`` built into a WASI 0.2
component with componentize-py, its build errors as ``file:line: message``, and the build cache.

Builds go to the run's shared cache (conftest's ``python_build_cache``): each source here is
built once per run, whichever worker asks first. The component is checked here with
wasmtime directly, under a host whose every service answers ``unavailable``; through a
node, in tests/test_python_isolation.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest
import wasmtime
from click.testing import CliRunner
from wasmtime import component

from nats.js.errors import BucketNotFoundError

from nex.api import subjects
from nex.api.models import Lifecycle, WorkloadType
from nex.cli import cli
from nex.client import NexClient
from nex.client.appfile import AppFileError, build_spec, parse_app_file
from nex.fleet.store import AppStore
from nex.pyfunc import BuildError, build_function
from nex.pyfunc import build
from nex.pyfunc.build import _imports_module, build_digest, build_failure

PROBE = Path(__file__).parent / "functions" / "probe.py"
HOST_INTERFACES = {
    "nex:host/kv@0.1.0": ["get", "put", "delete", "keys"],
    "nex:host/objects@0.1.0": ["get", "put", "delete", "list-objects"],
    "nex:host/messaging@0.1.0": ["publish", "request"],
    "nex:host/http@0.1.0": ["send"],
}


class Harness:
    """The component in a wasmtime store of its own, given only ``env``; every host call fails."""

    def __init__(self, path: Path, env: dict[str, str]) -> None:
        engine = wasmtime.Engine()
        # Compiled once per build (about 4.5 s), kept beside it in the run's cache.
        serialized = path.with_suffix(".test-cwasm")
        if serialized.exists():
            compiled = component.Component.deserialize_file(engine, str(serialized))
        else:
            compiled = component.Component.from_file(engine, str(path))
            partial = serialized.with_suffix(f".{os.getpid()}.partial")
            partial.write_bytes(compiled.serialize())
            os.replace(partial, serialized)
        linker = component.Linker(engine)
        linker.add_wasip2()

        def unavailable(store, *args):
            error = component.Record()
            error.kind, error.message = "unavailable", "no host services in this test"
            return error

        with linker.root() as root:
            for name, functions in HOST_INTERFACES.items():
                with root.add_instance(name) as interface:
                    for function in functions:
                        interface.add_func(function, unavailable)
        self.store = wasmtime.Store(engine)
        wasi = wasmtime.WasiConfig()
        wasi.env = list(env.items())
        self.store.set_wasi(wasi)
        instance = linker.instantiate(self.store, compiled)
        self._handle = instance.get_func(self.store, instance.get_export_index(self.store, "handle"))

    def call(self, payload: str, subject: str = "demo.probe") -> bytes | str:
        """The reply's bytes, or the error reply's text."""
        result = self._handle(self.store, subject, payload.encode())
        self._handle.post_return(self.store)
        return result


@pytest.fixture(scope="module")
def probe() -> Harness:
    return Harness(build_function(PROBE).path, {"GIVEN": "yes"})


def test_return_values_are_the_reply_as_in_javascript(probe):
    assert probe.call("echo hello") == b"echo hello"
    assert probe.call("return bytes") == b"\x00\x01"
    assert probe.call("return text") == "h\u00e9".encode()
    assert probe.call("return json") == b'[1,{"a":null}]'
    assert probe.call("return none") == b""


def test_standard_library_modules_imported_inside_the_function_work(probe):
    assert json.loads(probe.call("stdlib")) == ["3.3", "2d711642", "a#b#", True, "2026-12-05"]


def test_a_raised_exception_is_the_error_reply_with_its_line(probe):
    assert probe.call("raise 500") == "ValueError: too big: 500 (line 33)"
    assert probe.call("exit") == "SystemExit: 3 (line 35)"
    assert probe.call("echo after") == b"echo after"  # the instance answers the next call


def test_the_module_keeps_its_state_between_calls(probe):
    first = int(probe.call("calls"))
    assert int(probe.call("calls")) == first + 1


def test_the_component_sees_no_host_file_env_network_or_process(probe):
    files = json.loads(probe.call(f"files /etc/passwd,/proc/self/environ,{PROBE}"))
    assert {what: found.get("error") for what, found in files.items()} == {
        "/etc/passwd": "FileNotFoundError", "/proc/self/environ": "FileNotFoundError",
        str(PROBE): "FileNotFoundError", "listdir /": "FileNotFoundError", "write /tmp": "FileNotFoundError"}
    assert json.loads(probe.call("env")) == {"GIVEN": "yes"}  # not the build's, not this process's
    network = json.loads(probe.call("network 127.0.0.1:4222"))
    assert all("error" in found for found in network.values()), network
    process = json.loads(probe.call("process"))
    assert all("error" in found for found in process.values()), process


def test_the_build_runs_the_module_in_a_sandbox_that_sees_nothing_of_this_machine(probe):
    seen = json.loads(probe.call("build"))  # what the probe's top level found while it was built
    assert seen["listdir /"]["error"] == "FileNotFoundError"
    assert seen["/etc/passwd"]["error"] == "FileNotFoundError"
    assert not {"PATH", "HOME", "NEX_HOME", "NEX_PYTHON_BUILD_CACHE"} & set(seen["env"]), seen["env"]


def test_a_host_file_that_is_not_there_fails_clearly(probe):
    line = next(n for n, text in enumerate(PROBE.read_text().splitlines(), 1) if 'open(arg, "rb")' in text)
    assert probe.call("open /etc/passwd") == (
        "FileNotFoundError: [Errno 44] No such file or directory: '/etc/passwd' (a function sees no file, socket"
        " or process of the host: use the nex module's host services (nex.kv, nex.objects, nex.publish,"
        f" nex.request, nex.http)) (line {line})")


def test_a_failed_host_call_is_a_nex_error_with_its_code(probe):
    assert json.loads(probe.call("denied")) == {"code": "unavailable", "message": "no host services in this test"}


BROKEN = {
    "syntax.py": ("def handle(subject, payload):\n    return ('x'\n", "syntax.py:2: SyntaxError: '(' was never closed"),
    "nohandle.py": ("def hello(subject, payload):\n    return 1\n",
                    "nohandle.py:1: no function handle(subject, payload) at the top of the module"),
    "asynchandle.py": ("import nex\n\nasync def handle(subject, payload):\n    return 1\n",
                       "asynchandle.py:3: handle is async: a Python function is a plain def"
                       " (host calls do not need await)"),
    "onearg.py": ("def handle(payload):\n    return 1\n",
                  "onearg.py:1: handle must take two arguments: handle(subject, payload)"),
    "indent.py": ("def handle(subject, payload):\nreturn 1\n",
                  "indent.py:2: IndentationError: expected an indented block after function definition on line 1"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_module_that_does_not_compile_is_refused_with_file_and_line(name, tmp_path):
    source, expected = BROKEN[name]
    (tmp_path / name).write_text(source)
    with pytest.raises(BuildError) as raised:
        build_function(tmp_path / name, name, cache_dir=tmp_path / "cache")
    assert str(raised.value) == expected
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*.wasm"))


def test_a_module_that_fails_when_imported_is_refused_with_file_and_line(tmp_path):
    # Compiles, but raises when componentize-py imports it: read back from its output.
    (tmp_path / "fails.py").write_text("import json\n\nLIMIT = json.loads(CONFIG)\n\ndef handle(s, p):\n    return p\n")
    with pytest.raises(BuildError) as raised:
        build_function(tmp_path / "fails.py", "fails.py", cache_dir=tmp_path / "cache")
    assert str(raised.value) == "fails.py:3: NameError: name 'CONFIG' is not defined"
    assert "Traceback" not in str(raised.value) and "backtrace" not in str(raised.value)


def test_a_failure_in_componentize_py_output_is_read_as_file_line_message():
    # componentize-py's output when an import fails: a Python traceback inside a Rust error.
    output = (
        "Error: Traceback (most recent call last):\n"
        '  File "/0/nex_function_entry.py", line 19, in <module>\n'
        '  File "/0/nex_user_function.py", line 1, in <module>\n'
        "ModuleNotFoundError: No module named 'requests'\n\n"
        "Stack backtrace:\n   0: componentize_py::componentize\n   1: std::rt::lang_start\n")
    message, line = build_failure(output, Path("/tmp/x/app/nex_user_function.py"))
    assert (message, line) == ("ModuleNotFoundError: No module named 'requests' (a Python function has the"
                               " standard library and the nex module, nothing installed)", 1)


def test_builds_are_cached_by_source_digest_and_one_build_serves_concurrent_callers(tmp_path, monkeypatch):
    # The cache's logic, with a stand-in for componentize-py (the real one is run above): two
    # callers of one digest at once, one builds while the other waits for it, then finds it.
    source = tmp_path / "cached.py"
    source.write_text("def handle(subject, payload):\n    return b'cached ' + payload\n")
    cache = tmp_path / "cache"
    builds = []

    def slow_build(work, text, imports, target, shown):
        builds.append(text)
        time.sleep(0.3)
        target.write_bytes(b"component of " + text)

    monkeypatch.setattr(build, "_build", slow_build)
    results = []
    threads = [threading.Thread(target=lambda: results.append(build_function(source, cache_dir=cache)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1 and sorted(r.cached for r in results) == [False, True]
    assert results[0].path == results[1].path
    assert results[0].path.name == build_digest(source.read_bytes(), _imports_module(())) + ".wasm"
    assert build_function(source, cache_dir=cache).cached
    source.write_text("def handle(subject, payload):\n    return b'changed'\n")  # another digest
    changed = build_function(source, cache_dir=cache)
    assert not changed.cached and changed.path != results[0].path and len(builds) == 2


def test_the_cache_keeps_the_builds_used_last(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "_build", lambda work, text, imports, target, shown: target.write_bytes(text))
    monkeypatch.setattr(build, "KEEP_BUILDS", 2)
    cache = tmp_path / "cache"
    paths = []
    for n in range(3):
        (tmp_path / f"f{n}.py").write_text(f"def handle(subject, payload):\n    return {n}\n")
        paths.append(build_function(tmp_path / f"f{n}.py", cache_dir=cache).path)
        os.utime(paths[-1], (n + 1000, n + 1000))  # distinct times, oldest first
    build_function(tmp_path / "f0.py", cache_dir=cache)  # used again: now the newest
    (tmp_path / "f3.py").write_text("def handle(subject, payload):\n    return 3\n")
    build_function(tmp_path / "f3.py", cache_dir=cache)
    assert sorted(p.name for p in cache.glob("*.wasm")) == sorted(
        [paths[0].name, build_function(tmp_path / "f3.py", cache_dir=cache).path.name])


def test_devrun_shows_a_build_error_like_a_javascript_syntax_error(tmp_path, nats_server, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("broken.py").write_text("def handle(subject, payload):\n    return 'hello ' +\n")
    result = CliRunner().invoke(cli, ["devrun", "broken.py", "--trigger", "demo.broken"],
                                env={"NATS_URL": nats_server.url})
    assert result.exit_code != 0
    assert result.output.strip() == "nex: error: broken.py:2: SyntaxError: invalid syntax"


# -- nex apply: a .py artifact -------------------------------------------------------


def test_a_py_artifact_needs_no_type_and_cannot_be_another(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "app.yaml").write_text("name: shop\nworkloads:\n  - name: probe\n    artifact: ./probe.py\n"
                                       "    triggers: [shop.probe]\n")
    workload = parse_app_file(tmp_path / "app.yaml", "shop").app.workloads[0]
    assert (workload.type, workload.lifecycle) == (WorkloadType.WASM, Lifecycle.FUNCTION)
    (tmp_path / "js.yaml").write_text("name: shop\nworkloads:\n  - name: probe\n    type: javascript\n"
                                      "    artifact: ./probe.py\n    triggers: [shop.probe]\n")
    with pytest.raises(AppFileError) as raised:
        parse_app_file("js.yaml", "shop")
    assert str(raised.value) == ("js.yaml: workloads[0]: a .py artifact is a Python function, built into a wasm"
                                 " component: the type is wasm, not javascript")


async def test_apply_builds_a_py_artifact_and_uploads_the_component(tmp_path, nc, monkeypatch):
    monkeypatch.chdir(tmp_path)
    client, store = NexClient(nc, timeout=5.0), AppStore(nc, timeout=5.0)
    (tmp_path / "probe.py").write_bytes(PROBE.read_bytes())  # the same source: the run's build of it
    (tmp_path / "broken.py").write_text("def handle(subject, payload):\n    return 'x' +\n")
    (tmp_path / "app.yaml").write_text("name: shop\nworkloads:\n  - name: probe\n    artifact: ./probe.py\n"
                                       "    triggers: [a.probe]\n  - name: broken\n    artifact: ./broken.py\n    triggers: [a.broken]\n")
    with pytest.raises(AppFileError) as raised:
        await build_spec(parse_app_file("app.yaml", "default"), client, store, None)
    assert raised.value.message == ("app.yaml: workloads[1].artifact: ./broken.py:2: SyntaxError: invalid syntax")
    with pytest.raises(BucketNotFoundError):  # nothing uploaded for a file that does not build
        await nc.jetstream().object_store(subjects.ARTIFACT_BUCKET)

    (tmp_path / "app.yaml").write_text("name: shop\nworkloads:\n  - name: probe\n    artifact: ./probe.py\n"
                                       "    triggers: [a.probe]\n")
    spec = await build_spec(parse_app_file(tmp_path / "app.yaml", "default"), client, store, None)
    component_bytes = build_function(PROBE).path.read_bytes()
    sha256 = hashlib.sha256(component_bytes).hexdigest()
    assert spec.workloads[0].artifact.model_dump() == {"uri": f"nats://NEXCLIFILES/{sha256}", "sha256": sha256}
    assert spec.workloads[0].type == WorkloadType.WASM
    uploaded = await (await nc.jetstream().object_store(subjects.ARTIFACT_BUCKET)).get(sha256)
    assert uploaded.data == component_bytes
