// For tests/test_host_services.py: the payload is {"op": ..., "args": [...]}: one host
// call. The reply is {"ok": result} or {"error": message, "code": error.code}.
async function run(op, args) {
  const [first, second, third] = args;
  switch (op) {
    case "kv.put": return nex.kv(first).put(second, third);
    case "kv.get": return nex.kv(first).get(second, third);
    case "kv.getBytes": return Array.from(await nex.kv(first).get(second, "bytes"));
    case "kv.putBytes": return nex.kv(first).put(second, new Uint8Array(third));
    case "kv.putRepeated": return nex.kv(first).put(second, "x".repeat(third));
    case "kv.delete": return nex.kv(first).delete(second);
    case "kv.keys": return (await nex.kv(first).keys()).sort();
    case "objects.put": return nex.objects(first).put(second, third);
    case "objects.get": return nex.objects(first).get(second, third);
    case "objects.delete": return nex.objects(first).delete(second);
    case "objects.list": return nex.objects(first).list();
    case "publish": return nex.publish(first, second);
    case "request": return (await nex.request(first, second, third)).text();
    case "http": {
      const response = await nex.http[first](second, third);
      return { status: response.status, ok: response.ok, body: response.text(), type: response.headers["content-type"] };
    }
    case "nexIsFrozen": return Object.isFrozen(nex) && Object.isFrozen(nex.kv("x"));
  }
  throw new Error(`unknown op ${op}`);
}

async (subject, payload) => {
  const { op, args } = JSON.parse(new TextDecoder().decode(payload));
  try {
    const result = await run(op, args || []);
    return JSON.stringify({ ok: result === undefined ? null : result });
  } catch (error) {
    return JSON.stringify({ error: error.message, code: error.code, name: error.name });
  }
}
