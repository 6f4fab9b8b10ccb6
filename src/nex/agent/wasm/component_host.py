"""The host services of a component: the interfaces of the WIT package ``nex:host@0.1.0``
(src/nex/wit/deps/host/host.wit), linked to the function's :class:`FunctionHost`.

The same calls, rules, limits and errors as JavaScript's ``nex`` global and the ``nex``
imports of a command module, through the same object: a failed call is the ``err`` of its
``result``, a ``host-error`` whose ``kind`` is the :class:`HostError`'s (``not_found`` is
``not-found``). A host function never traps the guest: a bug of the agent is a ``failed``
error. A component built without host services (an agent without NATS) links, and every
call is ``unavailable``.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from wasmtime import component

from nex.agent.hostservices import FAILED, INVALID, UNAVAILABLE, FunctionHost, HostError, Reply
from nex.agent.wasm import component_values

log = logging.getLogger(__name__)

PACKAGE = "nex:host"
VERSION = "0.1.0"
INTERFACES = ("types", "kv", "objects", "messaging", "http")


def instance_name(interface: str) -> str:
    return f"{PACKAGE}/{interface}@{VERSION}"


def _record(**fields: Any) -> component.Record:
    record = component.Record()
    for name, value in fields.items():
        setattr(record, name, value)
    return record


def _host_error(kind: str, message: str) -> component.Record:
    return _record(kind=kind.replace("_", "-"), message=message)


def _headers(pairs: list[tuple[str, str]]) -> dict[str, str] | None:
    """WIT headers (a name may repeat) as the dict of FunctionHost: repeated values joined by ", "."""
    if not pairs:
        return None
    headers: dict[str, str] = {}
    for name, value in pairs:
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def _seconds(timeout_ms: int | None) -> float | None:
    return None if timeout_ms is None else timeout_ms / 1000


def _message(reply: Reply) -> component.Record:
    return _record(data=reply.data, headers=list(reply.headers.items()))


def _response(reply: Reply) -> component.Record:
    return _record(status=reply.status, headers=list(reply.headers.items()), body=reply.data)


class ComponentHost:
    """Defines the ``nex:host`` interfaces in a component linker, for one function (or none)."""

    def __init__(self, host: FunctionHost | None) -> None:
        component_values.install()
        self.host = host

    def define(self, linker: component.Linker) -> None:
        with linker.root() as root:
            with root.add_instance(instance_name("types")):
                pass  # types only
            for interface, functions in self._interfaces().items():
                with root.add_instance(instance_name(interface)) as instance:
                    for name, (call, tagged) in functions.items():
                        instance.add_func(name, self._guarded(f"{interface}.{name}", call, tagged))

    def _interfaces(self) -> dict[str, dict[str, tuple[Callable[..., Any], bool]]]:
        # (call, tagged): a result whose ok and err are both records is passed as a Variant.
        return {
            "kv": {
                "get": (lambda b, k: self._host.kv_get(b, k), False),
                "put": (lambda b, k, v: self._host.kv_put(b, k, v), False),
                "delete": (lambda b, k: self._host.kv_delete(b, k), False),
                "keys": (lambda b: self._host.kv_keys(b), False),
            },
            "objects": {
                "get": (lambda b, n: self._host.object_get(b, n), False),
                "put": (lambda b, n, d: self._host.object_put(b, n, d), False),
                "delete": (lambda b, n: self._host.object_delete(b, n), False),
                "list-objects": (lambda b: [_record(name=name, size=size)
                                            for name, size in self._host.object_list(b)], False),
            },
            "messaging": {
                "publish": (lambda s, d, h: self._host.publish(s, d, _headers(h)), False),
                "request": (lambda s, d, h, t: _message(self._host.request(s, d, _headers(h), _seconds(t))), True),
            },
            "http": {
                "send": (lambda m, u, h, b, t: _response(self._host.http(m, u, b, _headers(h) or {}, _seconds(t))),
                         True),
            },
        }

    @property
    def _host(self) -> FunctionHost:
        if self.host is None:
            raise HostError(UNAVAILABLE, "this agent has no host services (it is not connected to NATS)")
        return self.host

    def _guarded(self, name: str, call: Callable[..., Any], tagged: bool) -> Callable[..., Any]:
        def guarded(_store: Any, *args: Any) -> Any:
            try:
                value = call(*args)
            except HostError as exc:
                return self._err(_host_error(exc.kind, exc.message), tagged)
            except (TypeError, ValueError) as exc:  # a value the host cannot take (a header that is not text...)
                return self._err(_host_error(INVALID, f"{name}: {exc}"), tagged)
            except Exception as exc:  # an exception out of a host function would trap the guest
                log.exception("host call %s failed", name)
                return self._err(_host_error(FAILED, f"{name}: internal error of the agent: {exc}"), tagged)
            return component.Variant("ok", value) if tagged else value
        return guarded

    @staticmethod
    def _err(error: component.Record, tagged: bool) -> Any:
        return component.Variant("err", error) if tagged else error
