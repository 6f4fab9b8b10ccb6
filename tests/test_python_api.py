"""The front door of the Python API: ``nex.connect``, the names ``nex.client`` exports, and the
rule that every failure is a typed :class:`NexError`, before any node is involved."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import nex
import nex.client
from nex.api.errors import BadRequest, NatsUnavailable, NexError
from nex.natsserver import free_port
from nex.security.keystore import UserKeys

CLIENT = Path(nex.client.__file__).parent


def test_all_names_exactly_what_the_client_exports():
    namespace: dict[str, object] = {}
    exec("from nex.client import *", namespace)  # noqa: S102 (the star import a user writes)
    exported = {name for name in namespace if not name.startswith("__")}
    assert exported == set(nex.client.__all__)
    assert len(nex.client.__all__) == len(set(nex.client.__all__)), "a name listed twice"


def test_every_public_class_of_the_client_modules_is_exported_or_a_part():
    """A class a user receives from the client (a view, a receipt, an error) can be imported from
    nex.client; the parts NexClient is made of are reached through it."""
    parts = {cls.__name__ for cls in nex.client.NexClient.__mro__}
    internal = {"ReplyInbox", "AppStore", "ParsedApp", "AppFile", "FileWorkload", "ArtifactSource", "RegistryRead"}
    missing = []
    for path in sorted(CLIENT.glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                if node.name not in nex.client.__all__ and node.name not in parts | internal:
                    missing.append(f"{path.name}: {node.name}")
    assert missing == []


def test_nex_connect_is_the_clients_and_importing_nex_loads_no_client():
    assert nex.connect is nex.client.connect
    assert nex.NexClient is nex.client.NexClient
    assert nex.NexError is NexError
    # The agents import nex too: the client (nats-py's JetStream, pydantic models) stays out of them.
    code = "import sys, nex, nex.api.models; print('nex.client' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_every_client_method_says_what_it_raises_or_returns():
    """Docstrings worth reading on the methods a user calls most (the linter checks they exist)."""
    for name in ("devrun", "upload_artifact", "apply_app", "wait_app", "delete_app", "undeploy", "lameduck",
                 "workload_info"):
        doc = inspect.getdoc(getattr(nex.client.NexClient, name)) or ""
        assert "Raise" in doc, name
    assert "Raises:" in (inspect.getdoc(nex.client.connect) or "")


@pytest.mark.parametrize("options, problem", [
    ({"user": "me"}, "--user and --password go together"),
    ({"tls_cert": "/etc/hostname"}, "--tls-cert and --tls-key go together"),
    ({"creds": "/nonexistent/user.creds"}, "creds: no file '/nonexistent/user.creds'"),
    ({"nkey": "/nonexistent/seed.nk"}, "nkey: no file"),
    ({"servers": "http://127.0.0.1:4222"}, "nats://127.0.0.1:4222"),
    ({"namespace": "a.b"}, "invalid namespace 'a.b'"),
    ({"timeout": 0}, "timeout 0 is not above zero"),
])
async def test_options_that_cannot_work_are_a_bad_request(options, problem):
    with pytest.raises(BadRequest) as caught:
        async with nex.connect(**options):
            pass
    assert problem in caught.value.message


async def test_no_server_there_is_nats_unavailable_with_a_hint():
    url = f"nats://127.0.0.1:{free_port()}"
    with pytest.raises(NatsUnavailable) as caught:
        async with nex.connect(url, timeout=1):
            pass
    assert caught.value.servers == url
    assert "nex node up" in (caught.value.hint or "")


async def test_connect_takes_the_environment_as_the_cli_does(nats_server, monkeypatch, nex_home):
    monkeypatch.setenv("NATS_URL", nats_server.url)
    monkeypatch.setenv("NEX_NAMESPACE", "shop")
    async with nex.connect() as client:
        assert client.namespace == "shop"
        assert client.keys is None  # no keys in $NEX_HOME yet: nothing to sign with
        assert client.nc.is_connected
    assert client.nc.is_closed  # closed on leaving the block

    made = UserKeys.load(nex_home, create=True)
    async with nex.connect([nats_server.url], namespace="default") as client:
        assert client.namespace == "default"
        assert client.keys is not None and client.keys.issuer_public == made.issuer_public
    async with nex.connect(nats_server.url, keys=None) as client:
        assert client.keys is None


async def test_apps_from_python_without_a_fleet(nats_server, nex_home):
    """An AppSpec applied from Python is stored as nex apply stores it (signed, versioned, in the
    client's namespace when it names none); with no reconciler running, wait_app says what is
    missing instead of hanging, and the app can be deleted with a signed tombstone."""
    from nex.api.apps import AppSpec, AppWorkload
    from nex.api.errors import AppNotFound, AppNotRunning
    from nex.api.models import Artifact, Trigger

    keys = UserKeys.load(nex_home, create=True)
    hello = AppWorkload(name="hello", type="javascript", artifact=Artifact(uri="nats://NEX_ARTIFACTS_shop/x",
                        sha256="ab" * 32), triggers=[Trigger(subject="shop.hello")], replicas=2)
    async with nex.connect(nats_server.url, namespace="shop") as client:
        dry = await client.apply_app(AppSpec(name="web", workloads=[hello]), dry_run=True)
        assert (dry.action, dry.dry_run, dry.namespace) == ("created", True, "shop")
        with pytest.raises(AppNotFound):
            await client.app_status("web")  # a dry run stores nothing

        change = await client.apply_app(AppSpec(name="web", workloads=[hello]))
        assert (change.action, change.version, change.namespace) == ("created", 1, "shop")
        again = await client.apply_app(AppSpec(name="web", workloads=[hello]))
        assert (again.action, again.version) == ("unchanged", 1)

        view = await client.app_status("web")
        assert (view.namespace, view.desired, view.running, view.applied_by) == ("shop", 2, 0, keys.issuer_public)
        assert [app.name for app in await client.apps()] == ["web"]
        with pytest.raises(AppNotRunning) as caught:
            await client.wait_app("web", timeout=0.5)
        assert "hello 0/2 ready" in caught.value.message
        assert "the reconciler has not acted on version 1 yet" in caught.value.message

        assert await client.delete_app("web") == 0
        with pytest.raises(AppNotFound):
            await client.app_status("web")
        assert await client.apps() == []


async def test_an_app_spec_that_leaves_its_namespace_is_refused_before_it_is_stored(nats_server):
    from nex.api.apps import AppSpec, AppWorkload
    from nex.api.errors import AppNotFound
    from nex.api.models import Artifact, HealthCheck

    probe = AppWorkload(name="svc", type="native", artifact=Artifact(uri="nats://NEX_ARTIFACTS_shop/y",
                        sha256="cd" * 32), health=HealthCheck(nats="other.health"))
    async with nex.connect(nats_server.url, namespace="shop", keys=None) as client:
        with pytest.raises(BadRequest) as caught:
            await client.apply_app(AppSpec(name="svc", workloads=[probe]))
        assert "workloads[0].health.nats" in caught.value.message
        with pytest.raises(AppNotFound):
            await client.app_status("svc")


async def test_a_client_whose_connection_closed_fails_with_a_nex_error(nats_server):
    """What no part expects (here, its connection closed under it) still arrives as a NexError."""
    from nex.api.errors import Unavailable

    async with nex.connect(nats_server.url, keys=None) as client:
        await client.nc.close()
        with pytest.raises(Unavailable) as caught:
            await client.invoke("demo.hello", b"")
        assert "connection to NATS" in caught.value.message
        with pytest.raises(NexError):
            [line async for line in client.logs("w1")]
        with pytest.raises(NexError):
            await client.apps()
