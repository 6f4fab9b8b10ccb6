"""The JavaScript installed in every QuickJS context before the function's own script.

Evaluates to setup(envJson), which defines the `console` and `env` globals and
returns lookup(name) for the entry points the agent calls:
  bind(fn)   -> invoke(subject, payloadLatin1) -> encoded result
  settle()   -> the encoded result of the pending promise, or "p"
  caught()   -> the encoded description of the error the last call threw
  logs()     -> JSON of the console lines not yet taken
An encoded result is an optional "L" + JSON(console lines) + newline, then a tag
and data. Tags: "s" text, "S" text as a JSON string (it holds NUL), "b" bytes as
latin-1, "B" bytes as latin-1 in a JSON string, "e" a thrown error's message
and stack, "x" an error was thrown (call caught()), "p" a promise not settled yet. Console lines are a flat list of
stream (0 stdout, 1 stderr) and text pairs.
Strings cross the binding as NUL-terminated UTF-8, so a payload's 0x00 bytes
arrive as U+0100 (a Uint8Array store keeps the low byte) and results that hold
NUL go back JSON-escaped.
"""

PRELUDE = r"""
(function (envJson) {
  "use strict";
  const MAX_LINES = 1000;
  const MAX_LINE_CHARS = 65536;
  const stringify = JSON.stringify;
  const fromCharCode = String.fromCharCode;
  const isView = ArrayBuffer.isView;

  let lines = [];
  let dropped = 0;

  const show = (value) => {
    if (typeof value === "string") return value;
    if (value instanceof Error) return value.stack ? `${value}\n${value.stack}`.trimEnd() : String(value);
    try {
      const json = stringify(value);
      return json === undefined ? String(value) : json;
    } catch (e) {
      return String(value);
    }
  };
  const writer = (stream) => (...args) => {
    if (lines.length >= 2 * MAX_LINES) { dropped++; return; }
    let line = args.map(show).join(" ");
    if (line.length > MAX_LINE_CHARS) line = line.slice(0, MAX_LINE_CHARS) + "...";
    lines.push(stream, line);
  };
  const takeLines = () => {
    if (dropped) { lines.push(1, `nex: ${dropped} console lines dropped`); dropped = 0; }
    const taken = lines;
    lines = [];
    return taken;
  };
  const console = Object.freeze({
    log: writer(0), info: writer(0), debug: writer(0), warn: writer(1), error: writer(1),
  });
  const frozen = { writable: false, configurable: false, enumerable: false };
  Object.defineProperty(globalThis, "console", { value: console, ...frozen });
  Object.defineProperty(globalThis, "env", { value: Object.freeze(JSON.parse(envJson)), ...frozen });

  const toBytes = (latin1) => {
    const n = latin1.length;
    const bytes = new Uint8Array(n);
    let i = 0;
    // Unrolled: the interpreter's loop overhead is most of the per-byte cost.
    for (const n4 = n - 3; i < n4; i += 4) {
      bytes[i] = latin1.charCodeAt(i);
      bytes[i + 1] = latin1.charCodeAt(i + 1);
      bytes[i + 2] = latin1.charCodeAt(i + 2);
      bytes[i + 3] = latin1.charCodeAt(i + 3);
    }
    for (; i < n; i++) bytes[i] = latin1.charCodeAt(i);
    return bytes;
  };
  const toLatin1 = (bytes) => {
    let text = "";
    for (let i = 0; i < bytes.length; i += 8192) text += fromCharCode.apply(null, bytes.subarray(i, i + 8192));
    return text;
  };
  const encodeBytes = (bytes) => {
    const text = toLatin1(bytes);
    return text.indexOf("\0") < 0 ? "b" + text : "B" + stringify(text);
  };
  const encode = (result) => {
    if (result === undefined || result === null) return "b";
    if (typeof result === "string") return result.indexOf("\0") < 0 ? "s" + result : "S" + stringify(result);
    if (result instanceof Uint8Array) return encodeBytes(result);
    if (result instanceof ArrayBuffer) return encodeBytes(new Uint8Array(result));
    if (isView(result)) return encodeBytes(new Uint8Array(result.buffer, result.byteOffset, result.byteLength));
    const json = stringify(result);
    return json === undefined ? "b" : "s" + json;
  };
  // Text of a thrown value: its message, a newline, its stack (the agent finds the line in it).
  const describe = (error) => {
    if (error instanceof Error) return `${error}\n${error.stack || ""}`;
    if (typeof error === "string") return error;
    try {
      return stringify(error) ?? String(error);
    } catch (e) {
      return String(error);
    }
  };
  const withLines = (encoded) => (lines.length || dropped ? "L" + stringify(takeLines()) + "\n" + encoded : encoded);
  const encodeResult = (result) => {
    try {
      return encode(result);
    } catch (error) {
      return `ecannot encode the result: ${error}`;
    }
  };

  // A catch block does no work beyond keeping the error: when the heap is full, any
  // allocation there can crash the engine. The agent raises the memory limit, then
  // calls caught() to describe it.
  let caught;
  let pending = null;

  const bind = (fn) => {
    if (typeof fn !== "function") {
      const what = fn === null ? "null" : typeof fn;
      throw new TypeError(`the script must evaluate to a function (subject, payload), not to ${what}`);
    }
    return (subject, payload) => {
      let result;
      try {
        result = fn(subject, toBytes(payload));
      } catch (error) {
        caught = error;
        return "x";
      }
      if (result instanceof Promise) {
        pending = { done: false, encoded: "p" };
        result.then(
          (value) => { pending = { done: true, encoded: encodeResult(value) }; },
          (error) => { caught = error; pending = { done: true, encoded: "x" }; });
        return withLines("p");
      }
      return withLines(encodeResult(result));
    };
  };
  const settle = () => {
    const encoded = pending && pending.done ? pending.encoded : "p";
    if (encoded !== "p") pending = null;
    return encoded === "x" ? encoded : withLines(encoded);
  };
  const describeCaught = () => {
    const error = caught;
    caught = undefined;
    return withLines("e" + describe(error));
  };
  const logs = () => stringify(takeLines());
  const entries = { bind, settle, logs, caught: describeCaught };
  return (name) => entries[name];
})
"""
