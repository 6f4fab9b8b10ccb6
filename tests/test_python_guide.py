"""docs/python.md says what its examples do: this runs them and checks.

Every example of the guide is a file under docs/examples/python/, included in the guide
verbatim after an ``<!-- example: FILE -->`` marker. Each Python file is run as a user runs
it (``python docs/examples/python/NAME.py`` from the top of the repository) against a real
node: ``nex node up`` with its own nats-server, tagged ``zone=a``, that trusts only the
issuer of the keys in the examples' ``$NEX_HOME`` (so every example that changes something
shows that it signs), and acts as the fleet's reconciler (so the app example's replicas run).
Each must print what :data:`EXPECTED` says, in order. ``python tests/test_python_guide.py
--write`` rewrites the guide's copies of the files after they changed.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import nats
import pytest

from helpers import eventually

from nex.natsserver import free_port
from nex.security.keystore import UserKeys

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "python.md"
EXAMPLES = ROOT / "docs" / "examples" / "python"
_EXAMPLE = re.compile(r"<!-- example: (\S+) -->\n```\w*\n(.*?)```\n", re.S)

# What each example prints, as fragments in order; ``ticker`` is the quick start's service, built here.
EXPECTED: dict[str, list[str]] = {
    "connect.py": ["node guide-node (", "workloads"],
    "function.py": ["javascript function 'hello' is running", '{"hello":"python","on":"demo.hello"}'],
    "service.py": ["service 'ticker' is running on guide-node (zone a)", "service 'ticker' is stopped"],
    "invoke.py": ['{"hello":"sync","on":"demo.hello"}', "kept as ", "sent again: duplicate=True"],
    "feeds.py": ["[stdout] hello logs", "workload_stopped: hello"],
    "apps.py": ["app 'shop' created, version 1", "2/2 replicas running", '"on":"shop.hello"',
                "version 2: hello scaled", "deleted; apps left: []"],
    "errors.py": ["NatsUnavailable: cannot connect to NATS at nats://127.0.0.1:1", "hint: Is a node running?",
                  "404 no function is triggered by 'nobody.listens'", "404 no workload 'no-such-workload'",
                  "404 no app 'nothing' in namespace 'default'",
                  "ArtifactNotFound 404: artifact not found: missing.js"],
    "keys.py": ["your issuer: A", "deployed 'hello', signed by A", "unsigned: this node trusts only signed"],
}
WALL_LIMIT_S = 60


def shown() -> dict[str, str]:
    return dict(_EXAMPLE.findall(GUIDE.read_text()))


def test_the_guide_shows_every_example_file_verbatim():
    files = {p.name for p in EXAMPLES.iterdir() if p.is_file()}
    assert set(shown()) == files, "every example file is in the guide, and only those"
    for name, text in shown().items():
        assert text == (EXAMPLES / name).read_text(), f"docs/python.md shows {name} differently (--write)"
    assert set(EXPECTED) == {name for name in files if name.endswith(".py")}, "an example no test runs"


@pytest.mark.parametrize("page", ["README.md", "docs/index.md"])
def test_the_front_pages_show_an_example_verbatim(page):
    """The README and the site's home page show a Python example: one of these files, as it is."""
    examples = _EXAMPLE.findall((ROOT / page).read_text())
    assert examples, f"{page} shows no Python example"
    for name, text in examples:
        assert text == (EXAMPLES / name).read_text(), f"{page} shows {name} differently (--write)"


@pytest.fixture(scope="module")
def guide_node(tmp_path_factory):
    """A node as a user starts one (``nex node up``), on its own nats-server, trusting the issuer
    of the examples' keys; yields the environment the examples run in."""
    base = tmp_path_factory.mktemp("python-guide")
    home = base / "nexhome"
    keys = UserKeys.load(home, create=True)
    fleet = UserKeys.load(base / "fleet", create=True)  # the reconciler's keys: trusted too, as operations.md says
    ticker = base / "ticker"
    subprocess.run(["gcc", "-static", "-O1", "-o", str(ticker), str(ROOT / "examples" / "quickstart" / "ticker.c")],
                   check=True)
    port = free_port()
    node_env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "NEX_NAMESPACE")}
    env = {**node_env, "NEX_HOME": str(home), "NATS_URL": f"nats://127.0.0.1:{port}"}
    log = (base / "node.log").open("wb")
    node = subprocess.Popen(
        [sys.executable, "-m", "nex", "node", "up", "--name", "guide-node", "--port", str(port), "--tags", "zone=a",
         "--state-dir", str(base / "state"), "--sandbox", "none", "--trusted-issuer", keys.issuer_public,
         "--fleet-keys", str(base / "fleet"), "--trusted-issuer", fleet.issuer_public],
        env=node_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        asyncio.run(_wait_for_reconciler(env["NATS_URL"], node))
        yield {"env": env, "ticker": ticker, "log": base / "node.log"}
    finally:
        node.terminate()  # the node stops its workloads and its nats-server
        try:
            node.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)  # its session: the nats-server and agents with it
            node.wait()
        log.close()


