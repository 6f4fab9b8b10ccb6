"""Signed deploys, sealed env and forbidden triggers on a real node and a real nats-server."""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from pathlib import Path

import nkeys
import pytest

from nex.api import claims, subjects, tokens
from nex.api.errors import Forbidden
from nex.api.models import Artifact, DeployRequest, Trigger
from nex.client import NexClient
from nex.security.keystore import ISSUER_FILE, USER_XKEY_FILE, UserKeys
from nex.security.xkeys import XKey, seal_env

from helpers import collect, control, eventually, file_artifact, nex, running_node

SECRET = "s3cr3t-Value-9f1c2e"


def account() -> nkeys.KeyPair:
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT))


def user_keys(issuer: nkeys.KeyPair | None = None) -> UserKeys:
    return UserKeys(issuer or account(), XKey.create())


@pytest.fixture
def owner() -> UserKeys:
    return user_keys()


@pytest.fixture
def admin() -> UserKeys:
    return user_keys()


@pytest.fixture
def colleague() -> UserKeys:
    """Trusted to deploy, not to stop the owner's workloads."""
    return user_keys()


@pytest.fixture
async def secure_node(nats_server, tmp_path, owner, colleague, admin):
    async with running_node(nats_server, tmp_path / "secure", "secure",
                            trusted_issuers=[owner.issuer_public, colleague.issuer_public],
                            admin_issuers=[admin.issuer_public],
                            deny_triggers=["payroll.>"]) as node:
        yield node


def echo_env_script(tmp_path: Path) -> Path:
    script = tmp_path / "echo_env.js"
    script.write_text("(subject, payload) => `secret is ${env.SECRET}`\n")
    return script


# -- dev mode ------------------------------------------------------------------------------

async def test_dev_mode_runs_unsigned_and_says_so(node, nc, programs, caplog):
    assert any("DEV MODE" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.get_records("setup"))
    code, ping = await control(nc, "PING", node.node_id)
    assert code is None and ping["dev_mode"] is True and ping["xkey"].startswith("X")
    code, info = await control(nc, "INFO", node.node_id)
    assert info["xkey"] == ping["xkey"] and info["dev_mode"] is True
    code, workload = await control(nc, "DEPLOY", node.node_id, {
        "name": "unsigned", "type": "native", "artifact": file_artifact(programs["ticker"])})
    assert code is None and workload["state"] == "running" and "issuer" not in workload
    code, _ = await control(nc, "UNDEPLOY", workload["id"])
    assert code is None


async def test_dev_mode_still_verifies_a_signed_request(node, nc, programs):
    request = {"name": "signed", "type": "native", "artifact": file_artifact(programs["ticker"])}
    signed_for = json.dumps({**request, "name": "someone-else"}).encode()
    token = claims.sign_request(account(), subjects.control("default", "DEPLOY", node.node_id), signed_for, time.time())
    code, reply = await control(nc, "DEPLOY", node.node_id, request, headers={claims.CLAIM_HEADER: token})
    assert code == 403 and "body differs" in reply["error"]["message"]


async def test_dev_mode_workload_signed_by_one_issuer_is_not_stopped_unsigned(node, nc, programs):
    keys = user_keys()
    client = NexClient(nc, keys=keys)
    summary = await client.deploy(node.node_id, DeployRequest(
        name="mine", type="native", artifact=file_artifact(programs["ticker"])))
    assert summary.issuer == keys.issuer_public
    code, reply = await control(nc, "UNDEPLOY", summary.id)
    assert code == 403 and "only the issuer" in reply["error"]["message"]
    assert (await client.undeploy(summary.id)).state == "stopped"


# -- trusted issuers -----------------------------------------------------------------------

