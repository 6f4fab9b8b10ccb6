"""Run every benchmark in turn: `make bench`; ``--quick`` leaves out the fleet benches (issue 5),
which start a 3-server cluster and take about 4 minutes together, and the 1,000-function ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
BENCHMARKS = ["js_roundtrip.py", "wasm_roundtrip.py", "deploy_latency.py", "node_memory.py", "js_memory.py", "sandbox_start.py", "oci_start.py",
              "metrics_overhead.py", "async_throughput.py", "host_kv.py", "cold_start.py", "wasm_pool.py",
              "component_roundtrip.py", "thread_handover.py"]
# The isolation tiers side by side (issue 18): runc and runsc, about 1.5 minutes.
BENCHMARKS.append("gvisor_tier.py")
# The fleet benches, with their arguments; each takes 1 to 1.5 minutes (fleet_scale.py, 20 node
# processes, about 1.5; registry_scale.py 10 s).
FLEET_BENCHMARKS = [["placement.py"], ["placement.py", "600", "32", "--cluster"], ["convergence.py", "--rounds", "3"],
                    ["reconciler_cpu.py", "--window", "20"], ["fleet_scale.py"], ["registry_scale.py"]]
# 1,000 functions on one node (issue 6), JavaScript then Wasm: about a minute each; left out by --quick too.
SCALE_BENCHMARKS = [["function_scale.py"], ["function_scale.py", "--wasm"]]

if __name__ == "__main__":
    runs = [[script] for script in BENCHMARKS] + ([] if "--quick" in sys.argv else FLEET_BENCHMARKS + SCALE_BENCHMARKS)
    failed = 0
    for script, *args in runs:
        print(f"\n=== {' '.join([script, *args])}", flush=True)
        failed += subprocess.call([sys.executable, str(HERE / script), *args], cwd=HERE.parent) != 0
    sys.exit(1 if failed else 0)
