"""The JavaScript agent: ``python -m nex.agent.js`` (see :mod:`nex.agent.agent`)."""

from __future__ import annotations

import sys

if __name__ == "__main__":  # the agent's process, not a module imported by the node
    from nex.agent.startup import leave_out_websockets

    leave_out_websockets()  # before anything imports nats

from nex.agent.agent import run  # noqa: E402
from nex.agent.js.quickjs_engine import QuickJsEngine  # noqa: E402
from nex.agent.worker import THREAD_STACK_BYTES  # noqa: E402


def main() -> int:
    return run(QuickJsEngine.name, QuickJsEngine, THREAD_STACK_BYTES)


if __name__ == "__main__":
    sys.exit(main())
