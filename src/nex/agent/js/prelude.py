"""The JavaScript installed in every QuickJS context before the function's own script.

Evaluates to setup(envJson, hostSource, codecSource), which defines the `console` and
`env` globals, `TextEncoder` and `TextDecoder` (compiled from codecSource when first
read), and `nex`, the host services, when hostSource is not empty; it returns
lookup(name) for the entry points the agent calls:
  bind(fn)   -> invoke(subject, payloadLatin1) -> encoded result
  settle()   -> the encoded result of the pending promise, or "p"
  caught()   -> the encoded description of the error the last call threw
  logs()     -> JSON of the console lines not yet taken
  hostTake() -> JSON of the host calls made since the last take: [[id, op, args], ...]
  hostGive(id, answerJson) -> settles the promise of host call id

Host calls go one way only, from the agent into JavaScript: the binding cannot
call Python while a time limit is set. A host call queues itself and returns a
promise; the agent takes the queue between jobs, performs the calls and gives
the answers back (nex.agent.js.host). A call that queued host calls is pending
until they are answered, even when it returned a plain value, so no call is lost.
An encoded result is an optional "L" + JSON(console lines) + newline, then a tag
and data. Tags: "s" text; "S" text as a JSON string (it holds NUL); "b" bytes as
latin-1; "B" bytes as latin-1 in a JSON string; "e" a thrown error's message and
stack; "x" an error was thrown (call caught()); "p" a promise not settled yet;
"q" (from settle) host calls wait to be performed.
Console lines are a flat list of stream (0 stdout, 1 stderr) and text pairs.

Strings cross the binding as NUL-terminated UTF-8, so a payload's 0x00 bytes
arrive as U+0100 (a Uint8Array store keeps the low byte) and results that hold
NUL go back JSON-escaped. Every string an entry point returns is flattened first:
QuickJS-ng keeps a long concatenation as a rope, which the binding cannot read
("Unknown quickjs tag: -6"), and ``slice(0)`` makes it one string again.
"""

PRELUDE = r"""
(function (envJson, hostSource, codecSource) {
  "use strict";
  const MAX_LINES = 1000;
  const MAX_LINE_CHARS = 65536;
  const stringify = JSON.stringify;
  const fromCharCode = String.fromCharCode;
  const isView = ArrayBuffer.isView;
  // flat(text) is text.slice(): a rope becomes one string (see the docstring). Bound here, so
  // that a function that replaces String.prototype.slice cannot change what the agent reads;
  // it allocates nothing for a string that is flat already (a full heap is no problem then).
  const flat = Function.prototype.call.bind(String.prototype.slice);

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

  // TextEncoder and TextDecoder (UTF-8 only), as in browsers, Deno and Workers: QuickJS has
  // neither. Compiled on first use (TEXT_CODECS), like `nex`: most functions never touch them,
  // and parsing them was a quarter of the cost of building a context.
  let codecs;
  const codec = (name) => {
    Object.defineProperty(globalThis, name, {
      get() {
        if (codecs === undefined) codecs = (0, eval)(codecSource)();
        return codecs[name];
      },
      configurable: false, enumerable: false,
    });
  };
  codec("TextEncoder");
  codec("TextDecoder");

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

  // Host calls: queued here, performed by the agent, answered through hostGive.
  let hostQueue = [];
  const hostWaiting = new Map();
  let hostNext = 0;
  const enqueue = (op, args) => new Promise((resolve, reject) => {
    const id = ++hostNext;
    hostWaiting.set(id, { resolve, reject });
    hostQueue.push([id, op, args]);
  });
  const hostTake = () => {
    if (!hostQueue.length) return "";
    const taken = hostQueue;
    hostQueue = [];
    return stringify(taken);
  };
  const hostGive = (id, answerJson) => {
    const waiting = hostWaiting.get(id);
    hostWaiting.delete(id);
    if (waiting) {
      const answer = JSON.parse(answerJson);
      if (answer.error) waiting.reject(answer.error);
      else waiting.resolve(answer.ok);
    }
  };
  if (hostSource) {
    // Compiled on first use: a function that never reads `nex` does not pay for it.
    let nex;
    Object.defineProperty(globalThis, "nex", {
      get() {
        if (nex === undefined) nex = (0, eval)(hostSource)(enqueue);
        return nex;
      },
      configurable: false, enumerable: false,
    });
  }

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
    return (subject, payload) => flat(call(subject, payload));
    function call(subject, payload) {
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
      if (hostQueue.length) {
        pending = { done: true, encoded: encodeResult(result) };
        return withLines("p");
      }
      return withLines(encodeResult(result));
    }
  };
  const settle = () => {
    if (hostQueue.length) return "q";  // host calls to perform first, even past the result
    const encoded = pending && pending.done ? pending.encoded : "p";
    if (encoded !== "p") pending = null;
    return flat(encoded === "x" ? encoded : withLines(encoded));
  };
  const describeCaught = () => {
    const error = caught;
    caught = undefined;
    return flat(withLines("e" + describe(error)));
  };
  const logs = () => flat(stringify(takeLines()));
  const entries = { bind, settle, logs, caught: describeCaught, hostTake: () => flat(hostTake()), hostGive };
  return (name) => entries[name];
})
"""

