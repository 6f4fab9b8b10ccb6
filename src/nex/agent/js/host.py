"""The host services in JavaScript: the global ``nex`` of every function (see docs/functions.md).

The QuickJS binding cannot call Python while a time limit is set (its guard
refuses every callback then), so calls go the other way: ``nex.kv(b).get(k)``
queues the call and returns a promise (the prelude's ``enqueue``); between jobs,
:class:`nex.agent.js.quickjs_engine.QuickJsSandbox` takes the queue, hands each call to
:func:`perform` on the function's thread, and gives the answer back, which
settles the promise. Arguments and answers are JSON; bytes cross as latin-1
text, where JSON escapes NUL (strings cross the binding NUL-terminated).

:data:`HOST_JS` is compiled in a context the first time the function reads
``nex``, so a function that uses no host service pays nothing for it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from nex.agent.hostservices import FAILED, INVALID, FunctionHost, HostError, Reply

log = logging.getLogger(__name__)

HOST_JS = r"""
(function (enqueue) {
  "use strict";
  const stringify = JSON.stringify, parse = JSON.parse, fromCharCode = String.fromCharCode;
  const encoder = new TextEncoder(), decoder = new TextDecoder();
  const latin1 = (bytes) => {
    let text = "";
    for (let i = 0; i < bytes.length; i += 8192) text += fromCharCode.apply(null, bytes.subarray(i, i + 8192));
    return text;
  };
  const bytesOf = (text) => {
    const bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    return bytes;
  };
  // What a value is sent as: text as UTF-8, bytes as they are, anything else as JSON.
  const wire = (value) => {
    if (value === undefined || value === null) return "";
    if (typeof value === "string") return latin1(encoder.encode(value));
    if (value instanceof Uint8Array) return latin1(value);
    if (value instanceof ArrayBuffer) return latin1(new Uint8Array(value));
    if (ArrayBuffer.isView(value)) return latin1(new Uint8Array(value.buffer, value.byteOffset, value.byteLength));
    return latin1(encoder.encode(stringify(value)));
  };
  class NexError extends Error {
    constructor(message, code) {
      super(message);
      this.name = "NexError";
      this.code = code;
    }
  }
  const call = (op, args) => enqueue(op, args).catch((error) => {
    throw new NexError(error.message, error.kind);
  });
  const TYPES = ["text", "json", "bytes"];
  const checkType = (type) => {
    if (type !== undefined && !TYPES.includes(type)) {
      throw new NexError(`unknown type ${stringify(type)}: use "text", "json" or "bytes"`, "invalid");
    }
  };
  const as = (text, type) => {
    if (text === null) return null;
    if (type === "bytes") return bytesOf(text);
    const decoded = decoder.decode(bytesOf(text));
    return type === "json" ? parse(decoded) : decoded;
  };
  const timeoutOf = (options) => (options && options.timeout !== undefined ? options.timeout : null);
  const message = (answer, bodyName) => {
    const data = bytesOf(answer.data);
    const result = {
      headers: answer.headers,
      text() { return decoder.decode(data); },
      json() { return parse(decoder.decode(data)); },
    };
    result[bodyName] = data;
    if (bodyName === "body") {
      result.status = answer.status;
      result.ok = answer.status >= 200 && answer.status < 300;
    }
    return Object.freeze(result);
  };

  // Every method is async: its promise settles once the agent has done the call.
  const kv = (bucket) => Object.freeze({
    async get(key, type) { checkType(type); return as(await call("kv.get", { bucket, key }), type); },
    async put(key, value) { await call("kv.put", { bucket, key, value: wire(value) }); },
    async delete(key) { await call("kv.delete", { bucket, key }); },
    async keys() { return call("kv.keys", { bucket }); },
  });
  const objects = (bucket) => Object.freeze({
    async get(name, type) { checkType(type); return as(await call("objects.get", { bucket, name }), type); },
    async put(name, value) { await call("objects.put", { bucket, name, value: wire(value) }); },
    async delete(name) { await call("objects.delete", { bucket, name }); },
    async list() { return call("objects.list", { bucket }); },
  });
  const publish = async (subject, data, options) => {
    await call("publish", { subject, data: wire(data), headers: options && options.headers });
  };
  const request = async (subject, data, options) => message(await call("request", {
    subject, data: wire(data), headers: options && options.headers, timeout: timeoutOf(options) }), "data");
  const fetch = async (method, url, options) => message(await call("http", {
    method, url, body: wire(options && options.body), headers: options && options.headers,
    timeout: timeoutOf(options) }), "body");
  const http = Object.freeze({
    get: (url, options) => fetch("GET", url, options),
    post: (url, options) => fetch("POST", url, options),
    put: (url, options) => fetch("PUT", url, options),
    delete: (url, options) => fetch("DELETE", url, options),
    fetch,
  });
  return Object.freeze({ kv, objects, publish, request, http, NexError });
})
"""


def perform(host: FunctionHost, op: str, args: Any) -> str:
    """Run one queued call on the function's thread; the answer as JSON, ``ok`` or ``error``. Never raises."""
    try:
        if not isinstance(args, dict):
            raise TypeError("the arguments must be an object")
        return json.dumps({"ok": _dispatch(host, op, args)})
    except HostError as exc:
        return _error(exc.kind, exc.message)
    except (ValueError, TypeError, KeyError) as exc:
        return _error(INVALID, f"{op}: bad arguments: {exc}")
    except Exception as exc:  # a bug of the agent: the function gets an error, the agent keeps serving
        log.exception("host call %s failed", op)
        return _error(FAILED, f"{op}: internal error of the agent: {exc}")


def _dispatch(host: FunctionHost, op: str, args: dict[str, Any]) -> Any:
    if op == "kv.get":
        return _text(host.kv_get(args["bucket"], args["key"]))
    if op == "kv.put":
        return host.kv_put(args["bucket"], args["key"], _bytes(args["value"]))
    if op == "kv.delete":
        return host.kv_delete(args["bucket"], args["key"])
    if op == "kv.keys":
        return host.kv_keys(args["bucket"])
    if op == "objects.get":
        return _text(host.object_get(args["bucket"], args["name"]))
    if op == "objects.put":
        return host.object_put(args["bucket"], args["name"], _bytes(args["value"]))
    if op == "objects.delete":
        return host.object_delete(args["bucket"], args["name"])
    if op == "objects.list":
        return [{"name": name, "size": size} for name, size in host.object_list(args["bucket"])]
    if op == "publish":
        return host.publish(args["subject"], _bytes(args["data"]), args.get("headers"))
    if op == "request":
        return _reply(host.request(args["subject"], _bytes(args["data"]), args.get("headers"),
                                   _seconds(args.get("timeout"))))
    if op == "http":
        return _reply(host.http(args["method"], args["url"], _bytes(args["body"]), args.get("headers"),
                                _seconds(args.get("timeout"))))
    raise HostError(INVALID, f"unknown host call {op}")


def _bytes(latin1: str) -> bytes:
    if not isinstance(latin1, str):
        raise TypeError("expected bytes as text")
    return latin1.encode("latin-1")


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("latin-1")


def _seconds(timeout_ms: Any) -> float | None:
    if timeout_ms is None:
        return None
    if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, (int, float)):
        raise HostError(INVALID, f"the timeout must be a number of milliseconds, not {timeout_ms!r}")
    return timeout_ms / 1000


def _reply(reply: Reply) -> dict[str, Any]:
    return {"data": _text(reply.data), "headers": reply.headers, "status": reply.status}


def _error(kind: str, message: str) -> str:
    return json.dumps({"error": {"kind": kind, "message": message}})
