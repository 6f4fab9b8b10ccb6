"""The documentation site builds, in strict mode: a broken link, a page missing from the nav or a
reference that does not resolve fails the suite (mkdocs.yml; ``make docs``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml

from nex.cli import cli

# One build for the module, on one xdist worker.
pytestmark = pytest.mark.xdist_group("docs_site")

ROOT = Path(__file__).resolve().parent.parent
MKDOCS = Path(sys.executable).parent / "mkdocs"
ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}


def build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(MKDOCS), "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
                          cwd=config.parent, env=ENV, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = build(ROOT / "mkdocs.yml", out)
    assert done.returncode == 0, done.stderr
    return out


def text_of(page: Path) -> str:
    import html
    import re

    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))


def test_every_guide_is_a_page_of_the_site(site):
    guides = sorted(p.relative_to(ROOT / "docs") for p in (ROOT / "docs").glob("*.md"))
    for guide in guides:
        page = site / ("index.html" if guide.stem == "index" else f"{guide.stem}/index.html")
        assert page.is_file(), f"docs/{guide} is not on the site"


def test_the_api_reference_documents_the_client_from_its_docstrings(site):
    import nex.client

    reference = text_of(site / "reference" / "client" / "index.html")
    methods = [name for name in dir(nex.client.NexClient) if not name.startswith("_")]
    missing = [name for name in methods if f"{name}(" not in reference and name not in reference]
    assert missing == [], f"NexClient methods missing from the API reference: {missing}"
    # a docstring's words, not only the names
    assert "Wait until every replica of the app's current version runs and is healthy" in reference
    api = text_of(site / "reference" / "api" / "index.html")
    assert "No node of the namespace runs the workload" in api  # WorkloadNotFound's docstring
    assert "DeployRequest" in api


def test_the_cli_reference_lists_every_command(site):
    reference = text_of(site / "reference" / "cli" / "index.html")
    ctx = click.Context(cli)
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        assert f"nex {name}" in reference, name
        if isinstance(command, click.Group):
            for sub in command.list_commands(ctx):
                assert f"nex {name} {sub}" in reference, f"{name} {sub}"


def test_the_python_guide_shows_its_examples_on_the_site(site):
    guide = text_of(site / "python" / "index.html")
    assert "async with nex.connect() as client:" in guide
    assert (site / "examples" / "python" / "index.html").is_file(), "the examples' directory listing"


def test_a_broken_link_fails_the_build(tmp_path):
    """The strict build can fail: the site's own validation rules, on a page that links nowhere."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\nSee [the guide](guide.md).\n")
    small = {"site_name": "check", "docs_dir": "docs", "strict": True, "validation": config["validation"]}
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(small))
    done = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0
    assert "guide.md" in done.stderr and "not found" in done.stderr