async def _wait_for_reconciler(url: str, node: subprocess.Popen) -> None:
    """Until the node answers PING and holds the reconciler's lease (the app example needs it)."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        assert node.poll() is None, "the node exited"
        try:
            nc = await nats.connect(url, connect_timeout=1, allow_reconnect=False, max_reconnect_attempts=0)
        except Exception:  # the node's nats-server is not listening yet
            nc = None
        if nc is not None:
            try:
                kv = await nc.jetstream().key_value("NEX_LEASES")
                if (await kv.get("reconciler")).value:
                    return
            except Exception:  # no bucket or lease yet
                pass
            finally:
                await nc.close()
        assert asyncio.get_running_loop().time() < deadline, "no reconciler within 30 s"
        await asyncio.sleep(0.2)


@pytest.mark.xdist_group("python_guide")
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_an_example_does_what_the_guide_says(name, guide_node):
    args = [str(guide_node["ticker"])] if name == "service.py" else []
    done = subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=ROOT, env=guide_node["env"],
                          capture_output=True, text=True, timeout=WALL_LIMIT_S)
    output = done.stdout
    assert done.returncode == 0, f"{name} failed:\n{output}\n{done.stderr}"
    at = 0
    for fragment in EXPECTED[name]:
        found = output.find(fragment, at)
        assert found >= 0, f"{name} did not print {fragment!r} (after what came before):\n{output}"
        at = found + len(fragment)


@pytest.mark.xdist_group("python_guide")
async def test_a_keyless_client_cannot_take_over_a_signed_app(guide_node, tmp_path):
    """An attacker on the bus with no keys applies its own version of an app someone signed, then
    deletes it: both records are stored (the bucket is writable), but the fleet refuses them,
    wait_app says so at once, and the signed version keeps running until its signer deletes it."""
    import nex
    from nex.api.apps import AppSpec
    from nex.api.errors import AppNotFound, AppNotRunning
    from nex.client import AppView, UserKeys

    url, home = guide_node["env"]["NATS_URL"], Path(guide_node["env"]["NEX_HOME"])
    app = tmp_path / "vault.yaml"
    app.write_text((EXAMPLES / "shop.yaml").read_text().replace("name: shop", "name: vault")
                   .replace("./hello.js", str(EXAMPLES / "hello.js")).replace("shop.hello", "vault.hello"))
    async with nex.connect(url, keys=UserKeys.load(home)) as owner, nex.connect(url, keys=None) as attacker:
        await owner.apply_app(app)
        signed = await owner.wait_app("vault", timeout=30)
        spec = await attacker.app_spec("vault")
        hijacked = spec.model_copy(update={"workloads": [spec.workloads[0].model_copy(update={"replicas": 0})]})
        change = await attacker.apply_app(AppSpec.model_validate(hijacked.model_dump()))
        assert change.version == signed.version + 1  # stored: the bucket does not check signatures

        with pytest.raises(AppNotRunning) as caught:
            await attacker.wait_app("vault", timeout=30)
        assert "refuses its record" in caught.value.message
        await attacker.delete_app("vault")  # a tombstone nobody signed: stored too, and refused

        async def still_running() -> AppView | None:
            try:
                view = await owner.app_status("vault")
            except AppNotFound:
                return None  # the reconciler has not yet refused the tombstone
            # Shown past a tombstone only once the fleet refused it: the last verified, signed version.
            return view if view.version == signed.version and view.running == 2 else None

        await eventually(still_running, timeout=30, interval=0.2)
        assert await owner.delete_app("vault", wait=True, timeout=30) == 0
        with pytest.raises(AppNotFound):
            await owner.app_status("vault")


def write_guide() -> None:
    """Put each example file's current text into the guide and the front pages, after its marker."""
    def current(match: re.Match[str]) -> str:
        name = match.group(1)
        fence = match.group(0).split("\n", 2)[1]
        return f"<!-- example: {name} -->\n{fence}\n{(EXAMPLES / name).read_text()}```\n"
    for page in (GUIDE, ROOT / "README.md", ROOT / "docs" / "index.md"):
        page.write_text(_EXAMPLE.sub(current, page.read_text()))


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    write_guide()
