"""Which runtimes this node offers. The only module that knows every runtime."""

from __future__ import annotations

import logging

from nex.api.models import WorkloadType
from nex.runtimes.base import Runtime, RuntimeContext
from nex.runtimes.native import NativeRuntime

log = logging.getLogger(__name__)


def available_runtimes(context: RuntimeContext) -> dict[WorkloadType, Runtime]:
    runtimes: dict[WorkloadType, Runtime] = {WorkloadType.NATIVE: NativeRuntime(context)}
    try:
        from nex.runtimes.javascript import JavaScriptRuntime
    except ImportError as exc:
        log.warning("javascript runtime unavailable: %s", exc)
    else:
        runtimes[WorkloadType.JAVASCRIPT] = JavaScriptRuntime(context)
    return runtimes