async def test_signed_deploy_runs_and_only_its_issuer_or_an_admin_stops_it(
        secure_node, nc, owner, colleague, admin, programs, caplog):
    code, ping = await control(nc, "PING", secure_node.node_id)
    assert ping["dev_mode"] is False
    assert not any("DEV MODE" in r.getMessage() for r in caplog.get_records("setup"))
    request = DeployRequest(name="ticker", type="native", artifact=file_artifact(programs["ticker"]))
    summary = await NexClient(nc, keys=owner).deploy(secure_node.node_id, request)
    assert summary.state == "running" and summary.issuer == owner.issuer_public

    with pytest.raises(Forbidden) as refused:
        await NexClient(nc, keys=colleague).undeploy(summary.id)
    assert refused.value.code == 403 and "only the issuer" in refused.value.message
    code, reply = await control(nc, "UNDEPLOY", summary.id)
    assert code == 403 and "needs a claim" in reply["error"]["message"]
    code, ping = await control(nc, "WPING", summary.id)
    assert ping["workloads"][0]["state"] == "running"

    stopped = await NexClient(nc, keys=admin).undeploy(summary.id)
    assert stopped.state == "stopped"


async def test_the_owner_stops_its_own_workload(secure_node, nc, owner, programs):
    client = NexClient(nc, keys=owner)
    summary = await client.deploy(secure_node.node_id, DeployRequest(
        name="own", type="native", artifact=file_artifact(programs["ticker"])))
    assert (await client.undeploy(summary.id)).state == "stopped"


async def test_unsigned_and_untrusted_requests_are_403(secure_node, nc, programs):
    request = {"name": "intruder", "type": "native", "artifact": file_artifact(programs["ticker"])}
    code, reply = await control(nc, "DEPLOY", secure_node.node_id, request)
    assert code == 403 and "needs a claim" in reply["error"]["message"]
    stranger = account()
    code, reply = await control(nc, "DEPLOY", secure_node.node_id, request, signer=stranger)
    assert code == 403 and "not trusted" in reply["error"]["message"]
    _, info = await control(nc, "INFO", secure_node.node_id)
    assert info["workloads"] == []


@pytest.mark.parametrize("change", [
    {"name": "renamed"}, {"argv": ["--evil"]}, {"network": "host"}, {"health": {"tcp": 9}},
    {"limits": {"memory_mib": 4096}}, {"lifecycle": "job"},
])
async def test_a_request_that_differs_from_its_claim_is_refused(secure_node, nc, owner, programs, change):
    """The claim covers every byte of the body: any field changed in flight is refused."""
    request = {"name": "ticker", "type": "native", "artifact": file_artifact(programs["ticker"])}
    subject = subjects.control("default", "DEPLOY", secure_node.node_id)
    token = claims.sign_request(owner.issuer, subject, json.dumps(request).encode(), time.time())
    code, reply = await control(nc, "DEPLOY", secure_node.node_id, {**request, **change},
                                headers={claims.CLAIM_HEADER: token})
    assert code == 403 and "body differs" in reply["error"]["message"]
    _, info = await control(nc, "INFO", secure_node.node_id)
    assert info["workloads"] == []


async def test_a_tampered_claim_is_refused(secure_node, nc, owner, programs):
    request = {"name": "ticker", "type": "native", "artifact": file_artifact(programs["ticker"])}
    body = json.dumps(request).encode()
    token = claims.sign_request(owner.issuer, subjects.control("default", "DEPLOY", "elsewhere"), body, time.time())
    header, payload, signature = token.split(".")
    decoded = json.loads(tokens.b64url_decode(payload))
    decoded["sub"] = subjects.control("default", "DEPLOY", secure_node.node_id)
    forged = ".".join([header, tokens.b64url_encode(json.dumps(decoded).encode()), signature])
    code, reply = await control(nc, "DEPLOY", secure_node.node_id, body, headers={claims.CLAIM_HEADER: forged})
    assert code == 403 and "signature" in reply["error"]["message"]
    code, reply = await control(nc, "DEPLOY", secure_node.node_id, body, headers={claims.CLAIM_HEADER: "not.a-claim"})
    assert code == 400 and "malformed claim" in reply["error"]["message"]
    code, reply = await control(nc, "DEPLOY", secure_node.node_id, {**request, "claim": token})
    assert code == 400 and "Nex-Claim header" in reply["error"]["message"]


