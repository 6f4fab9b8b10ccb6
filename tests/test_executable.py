"""What a native artifact is, and whether a node runs it: nex.runtimes.executable on real binaries
(built by gcc in tests/conftest.py), on hand-made ELF headers for what gcc here cannot make,
and on damaged files. readelf, where it is installed, is the second opinion."""

from __future__ import annotations

import io
import os
import random
import re
import shutil
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from nex.api.errors import BadArtifact
from nex.runtimes.executable import Executable, Kind, read_executable, verdict
from nex.runtimes.native import check_executable

HOST = os.uname().machine
OTHER = "x86_64" if HOST == "aarch64" else "aarch64"


def refusal(data: bytes, machine: str = HOST, sandboxed: bool = True) -> str:
    """The reason a node refuses ``data``; fails if it would run it."""
    with pytest.raises(BadArtifact) as refused:
        verdict(read_executable(data), machine, sandboxed)
    return refused.value.message


def readelf_interpreter(path: Path) -> str:
    if shutil.which("readelf") is None:
        pytest.skip("readelf is not installed")
    headers = subprocess.run(["readelf", "-l", str(path)], capture_output=True, text=True, check=True).stdout
    return re.search(r"Requesting program interpreter: (\S+)\]", headers).group(1)


# -- real binaries -------------------------------------------------------------------------


def test_a_static_executable_runs_everywhere(programs):
    executable = read_executable(programs["ticker"].read_bytes())
    assert executable == Executable(Kind.STATIC, None, HOST)
    assert verdict(executable, HOST, sandboxed=True) == []
    assert verdict(executable, HOST, sandboxed=False) == []


def test_a_static_pie_runs_everywhere(linked):
    if linked["static_pie"] is None:
        pytest.skip("gcc -static-pie does not link here")
    executable = read_executable(linked["static_pie"].read_bytes())
    assert executable.kind == Kind.STATIC_PIE and executable.interpreter is None
    assert verdict(executable, HOST, sandboxed=True) == []


@pytest.mark.parametrize("build", ["dynamic", "dynamic_nopie"])
def test_a_dynamic_executable_is_refused_in_a_sandbox_and_warned_about_without(linked, build):
    path = linked[build]
    loader = readelf_interpreter(path)
    executable = read_executable(path.read_bytes())
    assert executable == Executable(Kind.DYNAMIC, loader, HOST)

    reason = refusal(path.read_bytes(), sandboxed=True)
    assert f"dynamically linked (its interpreter is {loader})" in reason
    assert "link it statically (gcc -static, CGO_ENABLED=0 go build, cargo build --target" in reason

    [warning] = verdict(executable, HOST, sandboxed=False)
    assert f"dynamically linked (its interpreter is {loader})" in warning and "sandboxed nodes refuse it" in warning


def test_a_shared_library_and_an_object_file_are_not_executables(linked):
    assert "is a shared library, not an executable" in refusal(linked["shared"].read_bytes(), sandboxed=False)
    assert "is an object file (.o), not an executable" in refusal(linked["object"].read_bytes(), sandboxed=False)


def test_an_executable_of_another_architecture_is_refused_naming_both(linked):
    data = linked["other_arch"].read_bytes()
    assert read_executable(data) == Executable(Kind.STATIC, None, OTHER)
    for sandboxed in (True, False):
        reason = refusal(data, sandboxed=sandboxed)
        assert f"built for {OTHER}, and this node is {HOST}" in reason
        assert f"nex.arch={OTHER}" in reason
    assert verdict(read_executable(data), OTHER, sandboxed=True) == [], "a node of that architecture runs it"


def test_a_node_of_an_unknown_architecture_checks_no_machine(programs):
    assert verdict(read_executable(programs["ticker"].read_bytes()), "armv7l", sandboxed=True) == []


# -- scripts and other files ------------------------------------------------------------------


