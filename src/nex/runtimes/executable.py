"""What a native artifact is, read from its bytes, and whether a node can run it: pure, no I/O.

A native workload is started with ``execve``. The kernel runs an ELF file of the
node's architecture whose type is an executable (``ET_EXEC``, or ``ET_DYN`` with
an entry point: a position-independent one), and a file that starts with ``#!``
through the interpreter that line names. A dynamically linked ELF names its
interpreter (the dynamic loader, ``PT_INTERP``), which then loads its libraries.

A sandboxed node runs the artifact alone in a root filesystem that holds nothing
else (docs/sandbox.md): no loader, no libraries, no shell. So there only static
executables (``gcc -static``, ``gcc -static-pie``) run, and anything else is
refused at deploy, with the reason, rather than reported running and failing a
moment later with ``exec /bin/x: no such file or directory``. A node without a
sandbox runs the artifact on the host, where a dynamic executable or a script may
find what it needs: it runs, with a warning.

:func:`read_executable` parses the ELF header and program headers (a small, stable
format, checked against the file's length at every step) or the ``#!`` line;
:func:`verdict` applies the node's rules. Both raise :class:`BadArtifact` with a
reason a user can act on.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from enum import StrEnum

from nex.api.errors import BadArtifact

ELF_MAGIC = b"\x7fELF"
_ELFCLASS32, _ELFCLASS64 = 1, 2
_ELFDATA2LSB, _ELFDATA2MSB = 1, 2
_ET_REL, _ET_EXEC, _ET_DYN, _ET_CORE = 1, 2, 3, 4
_PT_DYNAMIC, _PT_INTERP = 2, 3
_DT_NULL, _DT_SONAME, _DT_FLAGS_1 = 0, 14, 0x6FFFFFFB
_DF_1_PIE = 0x08000000
_EHDR64_SIZE, _PHDR64_SIZE, _DYN64_SIZE = 64, 56, 16
_PN_XNUM = 0xFFFF
# The kernel reads at most this much of a #! line (BINPRM_BUF_SIZE), and a loader path up to PATH_MAX.
SHEBANG_MAX = 256
PATH_MAX = 4096

# e_machine as `uname -m` (and the node's nex.arch tag) names it.
MACHINES = {3: "i386", 8: "mips", 20: "ppc", 21: "ppc64", 22: "s390x", 40: "arm", 62: "x86_64",
            183: "aarch64", 243: "riscv64", 258: "loongarch64"}
_KNOWN_MACHINES = {*MACHINES.values(), "ppc64le"}

# The first bytes of files that are often deployed as native by mistake, and what they are.
_NOT_ELF = [
    (b"\0asm", "a WebAssembly module (deploy it as type wasm)"),
    (b"MZ", "a Windows executable"),
    (b"\xcf\xfa\xed\xfe", "a macOS (Mach-O) executable: build it for Linux"),
    (b"\xce\xfa\xed\xfe", "a macOS (Mach-O) executable: build it for Linux"),
    (b"\x1f\x8b", "a gzip file: unpack it first"),
    (b"PK\x03\x04", "a zip archive: unpack it first"),
]


class Kind(StrEnum):
    STATIC = "static"  # ET_EXEC without an interpreter
    STATIC_PIE = "static-pie"  # ET_DYN without an interpreter, marked PIE or with an entry point
    DYNAMIC = "dynamic"  # an ELF with an interpreter: the dynamic loader
    SCRIPT = "script"  # #! and an interpreter


@dataclass(frozen=True)
class Executable:
    kind: Kind
    interpreter: str | None = None  # the dynamic loader, or the program of the #! line
    machine: str | None = None  # of an ELF, as `uname -m` names it
    shebang: str | None = None  # of a script: its #! line

    @property
    def described(self) -> str:
        """What it is, as the messages about it say."""
        if self.kind == Kind.SCRIPT:
            return f"a script ({self.shebang})"
        if self.kind == Kind.DYNAMIC:
            return f"dynamically linked (its interpreter is {self.interpreter})"
        return f"a {self.kind.value} executable"


# A whole file: bytes, or a read-only mmap of it (which slices to bytes too, and exports no buffer
# that would outlive a call, so it can be closed even while an exception holds the frames).
Buffer = bytes | mmap.mmap


def read_executable(data: Buffer) -> Executable:
    """What ``data`` (a whole file) is; BadArtifact when it is nothing ``execve`` runs."""
    if data[:2] == b"#!":
        return _script(data[:SHEBANG_MAX])
    if data[:4] != ELF_MAGIC:
        raise BadArtifact(f"the native artifact is not an ELF executable: it is {_what_else(data[:512])}")
    if len(data) < 20:
        raise BadArtifact("the native artifact is a truncated ELF file")
    ei_class, ei_data = data[4], data[5]
    if ei_data not in (_ELFDATA2LSB, _ELFDATA2MSB):
        raise BadArtifact(f"the native artifact is a corrupt ELF file (byte order {ei_data})")
    endian = "<" if ei_data == _ELFDATA2LSB else ">"
    e_type, e_machine = struct.unpack_from(endian + "HH", data, 16)
    machine = _machine_name(e_machine, endian)
    if ei_class == _ELFCLASS32:
        raise BadArtifact(f"the native artifact is a 32-bit ELF file (for {machine}); "
                          "a 64-bit executable is needed")
    if ei_class != _ELFCLASS64:
        raise BadArtifact(f"the native artifact is a corrupt ELF file (class {ei_class})")
    if len(data) < _EHDR64_SIZE:
        raise BadArtifact("the native artifact is a truncated ELF file")
    if e_type == _ET_REL:
        raise BadArtifact("the native artifact is an object file (.o), not an executable: link it "
                          "(gcc -static -o program program.o)")
    if e_type == _ET_CORE:
        raise BadArtifact("the native artifact is a core dump, not an executable")
    if e_type not in (_ET_EXEC, _ET_DYN):
        raise BadArtifact(f"the native artifact is an ELF file of type {e_type}, not an executable")
    interpreter, pie_flag, soname = _program_headers(data, endian)
    if interpreter is not None:
        return Executable(Kind.DYNAMIC, interpreter, machine)
    if e_type == _ET_EXEC:
        return Executable(Kind.STATIC, None, machine)
    # ET_DYN without a loader: a static-pie, or a shared library. The linker marks a PIE (DF_1_PIE);
    # an older one did not, but a library has no entry point of its own, or has a soname.
    (e_entry,) = struct.unpack_from(endian + "Q", data, 24)
    if pie_flag or (e_entry != 0 and not soname):
        return Executable(Kind.STATIC_PIE, None, machine)
    raise BadArtifact("the native artifact is a shared library, not an executable: deploy the program "
                      "that uses it, linked statically")


def verdict(executable: Executable, node_machine: str, sandboxed: bool) -> list[str]:
    """Whether a node of ``node_machine`` (``uname -m``) runs it: the warnings its deploy carries,
    or BadArtifact. ``sandboxed``: the node runs native workloads in a sandbox, which holds
    nothing but the artifact."""
    machine = executable.machine
    if machine is not None and node_machine in _KNOWN_MACHINES and machine != node_machine:
        elsewhere = f", or place it on a node tagged nex.arch={machine}" if machine in _KNOWN_MACHINES else ""
        raise BadArtifact(f"the native artifact is built for {machine}, and this node is {node_machine}: "
                          f"build it for {node_machine}{elsewhere}")
    what = executable.described
    if executable.kind == Kind.DYNAMIC:
        if sandboxed:
            raise BadArtifact(f"the native artifact is {what}, and a sandboxed node runs it alone, with no "
                              f"libraries: link it statically ({link_statically(node_machine)})")
        return [f"the native artifact is {what}: it runs on this node, which has no sandbox, only while "
                f"the host has the libraries it needs, and sandboxed nodes refuse it; link it statically "
                f"({link_statically(node_machine)})"]
    if executable.kind == Kind.SCRIPT:
        if sandboxed:
            raise BadArtifact(f"the native artifact is {what}, and a sandboxed node runs it alone, with no "
                              f"{executable.interpreter}: deploy a statically linked executable, or an OCI "
                              "image that holds the interpreter")
        return [f"the native artifact is {what}: it runs on this node, which has no sandbox, with the "
                f"host's {executable.interpreter}, and sandboxed nodes refuse it"]
    return []


def link_statically(machine: str) -> str:
    """How to build a static executable for ``machine``, with the usual toolchains."""
    return f"gcc -static, CGO_ENABLED=0 go build, cargo build --target {machine}-unknown-linux-musl"


def missing_interpreter(executable: Executable, node_machine: str) -> BadArtifact:
    """Why a node without a sandbox refuses ``executable`` when its interpreter is not on the host."""
    if executable.kind == Kind.SCRIPT:
        return BadArtifact(f"the native artifact is {executable.described}, and this node has no "
                           f"{executable.interpreter}")
    return BadArtifact(f"the native artifact is {executable.described}, and this node has no "
                       f"{executable.interpreter}: link it statically ({link_statically(node_machine)})")


def _script(head: bytes) -> Executable:
    line = head[2:].split(b"\n", 1)[0]
    if line.endswith(b"\r"):
        # The kernel ends the line at \n alone: it would look for "/bin/sh\r".
        raise BadArtifact("the native artifact is a script with Windows line endings (its #! line ends with "
                          "\\r): convert it (dos2unix)")
    words = line.split()
    if not words:
        raise BadArtifact("the native artifact is a script whose #! line names no interpreter")
    interpreter = _printable(words[0])
    if not interpreter.startswith("/"):
        raise BadArtifact(f"the native artifact is a script whose #! line names {interpreter}, "
                          "not an absolute path")
    return Executable(Kind.SCRIPT, interpreter, shebang=_printable(b"#!" + line.strip()))


def _program_headers(data: Buffer, endian: str) -> tuple[str | None, bool, bool]:
    """(the interpreter, whether DT_FLAGS_1 has DF_1_PIE, whether there is a DT_SONAME)."""
    e_phoff, = struct.unpack_from(endian + "Q", data, 32)
    e_phentsize, e_phnum = struct.unpack_from(endian + "HH", data, 54)
    if e_phnum == 0 or e_phnum == _PN_XNUM or e_phentsize != _PHDR64_SIZE:
        raise BadArtifact("the native artifact is a corrupt ELF file (its program headers)")
    _within(data, e_phoff, e_phnum * _PHDR64_SIZE)
    interpreter: str | None = None
    pie, soname = False, False
    for index in range(e_phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from(endian + "IIQQQQ", data,
                                                                   e_phoff + index * _PHDR64_SIZE)
        if p_type == _PT_INTERP and interpreter is None:  # the kernel uses the first
            interpreter = _interpreter(data, p_offset, p_filesz)
        elif p_type == _PT_DYNAMIC:
            pie, soname = _dynamic(data, p_offset, p_filesz, endian)
    return interpreter, pie, soname


def _interpreter(data: Buffer, offset: int, size: int) -> str:
    if not 2 <= size <= PATH_MAX:
        raise BadArtifact("the native artifact is a corrupt ELF file (its interpreter)")
    _within(data, offset, size)
    path = data[offset:offset + size].split(b"\0", 1)[0]
    if not path:
        raise BadArtifact("the native artifact is a corrupt ELF file (its interpreter)")
    return _printable(path)


def _dynamic(data: Buffer, offset: int, size: int, endian: str) -> tuple[bool, bool]:
    _within(data, offset, size)
    pie, soname = False, False
    for at in range(offset, offset + size - _DYN64_SIZE + 1, _DYN64_SIZE):
        tag, value = struct.unpack_from(endian + "qQ", data, at)
        if tag == _DT_NULL:
            break
        if tag == _DT_FLAGS_1:
            pie = bool(value & _DF_1_PIE)
        elif tag == _DT_SONAME:
            soname = True
    return pie, soname


def _within(data: Buffer, offset: int, size: int) -> None:
    if offset < 0 or size < 0 or offset + size > len(data):
        raise BadArtifact("the native artifact is a truncated ELF file")


def _machine_name(e_machine: int, endian: str) -> str:
    name = MACHINES.get(e_machine, f"ELF machine {e_machine}")
    if e_machine == 21 and endian == "<":
        return "ppc64le"
    return name


def _what_else(head: bytes) -> str:
    if not head:
        return "empty"
    for magic, what in _NOT_ELF:
        if head.startswith(magic):
            return what
    if head[257:262] == b"ustar":
        return "a tar archive (an OCI image layout tarball deploys as type oci)"
    return "neither an ELF file nor a script (#!)"


def _printable(raw: bytes) -> str:
    """A path from the artifact, fit for a message: control characters and bad UTF-8 escaped."""
    text = raw.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)[:PATH_MAX]
