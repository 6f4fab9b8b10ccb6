"""Which runtimes this node offers. The only module that knows every runtime."""

from __future__ import annotations

from nex.api.models import WorkloadType
from nex.runtimes.base import Runtime, RuntimeContext
from nex.runtimes.javascript import JavaScriptRuntime
from nex.runtimes.native import NativeRuntime
from nex.runtimes.native_sandbox import SandboxedNativeRuntime
from nex.runtimes.oci import OciRuntime
from nex.runtimes.wasm import WasmRuntime


def available_runtimes(context: RuntimeContext) -> dict[WorkloadType, Runtime]:
    return {
        # Sandboxed through the node's OCI runtime when it has one (see nex.sandbox).
        WorkloadType.NATIVE: (SandboxedNativeRuntime(context, context.oci) if context.oci is not None
                              else NativeRuntime(context)),
        WorkloadType.JAVASCRIPT: JavaScriptRuntime(context),
        WorkloadType.WASM: WasmRuntime(context),
        # Containers need the node's OCI runtime: none with --sandbox none or when none works.
        **({WorkloadType.OCI: OciRuntime(context, context.oci)} if context.oci is not None else {}),
    }
