"""Control API under hostile input: a long fuzz run against a node process.

Sends N messages (default 100,000) with up to --in-flight outstanding, over every
control subject the node answers: raw bytes, arbitrary JSON, and deploy requests
with wrong types, huge or odd strings, nested junk, missing and extra fields,
odd trigger subjects, odd uris and out-of-range limits. None of them can run
(their artifacts do not exist or their sha256 cannot match). Every reply must be
well-formed (nex.api.replies.check_reply); LAMEDUCK goes last, as it drains the node.

    .venv/bin/python bench/fuzz_control.py [--count 100000] [--in-flight 256] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from nats.errors import NoRespondersError, TimeoutError as NatsTimeout

from nex.api import subjects
from nex.api.claims import CLAIM_HEADER
from nex.api.replies import MalformedReply, check_reply

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_static, nats_and_node, report, rss_bytes  # noqa: E402

ODD_STRINGS = ["", " ", ".", "*", ">", "a.>", "$SYS.>", "_INBOX.x", "\x00", "é" * 50, "\U0001f600" * 20,
               "x" * 5000, "../../etc/passwd", "a b", "NaN", "-1", "null", "{}", "\ud800"]
URIS = ["file:///nonexistent/x", "file:///", "file:///dev/zero", "file:///proc/self/mem", "file://relative",
        "file:///a%00b", "file:///" + "a" * 5000, "nats://", "nats://NOBUCKET/key", "nats://a.b/c", "nats://*/>",
        "http://example.com", "oci://", "", "\x00"]
FIELDS = ["name", "type", "lifecycle", "artifact", "namespace", "argv", "env", "triggers", "limits",
          "network", "description"]


class Generator:
    """Hostile messages from a seeded PRNG: fast enough for 100,000 and reproducible."""

    def __init__(self, seed: int, node_id: str, canary_id: str) -> None:
        self.rng = random.Random(seed)
        self.node_id, self.canary_id = node_id, canary_id

    def junk(self, depth: int = 0) -> Any:
        r = self.rng
        kind = r.randrange(9 if depth < 3 else 6)
        if kind == 0:
            return None
        if kind == 1:
            return r.choice([True, False])
        if kind == 2:
            return r.choice([0, -1, 1, 2**31, -(2**63), 2**70, r.randint(-1000, 1000)])
        if kind == 3:
            return r.choice([0.5, -0.0, 1e308, 1e-308, float("inf")])
        if kind in (4, 5):
            return r.choice(ODD_STRINGS + URIS)
        if kind == 6:
            return [self.junk(depth + 1) for _ in range(r.randrange(4))]
        return {r.choice(ODD_STRINGS + FIELDS): self.junk(depth + 1) for _ in range(r.randrange(4))}

    def deploy(self) -> dict[str, Any]:
        r = self.rng
        body: dict[str, Any] = {
            "name": r.choice(["fuzz", "a" * 64, "a" * 65, "x y", "é"]),
            "type": r.choice(["native", "javascript", "wasm", "oci", "cobol"]),
            "artifact": {"uri": r.choice(URIS), "sha256": r.choice(["0" * 64, "f" * 64, "F" * 64, "0" * 63, "z"])},
            "triggers": [{"subject": r.choice(ODD_STRINGS + ["fuzz.ok"])} for _ in range(r.randrange(3))],
            "limits": {r.choice(["memory_mib", "cpus", "pids", "timeout_ms", "disk"]): self.junk(2)},
            "env": {r.choice(["K", "", "A=B", "\x00"]): r.choice(["secret", "x" * 1000])},
        }
        if r.random() < 0.3:  # the security fields, with junk or well-shaped nonsense in them
            body["sealed_env"] = r.choice([base64.b64encode(b"xkv1" + r.randbytes(60)).decode(), "%%%", self.junk()])
            body["sender_xkey"] = r.choice(["X" + "A" * 55, "", self.junk()])
        if r.random() < 0.3:  # nearly valid: only the artifact is wrong, so the node goes looking for it
            body.update(name="fuzz", type="native", limits={}, env={"K": "secret"}, triggers=[])
            return body
        for _ in range(r.randrange(4)):
            action = r.randrange(3)
            key = r.choice(FIELDS)
            if action == 0:
                body.pop(key, None)
            elif action == 1:
                body[key] = self.junk()
            else:
                body[r.choice(ODD_STRINGS)] = self.junk()
        if body.get("type") == "oci" and isinstance(body.get("artifact"), dict):
            body["artifact"]["uri"] = "file:///nonexistent/image.tar"  # no registry pulls
        return body

    def body(self) -> bytes:
        r = self.rng
        kind = r.randrange(4)
        if kind == 0:
            return r.randbytes(r.randrange(300))
        if kind == 1:
            return json.dumps(self.junk()).encode()
        if kind == 2:
            return json.dumps(self.deploy()).encode()
        return r.choice([b"", b"{}", b"null", b"[", b"{" * 5000, b'{"grace_ms": -1}', b'{"grace_ms": 1e99}'])

    def claim(self) -> str | None:
        """A ``Nex-Claim`` header of junk or well-shaped nonsense, now and then."""
        r = self.rng
        if r.random() >= 0.3:
            return None
        parts = [base64.urlsafe_b64encode(r.randbytes(r.randrange(1, 90))).rstrip(b"=").decode() for _ in range(3)]
        return r.choice([".".join(parts), "[" * 1200, "a.b.c", "x" * 5000])

    def message(self) -> tuple[str, str | None, bytes]:
        r = self.rng
        verb = r.choice([subjects.PING, subjects.PING, subjects.INFO, subjects.DEPLOY, subjects.DEPLOY,
                         subjects.DEPLOY, subjects.UNDEPLOY, subjects.WPING, subjects.WPING])
        body = self.body()
        if verb in (subjects.PING, subjects.WPING) and r.random() < 0.5:
            return verb, None, body
        if verb in (subjects.UNDEPLOY, subjects.WPING):
            target = self.canary_id if r.random() < 0.8 else r.choice(["nosuch", "x" * 64])
            if verb == subjects.UNDEPLOY and target == self.canary_id and not undeploy_is_refused(body):
                body = b'{"grace_ms": "never"}'  # the canary must keep running
            return verb, target, body
        return verb, self.node_id, body


def undeploy_is_refused(body: bytes) -> bool:
    from nex.api.errors import BadRequest
    from nex.api.models import UndeployRequest, parse_request
    try:
        parse_request(UndeployRequest, body)
    except BadRequest:
        return True
    return False


class Tally:
    def __init__(self) -> None:
        self.tried = 0
        self.outcomes: Counter[str] = Counter()
        self.malformed: list[str] = []
        self.internal: list[str] = []  # 500s: replies that are well-formed but mean a bug in the node

    async def send(self, nc: Any, verb: str, target: str | None, body: bytes, namespace: str = "default",
                   claim: str | None = None) -> None:
        self.tried += 1
        subject = subjects.control(namespace, verb, target)
        headers = {CLAIM_HEADER: claim} if claim is not None else None
        try:
            msg = await nc.request(subject, body[: nc.max_payload - 4096], timeout=10, headers=headers)
        except NoRespondersError:
            self.outcomes["no responder (unknown workload)"] += 1
            return
        except NatsTimeout:
            self.outcomes["TIMEOUT"] += 1
            return
        try:
            code = check_reply(verb, msg.data, msg.headers)
        except MalformedReply as exc:
            self.malformed.append(f"{subject}: {exc}")
            return
        self.outcomes["success" if code is None else f"error {code}"] += 1
        if code == 500:
            self.internal.append(f"{subject} {body[:120]!r}: {msg.data[:200]!r}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--in-flight", type=int, default=256)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="nex-fuzz-") as tmp:
        ticker = build_static("tests/programs/ticker.c", Path(tmp))
        async with nats_and_node(artifact_root=Path(tmp)) as (_, nc, node_id, pid):
            from nex.artifacts import sha256_file
            canary_req = {"name": "canary", "type": "native",
                          "artifact": {"uri": f"file://{ticker}", "sha256": sha256_file(ticker)}}
            reply = await nc.request(subjects.control("default", subjects.DEPLOY, node_id),
                                     json.dumps(canary_req).encode(), timeout=10)
            canary_id = json.loads(reply.data)["id"]
            generator, tally = Generator(args.seed, node_id, canary_id), Tally()
            rss = {"start": rss_bytes(pid)}
            slots = asyncio.Semaphore(args.in_flight)
            tasks: set[asyncio.Task] = set()
            started = time.perf_counter()
            for i in range(args.count - 1):
                if i == args.count // 2:
                    await asyncio.gather(*tasks)
                    rss["middle"] = rss_bytes(pid)
                await slots.acquire()
                task = asyncio.create_task(tally.send(nc, *generator.message(), claim=generator.claim()))
                task.add_done_callback(lambda _: slots.release())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks)
            elapsed = time.perf_counter() - started
            rss["end"] = rss_bytes(pid)

            ping = await nc.request(subjects.control("default", subjects.PING, node_id), b"", timeout=5)
            canary = json.loads((await nc.request(subjects.control("default", subjects.WPING, canary_id), b"",
                                                  timeout=5)).data)
            await tally.send(nc, subjects.LAMEDUCK, node_id, generator.body())  # last: it drains the node
            rows: dict[str, Any] = {"messages tried": tally.tried, "seconds": round(elapsed, 1),
                                    "messages/s": round(tally.tried / elapsed)}
            timeouts = tally.outcomes["TIMEOUT"]
            rows.update(sorted((k, v) for k, v in tally.outcomes.items() if k != "TIMEOUT"))
            rows.update({
                "timeouts": timeouts,
                "internal errors (500)": len(tally.internal),
                "malformed replies": len(tally.malformed),
                "node answers PING at the end": json.loads(ping.data)["node_id"] == node_id,
                "canary state at the end": canary["workloads"][0]["state"],
                "node RSS start MiB": round(rss["start"] / 2**20, 1),
                "node RSS middle MiB": round(rss["middle"] / 2**20, 1),
                "node RSS end MiB": round(rss["end"] / 2**20, 1),
                "RSS growth, middle to end, MiB": round((rss["end"] - rss["middle"]) / 2**20, 1),
            })
            report("Control API under hostile input", rows)
            for line in tally.malformed[:20]:
                print("  MALFORMED", line[:300])
            for line in tally.internal[:20]:
                print("  INTERNAL ERROR", line[:400])
            if tally.malformed or tally.internal or timeouts:
                sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
