"""The JetStream side of durable async invocation (:mod:`nex.agent.durable`): what a function's
async triggers need to exist before its runner pulls.

Per function, its work-queue stream ``NEXFN_<len(ns)>_<ns>_<name>`` over its async trigger
subjects (refused with :class:`TriggerConflict` when another stream captures one of them)
and one durable pull consumer of the same name, which every copy binds to. Per agent, the
stores every durable function shares: the dead-letter stream ``NEX_DLQ`` and the done
bucket ``NEX_DONE`` of completed idempotency keys (:func:`done_key`).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import weakref
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, NotFoundError

from nex.agent import protocol
from nex.api import subjects
from nex.api.errors import BadRequest

log = logging.getLogger(__name__)

DUPLICATE_WINDOW_S = 10 * 60.0  # a re-publish of the same Nats-Msg-Id within this is dropped
DONE_TTL_S = 24 * 60 * 60.0  # how long a completed key suppresses a new run
DLQ_MAX_AGE_S = 30 * 24 * 60 * 60.0
STREAM_OVERLAP = 10065  # JetStream: subjects overlap with an existing stream


class TriggerConflict(BadRequest):
    """An async trigger subject another function's stream (or another stream) already captures."""


def done_key(namespace: str, name: str, key: str) -> str:
    """The done bucket's key of one idempotency key: any text, base64url so that KV accepts it."""
    encoded = base64.urlsafe_b64encode(key.encode()).decode().rstrip("=") or "-"
    return f"{namespace}.{name}.{encoded}"


@dataclass
class SharedStores:
    """What every durable function of one agent shares: the dead-letter stream and the done bucket."""

    done: Any


_shared: weakref.WeakKeyDictionary[Client, asyncio.Task[SharedStores]] = weakref.WeakKeyDictionary()


async def shared_stores(nc: Client, replicas: int) -> SharedStores:
    """The stores of this connection's agent, made once (by whichever function needs them first)."""
    task = _shared.get(nc)
    if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
        task = asyncio.ensure_future(_create_shared(nc.jetstream(), replicas))
        _shared[nc] = task
    return await asyncio.shield(task)


async def _create_shared(js: JetStreamContext, replicas: int) -> SharedStores:
    try:
        await js.stream_info(subjects.DLQ_STREAM)
    except NotFoundError:
        try:
            await js.add_stream(api.StreamConfig(
                name=subjects.DLQ_STREAM, subjects=[f"{subjects.DLQ_PREFIX}.>"],
                retention=api.RetentionPolicy.LIMITS, storage=api.StorageType.FILE, num_replicas=replicas,
                max_age=DLQ_MAX_AGE_S, duplicate_window=DUPLICATE_WINDOW_S,
                description="nex: async invocations that failed max_attempts times"))
        except BadRequestError:
            await js.stream_info(subjects.DLQ_STREAM)  # another agent made it meanwhile
    try:
        done = await js.key_value(subjects.DONE_BUCKET)
    except NotFoundError:
        try:
            done = await js.create_key_value(api.KeyValueConfig(
                bucket=subjects.DONE_BUCKET, history=1, ttl=DONE_TTL_S, replicas=replicas,
                storage=api.StorageType.FILE, description="nex: completed idempotency keys of async invocations"))
        except BadRequestError:
            done = await js.key_value(subjects.DONE_BUCKET)
    return SharedStores(done=done)


async def ensure_function_stream(js: JetStreamContext, namespace: str, name: str, trigger_subjects: list[str],
                                 replicas: int) -> str:
    """Create the function's stream, or point it at ``trigger_subjects`` (the last copy loaded wins);
    raises TriggerConflict when another stream captures one of them."""
    stream = subjects.function_stream(namespace, name)
    owner = f"nex function {namespace}/{name}"
    wanted = sorted(set(trigger_subjects))
    for _ in range(2):
        try:
            info = await js.stream_info(stream)
        except NotFoundError:
            config = api.StreamConfig(
                name=stream, subjects=wanted, retention=api.RetentionPolicy.WORK_QUEUE,
                storage=api.StorageType.FILE, num_replicas=replicas, duplicate_window=DUPLICATE_WINDOW_S,
                description=owner)
            try:
                await js.add_stream(config)
                return stream
            except BadRequestError as exc:
                if exc.err_code == STREAM_OVERLAP:
                    raise await _conflict(js, namespace, name, wanted) from None
                continue  # made by another copy meanwhile: look again
        if info.config.description != owner:
            raise TriggerConflict(f"stream {stream} belongs to {info.config.description or 'something else'},"
                                  f" not to function {namespace}/{name}")
        if sorted(info.config.subjects or []) != wanted:
            try:
                await js.update_stream(info.config.evolve(subjects=wanted))
            except BadRequestError as exc:
                if exc.err_code == STREAM_OVERLAP:
                    raise await _conflict(js, namespace, name, wanted) from None
                raise
        return stream
    raise TriggerConflict(f"cannot create stream {stream}")


async def _conflict(js: JetStreamContext, namespace: str, name: str, wanted: list[str]) -> TriggerConflict:
    for subject in wanted:
        try:
            other = await js.find_stream_name_by_subject(subject)
        except NotFoundError:
            continue
        return TriggerConflict(f"async trigger {subject!r} of {namespace}/{name} overlaps the subjects of"
                               f" stream {other}: two functions cannot share an async subject")
    return TriggerConflict(f"the async triggers {', '.join(wanted)} of {namespace}/{name} overlap another stream")


async def bind_function_consumer(js: JetStreamContext, spec: protocol.Load, trigger_subjects: list[str],
                                 replicas: int, *, capacity: int, ack_wait_s: float) -> Any:
    """The function's stream (:func:`ensure_function_stream`) and its durable consumer, shared by
    every copy of the function, bound as a pull subscription."""
    stream = await ensure_function_stream(js, spec.namespace, spec.name, trigger_subjects, replicas)
    config = api.ConsumerConfig(
        durable_name=stream, ack_policy=api.AckPolicy.EXPLICIT, deliver_policy=api.DeliverPolicy.ALL,
        ack_wait=ack_wait_s, max_deliver=-1, max_ack_pending=max(1000, capacity),
        description=f"nex function {spec.namespace}/{spec.name}")
    try:
        await js.add_consumer(stream, config)
    except BadRequestError as exc:  # exists with other settings (another revision): use it as it is
        log.warning("function %s: consumer %s kept as it is: %s", spec.workload_id, stream, exc)
    return await js.pull_subscribe_bind(durable=stream, stream=stream)