def test_a_script_runs_only_without_a_sandbox():
    script = read_executable(b"#!/bin/sh\necho hi\n")
    assert script == Executable(Kind.SCRIPT, "/bin/sh", shebang="#!/bin/sh")
    assert "is a script (#!/bin/sh), and a sandboxed node runs it alone, with no /bin/sh" in \
        refusal(b"#!/bin/sh\necho hi\n")
    [warning] = verdict(script, HOST, sandboxed=False)
    assert "a script (#!/bin/sh)" in warning and "sandboxed nodes refuse it" in warning
    env = read_executable(b"#! /usr/bin/env  python3\nprint(1)\n")
    assert env.interpreter == "/usr/bin/env" and env.shebang == "#!/usr/bin/env  python3"


@pytest.mark.parametrize("content, words", [
    (b"#!\n", "names no interpreter"),
    (b"#!sh\n", "names sh, not an absolute path"),
    (b"#!/bin/sh\r\necho hi\r\n", "Windows line endings"),
    (b"", "not an ELF executable: it is empty"),
    (b"echo hi\n", "neither an ELF file nor a script (#!)"),
    (b"\0asm\x01\0\0\0", "a WebAssembly module (deploy it as type wasm)"),
    (b"MZ\x90\0" + bytes(60), "a Windows executable"),
    (b"\xcf\xfa\xed\xfe" + bytes(60), "a macOS (Mach-O) executable"),
    (b"\x1f\x8b\x08\0" + bytes(16), "a gzip file"),
    (b"\x7fELF\x01\x01\x01" + bytes(40), "32-bit ELF file"),
    (b"\x7fELF\x02\x01", "truncated ELF"),
    (b"\x7fELF\x02\x03\x01" + bytes(60), "corrupt ELF file (byte order 3)"),
])
def test_what_is_not_an_executable_is_refused_with_what_it_is(content, words):
    for sandboxed in (True, False):
        assert words in refusal(content, sandboxed=sandboxed)


def test_a_tar_archive_is_named():
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("oci-layout")
        tar.addfile(info, io.BytesIO())
    assert "a tar archive (an OCI image layout tarball deploys as type oci)" in refusal(buffer.getvalue())


# -- hand-made ELF headers --------------------------------------------------------------------

PT_DYNAMIC, PT_INTERP, PT_LOAD = 2, 3, 1
DT_SONAME, DT_FLAGS_1, DF_1_PIE = 14, 0x6FFFFFFB, 0x08000000


def craft(e_type: int = 2, machine: int = 62, endian: str = "<", entry: int = 0x401000,
          interpreter: bytes | None = None, dynamic: list[tuple[int, int]] | None = None,
          phnum: int | None = None) -> bytes:
    """An ELF64 file: header, program headers (a PT_LOAD, and PT_INTERP / PT_DYNAMIC when
    given), then what they point at."""
    segments: list[tuple[int, bytes]] = [(PT_LOAD, b"")]
    if interpreter is not None:
        segments.append((PT_INTERP, interpreter + b"\0"))
    if dynamic is not None:
        segments.append((PT_DYNAMIC, b"".join(struct.pack(endian + "qQ", t, v) for t, v in [*dynamic, (0, 0)])))
    count = len(segments) if phnum is None else phnum
    ident = b"\x7fELF" + bytes([2, 1 if endian == "<" else 2, 1]) + bytes(9)
    header = ident + struct.pack(endian + "HHIQQQIHHHHHH", e_type, machine, 1, entry, 64, 0, 0, 64, 56, count,
                                 64, 0, 0)
    offset = 64 + 56 * len(segments)
    tables, blobs = b"", b""
    for p_type, blob in segments:
        tables += struct.pack(endian + "IIQQQQQQ", p_type, 4, offset + len(blobs), 0, 0, len(blob), len(blob), 8)
        blobs += blob
    return header + tables + blobs


@pytest.mark.parametrize("data, kind", [
    (craft(), Kind.STATIC),
    (craft(e_type=3, dynamic=[(DT_FLAGS_1, DF_1_PIE)]), Kind.STATIC_PIE),
    (craft(e_type=3, entry=0x1000, dynamic=[]), Kind.STATIC_PIE),  # linked before DF_1_PIE existed
    (craft(e_type=3, interpreter=b"/lib/ld-musl-x86_64.so.1"), Kind.DYNAMIC),
])
def test_hand_made_executables(data, kind):
    assert read_executable(data).kind == kind


