# A Python function that tries what a tenant's code might: read the host's files, its
# environment, the network, a process of its own. The tests deploy it and check that each
# attempt fails, and that what it was given (env, the host services) is there.
import json
import os
import socket
import subprocess
import urllib.request

import nex

calls = 0


def attempt(action):
    try:
        return {"ok": repr(action())[:200]}
    except BaseException as error:  # every failure is the answer
        return {"error": type(error).__name__, "message": str(error)[:300]}


def handle(subject, payload):
    global calls
    calls += 1
    what, _, arg = payload.decode().partition(" ")
    if what == "echo":
        return payload
    if what == "calls":
        return calls
    if what == "return":
        return {"bytes": b"\x00\x01", "text": "h\u00e9", "json": [1, {"a": None}], "none": None}[arg]
    if what == "raise":
        raise ValueError(f"too big: {arg}")
    if what == "exit":
        raise SystemExit(3)
    if what == "spin":
        while True:
            pass
    if what == "hog":
        hoard = []
        while True:
            hoard.append(bytearray(1 << 20))
    if what == "files":
        paths = arg.split(",")
        found = {path: attempt(lambda path=path: open(path, "rb").read(64)) for path in paths}
        found["listdir /"] = attempt(lambda: os.listdir("/"))
        found["write /tmp"] = attempt(lambda: open("/tmp/nex-probe", "w").write("x"))
        return found
    if what == "env":
        return json.dumps(dict(os.environ))
    if what == "network":
        host, port = arg.split(":")
        return {
            "socket": attempt(lambda: socket.create_connection((host, int(port)), timeout=1)),
            "raw socket": attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).connect((host, int(port)))),
            "urllib": attempt(lambda: urllib.request.urlopen(f"http://{host}:{port}/", timeout=1).read()),
        }
    if what == "process":
        return {
            "subprocess": attempt(lambda: subprocess.run(["/bin/true"])),
            "system": attempt(lambda: os.system("true")),
            "fork": attempt(lambda: os.fork()),
        }
    if what == "host":
        store = nex.kv("probe")
        store.put("seen", {"subject": subject})
        return {"kv": store.get("seen", type="json"), "keys": store.keys()}
    if what == "services":
        images = nex.objects("images")
        images.put("a.txt", "alpha")
        listed = images.list()
        got = images.get("a.txt")
        images.delete("a.txt")
        reply = nex.request("nex.default.oracle", {"q": arg}, timeout=2000, headers={"x-probe": "1"})
        try:
            nex.http.get("http://127.0.0.1:1/")
            http = "sent"
        except nex.NexError as error:
            http = error.code
        return {"objects": [listed, got, images.get("a.txt")], "reply": [reply.json(), reply.headers.get("x-oracle")],
                "http": http}
    if what == "denied":
        try:
            nex.publish("$NEX.SVC.default.control.PING", b"")
        except nex.NexError as error:
            return {"code": error.code, "message": str(error)}
        return "published"
    if what == "stdlib":  # imported here, in the function, not at the top: built in all the same
        import datetime
        import decimal
        import hashlib
        import re
        import zlib

        return [str(decimal.Decimal("1.1") * 3), hashlib.sha256(b"x").hexdigest()[:8],
                re.sub(r"\d", "#", "a1b2"), len(zlib.compress(b"x" * 100)) < 100,
                datetime.date(2026, 12, 5).isoformat()]
    if what == "build":
        return AT_BUILD
    if what == "open":  # not caught: the error reply says why
        return open(arg, "rb").read()
    return f"unknown probe {what!r}"


# The top level runs when componentize-py builds the module: what could it see of the builder's machine?
AT_BUILD = {
    "listdir /": attempt(lambda: os.listdir("/")),
    "/etc/passwd": attempt(lambda: open("/etc/passwd", "rb").read(64)),
    "env": sorted(os.environ),
}
