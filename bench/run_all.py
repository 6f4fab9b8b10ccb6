"""Run every benchmark of issue 2 in turn: `make bench`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
BENCHMARKS = ["js_roundtrip.py", "wasm_roundtrip.py", "deploy_latency.py", "node_memory.py", "js_memory.py", "sandbox_start.py", "oci_start.py"]

if __name__ == "__main__":
    failed = 0
    for script in BENCHMARKS:
        print(f"\n=== {script}", flush=True)
        failed += subprocess.call([sys.executable, str(HERE / script)], cwd=HERE.parent) != 0
    sys.exit(1 if failed else 0)
