"""``file://`` artifacts: only from the directories the node's operator lists.

A deploy request comes from the bus, so a ``file://`` URI is a path chosen by
whoever sends one. The node opens it only when it lies inside one of its
``artifact_roots``, after every symlink and ``..`` is resolved, and it opens it
so that a symlink swapped in after that check is not followed: from the root's
directory down, one component at a time, each with ``O_NOFOLLOW``. What it then
reads is that open file, never the path again.

Anyone who can write inside a root can make the node serve what they put there:
a root is for artifacts, writable only by those trusted to deploy from it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from nex.api.errors import ArtifactNotAllowed, ArtifactNotFound, BadRequest

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO would block the open until some writer came; fstat refuses it after.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class ArtifactRoots:
    """The directories ``file://`` artifacts may come from; none: every ``file://`` is refused."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = [Path(os.path.realpath(root)) for root in roots]
        # As given, for the first check, which looks at no file: a root may be reached through a symlink.
        self._given = [Path(os.path.abspath(root)) for root in roots]

    def locate(self, uri: str) -> tuple[Path, PurePosixPath]:
        """The root ``uri`` lies in and its path below that root, symlinks and ``..`` resolved.

        Raises ArtifactNotAllowed for a path outside every root; nothing outside a root
        is looked at (so whether such a file exists is never told either).
        """
        parsed = urlparse(uri)
        path = unquote(parsed.path)
        if parsed.netloc not in ("", "localhost") or not path.startswith("/") or "\0" in path:
            raise BadRequest(f"artifact uri {uri!r} must name an absolute path: file:///path")
        if not self.roots:
            raise ArtifactNotAllowed(uri, has_roots=False)
        if _inside(Path(os.path.normpath(path)), self.roots + self._given) is None:
            raise ArtifactNotAllowed(uri, has_roots=True)
        found = _inside(Path(os.path.realpath(path)), self.roots)
        if found is None:
            raise ArtifactNotAllowed(uri, has_roots=True)
        return found

    def open(self, uri: str) -> int:
        """A file descriptor of the regular file ``uri`` names inside a root; the caller closes it."""
        root, relative = self.locate(uri)
        if not relative.parts:
            raise BadRequest(f"artifact {uri} is not a regular file")
        try:
            fd = _open_below(root, relative.parts)
        except (FileNotFoundError, NotADirectoryError):
            raise ArtifactNotFound(uri) from None
        except PermissionError:
            raise BadRequest(f"artifact {uri} is not readable by the node") from None
        except OSError as exc:  # ELOOP: a symlink appeared after the check; EIO, ENAMETOOLONG ...
            raise BadRequest(f"artifact {uri} cannot be opened: {exc.strerror or exc}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            # A FIFO or a device would never end or never answer.
            raise BadRequest(f"artifact {uri} is not a regular file")
        return fd


def _inside(path: Path, roots: list[Path]) -> tuple[Path, PurePosixPath] | None:
    for root in roots:
        if path.is_relative_to(root):
            return root, PurePosixPath(path.relative_to(root))
    return None


def _open_below(root: Path, parts: tuple[str, ...]) -> int:
    """Open ``root/parts...`` walking down from ``root``, following no symlink on the way."""
    directory = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            below = os.open(part, _DIRECTORY_FLAGS, dir_fd=directory)
            os.close(directory)
            directory = below
        return os.open(parts[-1], _FILE_FLAGS, dir_fd=directory)
    finally:
        os.close(directory)