async def test_a_replayed_claim_is_refused(secure_node, nc, owner, programs):
    body = json.dumps({"name": "job", "type": "native", "lifecycle": "job",
                       "artifact": file_artifact(programs["job"])}).encode()
    token = claims.sign_request(owner.issuer, subjects.control("default", "DEPLOY", secure_node.node_id),
                                body, time.time())
    code, _ = await control(nc, "DEPLOY", secure_node.node_id, body, headers={claims.CLAIM_HEADER: token})
    assert code is None
    code, reply = await control(nc, "DEPLOY", secure_node.node_id, body, headers={claims.CLAIM_HEADER: token})
    assert code == 403 and "already used" in reply["error"]["message"]


async def test_expired_and_future_claims_are_refused(secure_node, nc, owner, programs):
    request = {"name": "ticker", "type": "native", "artifact": file_artifact(programs["ticker"])}
    code, reply = await control(nc, "DEPLOY", secure_node.node_id, request, signer=owner.issuer,
                                now=time.time() - 3600)
    assert code == 403 and "expired" in reply["error"]["message"]
    code, reply = await control(nc, "DEPLOY", secure_node.node_id, request, signer=owner.issuer,
                                now=time.time() + 3600)
    assert code == 403 and "future" in reply["error"]["message"]


async def test_bytes_that_differ_from_the_signed_hash_do_not_run(secure_node, nc, owner, programs, tmp_path):
    swapped = tmp_path / "swapped"
    swapped.write_bytes(programs["job"].read_bytes())
    request = {"name": "ticker", "type": "native",
               "artifact": {"uri": f"file://{swapped}", "sha256": file_artifact(programs["ticker"])["sha256"]}}
    code, reply = await control(nc, "DEPLOY", secure_node.node_id, request, signer=owner.issuer)
    assert code == 400 and "sha256" in reply["error"]["message"]
    _, info = await control(nc, "INFO", secure_node.node_id)
    assert info["workloads"] == []


async def test_plain_env_is_refused_when_issuers_are_trusted(secure_node, nc, owner, programs):
    request = {"name": "ticker", "type": "native", "artifact": file_artifact(programs["ticker"]),
               "env": {"SECRET": SECRET}}
    code, reply = await control(nc, "DEPLOY", secure_node.node_id, request, signer=owner.issuer)
    assert code == 400 and "seal it" in reply["error"]["message"]
    assert SECRET not in json.dumps(reply)


# -- sealed env -------------------------------------------------------------------------------