@pytest.mark.parametrize("data, words", [
    (craft(e_type=3, entry=0, dynamic=[]), "shared library"),
    (craft(e_type=3, entry=0x1000, dynamic=[(DT_SONAME, 1)]), "shared library"),
    (craft(e_type=4), "core dump"),
    (craft(e_type=0xFE00), "ELF file of type 65024, not an executable"),
    (craft(phnum=0xFFFF), "corrupt ELF file (its program headers)"),
    (craft(phnum=0), "corrupt ELF file (its program headers)"),
    (craft(phnum=40), "truncated ELF file"),
    (craft(interpreter=b""), "corrupt ELF file (its interpreter)"),
    (craft(interpreter=b"/x" * 3000), "corrupt ELF file (its interpreter)"),
    (craft(machine=21, endian=">"), "built for ppc64, and this node is"),
    (craft(machine=21, endian="<"), "built for ppc64le, and this node is"),
    (craft(machine=9999), "built for ELF machine 9999"),
])
def test_hand_made_files_that_do_not_run_here(data, words):
    if HOST in ("ppc64", "ppc64le") and "ppc64" in words:
        pytest.skip("this host is a ppc64")
    assert words in refusal(data, sandboxed=False)


def test_the_interpreter_path_is_printable_in_a_message():
    executable = read_executable(craft(interpreter=b"/lib/ld\x1b[31m\xff.so"))
    assert executable.interpreter == "/lib/ld\\x1b[31m\\xff.so"


def test_damaged_files_are_refused_never_crash(linked, programs):
    """Every cut and a few thousand random bytes changed in the headers of real binaries:
    an Executable or a BadArtifact, never another exception."""
    rng = random.Random(15)
    originals = [linked["dynamic"].read_bytes(), programs["ticker"].read_bytes(), craft(e_type=3, dynamic=[])]
    for original in originals:
        head = original[:4096]
        for cut in range(len(head)):
            _read_or_refuse(head[:cut])
        for _ in range(2000):
            damaged = bytearray(head)
            for _ in range(rng.randint(1, 4)):
                damaged[rng.randrange(min(len(damaged), 1024))] = rng.randrange(256)
            _read_or_refuse(bytes(damaged))


def _read_or_refuse(data: bytes) -> None:
    try:
        read_executable(data)
    except BadArtifact:
        pass


# -- on the node's files: what check_executable adds ----------------------------------------


def test_a_file_is_read_without_loading_it_whole(tmp_path, linked, programs):
    """check_executable maps the file: a dynamic binary with a large tail is judged like the binary."""
    big = tmp_path / "big"
    big.write_bytes(linked["dynamic"].read_bytes() + bytes(64 << 20))
    [warning] = check_executable(big, sandboxed=False)
    assert "dynamically linked" in warning
    empty = tmp_path / "empty"
    empty.touch()
    with pytest.raises(BadArtifact) as refused:
        check_executable(empty, sandboxed=False)
    assert "it is empty" in refused.value.message
    assert check_executable(programs["ticker"], sandboxed=True) == []


def test_without_a_sandbox_a_missing_interpreter_is_refused(tmp_path, linked):
    loader = readelf_interpreter(linked["dynamic"]).encode()
    missing = b"/nonexistent/" + b"x" * (len(loader) - len(b"/nonexistent/"))
    binary = tmp_path / "musl-like"
    binary.write_bytes(linked["dynamic"].read_bytes().replace(loader + b"\0", missing + b"\0", 1))
    with pytest.raises(BadArtifact) as refused:
        check_executable(binary, sandboxed=False)
    assert f"this node has no {missing.decode()}: link it statically" in refused.value.message

    script = tmp_path / "script"
    script.write_bytes(b"#!/usr/bin/no-such-shell\necho hi\n")
    with pytest.raises(BadArtifact) as refused:
        check_executable(script, sandboxed=False)
    assert "this node has no /usr/bin/no-such-shell" in refused.value.message
