"""file:// artifacts confined to the artifact roots, the download bound, and the state dir's modes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from nex.api.errors import ArtifactNotAllowed, ArtifactNotFound, ArtifactTooLarge, BadRequest, HashMismatch
from nex.artifact_download import Download
from nex.artifact_roots import ArtifactRoots, _open_below
from nex.node.config import ConfigError, NodeConfig, load_config
from nex.node.statedir import make_private


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "app.js").write_text("() => 1\n")
    (tmp_path / "secret").write_text("SEED\n")
    return root


def refusal(roots: ArtifactRoots, uri: str) -> Exception:
    with pytest.raises(Exception) as caught:
        os.close(roots.open(uri))
    return caught.value


def test_a_file_inside_a_root_opens(root):
    fd = ArtifactRoots([root]).open(f"file://{root}/sub/app.js")
    try:
        assert os.read(fd, 100) == b"() => 1\n"
    finally:
        os.close(fd)
    fd = ArtifactRoots([root]).open(f"file://{root}/sub/../sub/./app.js")  # resolves inside: fine
    os.close(fd)


def test_no_roots_refuses_every_file_and_says_what_to_do(root):
    error = refusal(ArtifactRoots([]), f"file://{root}/sub/app.js")
    assert isinstance(error, ArtifactNotAllowed) and error.code == 403
    assert "--artifact-root" in error.message and "nats://BUCKET/KEY" in error.message


def test_paths_that_leave_the_root_are_refused_alike(root, tmp_path):
    (root / "to-secret").symlink_to(tmp_path / "secret")
    (root / "to-parent").symlink_to(tmp_path)
    (root / "dangling").symlink_to(tmp_path / "nothing-here")
    (tmp_path / "root-sibling").mkdir()
    roots = ArtifactRoots([root])
    for uri in (f"file://{root}/../secret", f"file://{root}/to-secret", f"file://{root}/to-parent/secret",
                f"file://{root}/dangling", f"file://{tmp_path}/root-sibling/x", f"file://{root}-sibling/x",
                "file:///etc/passwd", "file:///nonexistent"):
        error = refusal(roots, uri)
        assert isinstance(error, ArtifactNotAllowed), uri
        assert error.message.startswith(f"artifact {uri} is outside every artifact root")


def test_a_root_given_through_a_symlink_still_confines(root, tmp_path):
    (tmp_path / "alias").symlink_to(root)
    fd = ArtifactRoots([tmp_path / "alias"]).open(f"file://{tmp_path}/alias/sub/app.js")
    os.close(fd)
    assert isinstance(refusal(ArtifactRoots([tmp_path / "alias"]), f"file://{tmp_path}/secret"), ArtifactNotAllowed)


def test_a_symlink_swapped_in_after_the_check_is_not_followed(root, tmp_path):
    """What a swap between the check and the open leaves: a symlink where a directory or
    the file was. The walk down from the root opens neither."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "app.js").write_text("SEED\n")
    os.rename(root / "sub", root / "old-sub")
    (root / "sub").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        _open_below(root, ("sub", "app.js"))
    (root / "old-sub" / "app.js").unlink()
    (root / "old-sub" / "app.js").symlink_to(tmp_path / "secret")
    with pytest.raises(OSError):
        _open_below(root, ("old-sub", "app.js"))


def test_what_is_not_a_regular_file_is_refused_without_blocking(root):
    os.mkfifo(root / "fifo")  # opening it for reading would wait for a writer
    roots = ArtifactRoots([root])
    for uri, kind in ((f"file://{root}/fifo", BadRequest), (f"file://{root}/sub", BadRequest),
                      (f"file://{root}", BadRequest), (f"file://{root}/missing", ArtifactNotFound),
                      (f"file://{root}/sub/app.js/x", ArtifactNotFound), ("file://relative/x", BadRequest),
                      ("file:relative", BadRequest),
                      (f"file://{root}/a%00b", BadRequest)):
        assert type(refusal(roots, uri)) is kind, uri


def test_a_download_over_its_limit_or_with_the_wrong_hash_leaves_nothing(tmp_path):
    with pytest.raises(ArtifactTooLarge):
        with Download(tmp_path, "file:///x", limit=10) as download:
            download.write(b"12345")
            download.write(b"678901")
    with pytest.raises(HashMismatch) as wrong:
        with Download(tmp_path, "file:///x", limit=10) as download:
            download.write(b"12345")
            download.commit("0" * 64, tmp_path / "target")
    assert list(tmp_path.iterdir()) == []
    assert "0" * 64 in wrong.value.message and "5994471abb01112afcc18159f6cc74b4f511b99806da59b3caf5a9c173cacfc5" \
        not in wrong.value.message
    with Download(tmp_path, "file:///x", limit=10) as download:
        download.write(b"12345")
        target = download.commit("5994471abb01112afcc18159f6cc74b4f511b99806da59b3caf5a9c173cacfc5", tmp_path / "t")
    assert [p.name for p in tmp_path.iterdir()] == ["t"] and target.read_bytes() == b"12345"
    assert stat.S_IMODE(target.stat().st_mode) == 0o500


def test_the_state_dir_is_searchable_only_and_its_entries_are_the_nodes(tmp_path):
    state = tmp_path / "state"
    for name in ("artifacts", "wasm-modules", "bundles", "images"):
        (state / name).mkdir(parents=True)
        (state / name).chmod(0o755)
    (state / "node.xk").write_text("SX")
    (state / "node.xk").chmod(0o644)
    state.chmod(0o755)
    make_private(state)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [state, *state.iterdir()]}
    assert modes == {"state": 0o711, "artifacts": 0o700, "wasm-modules": 0o700, "node.xk": 0o600,
                     "bundles": 0o755, "images": 0o755}  # the sandbox's entries keep their own
    state.chmod(0o700)
    make_private(state)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700, "an operator's tighter mode is kept"
    make_private(tmp_path / "new" / "state")
    assert stat.S_IMODE((tmp_path / "new" / "state").stat().st_mode) == 0o711


def test_the_roots_and_the_maximum_come_from_the_config_and_the_command_line(tmp_path):
    assert NodeConfig().artifact_roots == [] and NodeConfig().max_artifact_bytes == 1 << 30
    config_file = tmp_path / "node.toml"
    config_file.write_text(f'artifact_roots = ["{tmp_path}/a"]\nmax_artifact_bytes = 4096\n')
    config = load_config(config_file, {})
    assert config.artifact_roots == [tmp_path / "a"] and config.max_artifact_bytes == 4096
    from nex.cli import cli as nex_main

    result = CliRunner().invoke(nex_main, ["node", "up", "--help"])
    assert "--artifact-root DIR" in result.output
    with pytest.raises(ConfigError) as relative:
        load_config(None, {"artifact_roots": ["artifacts"]})
    assert "artifact root 'artifacts' must be an absolute path" in str(relative.value)


def test_the_cache_is_private_and_forgets_partial_downloads_of_a_killed_node(tmp_path):
    from nex.artifacts import ArtifactCache

    directory = tmp_path / "artifacts"
    directory.mkdir(mode=0o755)
    (directory / ".partial-abc").write_bytes(b"half")
    (directory / ("0" * 64)).write_bytes(b"whole")
    ArtifactCache(directory, js=None)
    assert [p.name for p in directory.iterdir()] == ["0" * 64]
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