async def test_sealed_env_reaches_the_workload_and_nothing_else(secure_node, nc, owner, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    wire = await collect(nc, ">")
    await nc.flush()
    client = NexClient(nc, keys=owner)
    summary = await client.deploy(secure_node.node_id, DeployRequest(
        name="echo-env", type="javascript", artifact=file_artifact(echo_env_script(tmp_path)),
        triggers=[Trigger(subject="sec.echo")], env={"SECRET": SECRET}))
    assert summary.env_keys == ["SECRET"]
    for verb, target in (("INFO", secure_node.node_id), ("WPING", summary.id), ("PING", None)):
        code, reply = await control(nc, verb, target)
        assert code is None and SECRET not in json.dumps(reply)
    await nc.flush()
    seen = list(wire)
    assert seen and not any(SECRET.encode() in m.data for m in seen), "the secret travelled in the clear"
    assert any(b"sealed_env" in m.data for m in seen)

    reply = await nc.request("sec.echo", b"", timeout=5)
    assert reply.data == f"secret is {SECRET}".encode()

    js = nc.jetstream()
    for stream in ("NEX_AUDIT", "NEX_EVENTS", "NEX_LOGS"):
        info = await js.stream_info(stream)
        if stream == "NEX_AUDIT":  # the deploys' and the stop's events: the secret is in none of them
            assert info.state.messages > 0
        for seq in range(info.state.first_seq, info.state.last_seq + 1) if info.state.messages else ():
            msg = await js.get_msg(stream, seq)
            assert SECRET.encode() not in (msg.data or b""), stream
    assert SECRET not in caplog.text
    for path in secure_node.state_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


async def test_env_sealed_to_another_node_fails_clearly(secure_node, nc, owner, programs):
    sealed = seal_env({"SECRET": SECRET}, owner.xkey, XKey.create().public)
    request = {"name": "ticker", "type": "native", "artifact": file_artifact(programs["ticker"]),
               "sealed_env": sealed, "sender_xkey": owner.xkey.public}
    code, reply = await control(nc, "DEPLOY", secure_node.node_id, request, signer=owner.issuer)
    assert code == 400 and "does not open with this node's xkey" in reply["error"]["message"]


# -- triggers -----------------------------------------------------------------------------------

@pytest.mark.parametrize("subject", ["$NEX.SVC.default.control.PING", "*.API.>", ">", "_INBOX.x"])
async def test_reserved_trigger_subjects_are_400(node, nc, tmp_path, subject):
    code, reply = await control(nc, "DEPLOY", node.node_id, {
        "name": "hijack", "type": "javascript", "artifact": file_artifact(echo_env_script(tmp_path)),
        "triggers": [{"subject": subject}]})
    assert code == 400 and "overlaps" in reply["error"]["message"]


@pytest.mark.parametrize("subject", ["payroll.run", "payroll.*", "payroll.>"])
async def test_the_node_deny_list_is_400(secure_node, nc, owner, tmp_path, subject):
    request = {"name": "payroll", "type": "javascript", "artifact": file_artifact(echo_env_script(tmp_path)),
               "triggers": [{"subject": subject}]}
    code, reply = await control(nc, "DEPLOY", secure_node.node_id, request, signer=owner.issuer)
    assert code == 400 and "'payroll.>'" in reply["error"]["message"]


# -- the CLI ------------------------------------------------------------------------------------


async def test_devrun_makes_keys_on_first_use_and_deploys_signed_and_sealed(
        nats_server, nc, nex_home, tmp_path):
    script = echo_env_script(tmp_path)
    assert not nex_home.exists()
    async with running_node(nats_server, tmp_path / "dev", "dev") as dev:
        code, out, err = await nex("--server", nats_server.url, "devrun", str(script), "--trigger", "cli.dev",
                                   "--node", dev.node_id, "--json")
        assert code == 0, err
    keys = UserKeys.load(nex_home)
    assert keys is not None and json.loads(out)["issuer"] == keys.issuer_public
    for name in (ISSUER_FILE, USER_XKEY_FILE):
        assert stat.S_IMODE((nex_home / name).stat().st_mode) == 0o600

    async with running_node(nats_server, tmp_path / "trusting", "trusting",
                            trusted_issuers=[keys.issuer_public]) as trusting:
        code, out, err = await nex("--server", nats_server.url, "devrun", str(script), "--trigger", "cli.sec",
                                   "--env", f"SECRET={SECRET}", "--node", trusting.node_id, "--json")
        assert code == 0, err
        workload = json.loads(out)
        assert workload["issuer"] == keys.issuer_public and workload["env_keys"] == ["SECRET"]
        reply = await nc.request("cli.sec", b"", timeout=5)
        assert reply.data == f"secret is {SECRET}".encode()
        code, _, err = await nex("--server", nats_server.url, "workload", "stop", workload["id"])
        assert code == 0, err
        await eventually(lambda: not trusting.supervisor.table.active())
    assert UserKeys.load(nex_home).issuer_public == keys.issuer_public  # kept, not made again
    code, out, err = await nex("keys", "--json")
    assert code == 0, err
    assert json.loads(out) == {"issuer": keys.issuer_public, "xkey": keys.xkey.public, "home": str(nex_home)}


async def test_client_without_keys_is_refused_by_a_trusting_node(secure_node, nc, programs):
    with pytest.raises(Forbidden):
        await NexClient(nc).deploy(secure_node.node_id, DeployRequest(
            name="anon", type="native", artifact=Artifact(**file_artifact(programs["ticker"]))))
