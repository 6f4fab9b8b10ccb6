# visitors.py: greets whoever the payload names, counts their visits in the namespace's KV
# bucket "visitors", and refuses a name that is too long.
import os

import nex


def handle(subject, payload):
    name = payload.decode() or "world"
    if len(name) > 20:
        raise ValueError(f"a name of {len(name)} characters is too long")
    visits = nex.kv("visitors")
    count = (visits.get(name, type="json") or 0) + 1
    visits.put(name, count)
    return {"hello": name, "from": os.environ.get("WHO", "nobody"), "visits": count}
