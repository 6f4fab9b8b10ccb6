"""The JavaScript agent: ``python -m nex.agent.javascript`` (see :mod:`nex.agent.agent`)."""

from __future__ import annotations

import sys

from nex.agent.agent import run
from nex.agent.sandbox import QuickJsEngine
from nex.agent.worker import THREAD_STACK_BYTES


def main() -> int:
    return run(QuickJsEngine, THREAD_STACK_BYTES)


if __name__ == "__main__":
    sys.exit(main())