# Evaluates to a function returning {TextEncoder, TextDecoder}; see the prelude.
TEXT_CODECS = r"""
(function () {
  "use strict";
  const fromCharCode = String.fromCharCode;
  const isView = ArrayBuffer.isView;
  const utf8Encode = (text) => {
    const out = [];
    for (const ch of String(text)) {
      let c = ch.codePointAt(0);
      if (c >= 0xd800 && c <= 0xdfff) c = 0xfffd;  // a lone surrogate
      if (c < 0x80) out.push(c);
      else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
      else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
      else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    }
    return new Uint8Array(out);
  };
  const utf8Decode = (bytes) => {
    const units = [];
    let text = "";
    const n = bytes.length;
    for (let i = 0; i < n;) {
      const b = bytes[i];
      const need = b < 0x80 ? 0 : b >= 0xc2 && b < 0xe0 ? 1 : b >= 0xe0 && b < 0xf0 ? 2 : b >= 0xf0 && b < 0xf5 ? 3 : -1;
      let c = 0xfffd, size = 1;
      if (need === 0) c = b;
      else if (need > 0) {
        // An invalid or cut sequence becomes one U+FFFD for its longest valid prefix.
        let value = b & (0x3f >> need), k = 1;
        for (; k <= need && i + k < n && (bytes[i + k] & 0xc0) === 0x80; k++) value = (value << 6) | (bytes[i + k] & 63);
        const min = need === 1 ? 0x80 : need === 2 ? 0x800 : 0x10000;
        if (k <= need) size = k;
        else if (value >= min && value <= 0x10ffff && (value < 0xd800 || value > 0xdfff)) {
          c = value;
          size = need + 1;
        }
      }
      if (c >= 0x10000) units.push(0xd800 + ((c - 0x10000) >> 10), 0xdc00 + ((c - 0x10000) & 0x3ff));
      else units.push(c);
      i += size;
      if (units.length >= 8192) { text += fromCharCode.apply(null, units); units.length = 0; }
    }
    return text + fromCharCode.apply(null, units);
  };
  const asBytes = (input) => {
    if (input === undefined) return new Uint8Array(0);
    if (input instanceof Uint8Array) return input;
    if (input instanceof ArrayBuffer) return new Uint8Array(input);
    if (isView(input)) return new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
    throw new TypeError("TextDecoder.decode takes an ArrayBuffer or a typed array");
  };
  class TextEncoder {
    get encoding() { return "utf-8"; }
    encode(text = "") { return utf8Encode(text); }
  }
  class TextDecoder {
    constructor(label = "utf-8") {
      if (!/^(utf-?8|unicode-1-1-utf-8)$/i.test(String(label).trim())) {
        throw new RangeError(`TextDecoder supports utf-8 only, not ${label}`);
      }
    }
    get encoding() { return "utf-8"; }
    decode(input) {
      const bytes = asBytes(input);
      return utf8Decode(bytes);
    }
  }
  return { TextEncoder, TextDecoder };
})
"""
