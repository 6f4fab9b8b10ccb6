"""Where a function call's time goes in the agent: py-spy samples of the agent during sequential calls.

    .venv/bin/pip install py-spy   # a measuring tool, not a dependency of Nex
    .venv/bin/python bench/profile_call.py [--wasm] [--seconds 10] [--gil] [--echo] [--native]

A `nex node up` (embedded nats-server, JetStream) runs a trivial JavaScript function
(``--wasm``: tests/wasm/fn.c); this process calls it sequentially while py-spy samples
the agent's threads while they run (waiting is not sampled). Prints the share of
samples per thread and the frames with the most samples, inclusive and own
(leaf), of the loop thread and of the function's thread. docs/performance.md reads
it as microseconds per call: share of samples x the call's period.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import build_wasm
from roundtrip import ECHO_SUBJECT, deploy_function, echo_process, echo_ready, node_process, processes_of

from nex.connection import ConnectOptions, connect

JS_SOURCE = "(subject, payload) => 'hello ' + subject"


def summarize(raw: Path, top: int) -> None:
    threads: collections.Counter[str] = collections.Counter()
    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    own: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = stack.split(";")
        kind = "function" if "_bootstrap" in stack else "loop"
        threads[kind] += count
        total += count
        names = [f.split(" (")[0].strip() + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] for f in frames[1:]]
        for name in set(names):
            inclusive[kind][name] += count
        if names:
            own[kind][names[-1]] += count
    print(f"{total} samples")
    for kind, count in threads.most_common():
        print(f"\n{kind} thread(s): {count / total:.0%} of {total} samples")
        print("  inclusive:")
        for name, n in inclusive[kind].most_common(top):
            print(f"    {n / count:6.1%}  {name}")
        print("  own (leaf):")
        for name, n in own[kind].most_common(top):
            print(f"    {n / count:6.1%}  {name}")


async def main(wasm: bool, seconds: float, native: bool, top: int, gil: bool, echo: bool, parallel: int) -> None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise SystemExit("py-spy is missing: .venv/bin/pip install py-spy")
    with tempfile.TemporaryDirectory(prefix="nex-profile-") as tmp:
        if wasm:
            path, kind = build_wasm("tests/wasm/fn.c", Path(tmp)), "wasm"
        else:
            path, kind = Path(tmp) / "hello.js", "javascript"
            path.write_text(JS_SOURCE)
        async with node_process(Path(tmp) / "node", Path(tmp)) as node:
            nc = await connect(ConnectOptions(servers=[node.url]))
            echoing = echo_process(node.url)
            echo_pid = await echoing.__aenter__()
            try:
                await echo_ready(nc)
                await deploy_function(nc, node.node_id, kind, path, "bench.profiled", "profiled")
                subject = ECHO_SUBJECT if echo else "bench.profiled"
                for _ in range(500):
                    await nc.request(subject, b"ping", timeout=5)
                agent = echo_pid if echo else processes_of(node.pid)[f"{'wasm' if wasm else 'js'} agent"]
                raw = Path(tmp) / "profile.txt"
                recorder = subprocess.Popen([spy, "record", "--pid", str(agent), "--duration", str(int(seconds)),
                                             "--rate", "500", "--threads", "--format", "raw",
                                             "--output", str(raw), *(["--native"] if native else []),
                                             *(["--gil"] if gil else [])],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                calls, started = 0, time.perf_counter()

                async def caller() -> None:
                    nonlocal calls
                    while recorder.poll() is None:
                        await nc.request(subject, b"ping", timeout=5)
                        calls += 1
                await asyncio.gather(*(caller() for _ in range(parallel)))
                elapsed = time.perf_counter() - started
            finally:
                await echoing.__aexit__(None, None, None)
                await nc.close()
        print(f"{calls} calls ({parallel} in flight) in {elapsed:.1f} s: {elapsed / calls * 1e6:.0f} us a call;"
              f" a sample is {1e6 / 500 / (calls / elapsed):.1f} us of a call")
        summarize(raw, top)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wasm", action="store_true")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--native", action="store_true", help="C frames too (py-spy --native)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--gil", action="store_true", help="only samples that hold the GIL (py-spy --gil): "
                        "the Python work, without waits")
    parser.add_argument("--echo", action="store_true", help="profile the bare nats-py echo instead, for comparison")
    parser.add_argument("--parallel", type=int, default=1, help="requests in flight (1: sequential)")
    args = parser.parse_args()
    asyncio.run(main(args.wasm, args.seconds, args.native, args.top, args.gil, args.echo, args.parallel))
