"""Hooks of the documentation site (mkdocs.yml): a page for each directory the guides link to.

The guides link to directories (``schemas/``, ``examples/functions/``), which GitHub shows as
listings; on the site such a link would lead nowhere, so each linked directory that has no
``index.md`` gets a generated one listing its files, each a link, and the links lead to it.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path, PurePosixPath
from typing import Any

from mkdocs.structure.files import File, Files

_DIRECTORY_LINK = re.compile(r"\]\(([\w./-]+/)\)")
_LISTED: set[PurePosixPath] = set()  # the directories given a listing by on_files


def on_files(files: Files, config: Any) -> Files:
    docs = Path(config["docs_dir"])
    linked: set[PurePosixPath] = set()
    for page in [f for f in files if f.src_uri.endswith(".md")]:
        text = Path(page.abs_src_path).read_text(encoding="utf-8")
        base = PurePosixPath(page.src_uri).parent
        for target in _DIRECTORY_LINK.findall(text):
            directory = PurePosixPath(posixpath.normpath(base / target))
            if (docs / directory).is_dir() and not (docs / directory / "index.md").exists():
                linked.add(directory)
    _LISTED.clear()
    _LISTED.update(linked)
    for directory in sorted(linked):
        entries = sorted(p.relative_to(docs / directory).as_posix() for p in (docs / directory).rglob("*")
                         if p.is_file())
        listing = "\n".join(f"- [{name}]({name})" for name in entries)
        content = f"# {directory}/\n\nThe files of `docs/{directory}/`:\n\n{listing}\n"
        files.append(File.generated(config, f"{directory}/index.md", content=content))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    base = PurePosixPath(page.file.src_uri).parent

    def to_listing(match: re.Match[str]) -> str:
        target = match.group(1)
        listed = PurePosixPath(posixpath.normpath(base / target)) in _LISTED
        return f"]({target}index.md)" if listed else match.group(0)

    return _DIRECTORY_LINK.sub(to_listing, markdown)
