"""Write the JSON Schemas of the wire models: ``python -m nex.api.schema DIR``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from nex.api import apps, appsig, models, records
from nex.api.events import CloudEvent

SCHEMA_MODELS = {
    "deploy-request": models.DeployRequest,
    "workload": models.WorkloadSummary,
    "undeploy-request": models.UndeployRequest,
    "undeploy-response": models.UndeployResponse,
    "node-ping": models.NodePing,
    "node-info": models.NodeInfo,
    "page-request": models.PageRequest,
    "workload-ping": models.WorkloadPing,
    "lameduck-response": models.LameDuckResponse,
    "auction-request": models.AuctionRequest,
    "auction-reply": models.AuctionReply,
    "node-record": records.NodeRecord,
    "node-record-part": records.NodeRecordPart,
    "app-spec": apps.AppSpec,
    "app-record": apps.AppRecord,
    "app-status": apps.AppStatus,
    "app-token-payload": appsig.AppClaim,
    "reconciler-lease": apps.ReconcilerLease,
    "fleet-keys-record": apps.FleetKeysRecord,
    "fleet-keys-copy": apps.FleetKeysCopy,
    "error": models.ErrorResponse,
    "event": CloudEvent,
}


def render(name: str) -> str:
    """The JSON Schema of the model ``name``, as text."""
    schema = SCHEMA_MODELS[name].model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"urn:nex:schema:v1:{name}"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_all(directory: Path) -> list[Path]:
    """Write every model's JSON Schema into ``directory``; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in SCHEMA_MODELS:
        path = directory / f"{name}.json"
        path.write_text(render(name))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/schemas")):
        print(path)
