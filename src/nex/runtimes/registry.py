"""Which runtimes this node offers. The only module that knows every runtime."""

from __future__ import annotations

from nex.api.models import WorkloadType
from nex.runtimes.base import Runtime, RuntimeContext
from nex.runtimes.javascript import JavaScriptRuntime
from nex.runtimes.native import NativeRuntime


def available_runtimes(context: RuntimeContext) -> dict[WorkloadType, Runtime]:
    return {
        WorkloadType.NATIVE: NativeRuntime(context),
        WorkloadType.JAVASCRIPT: JavaScriptRuntime(context),
    }
