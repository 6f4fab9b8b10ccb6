"""Durable async invocation: one function's work-queue stream, run at least once, with retries.

A function's async triggers (``mode: async`` or a ``schedule``) are captured by a
JetStream stream of its own, ``NEXFN_<len(ns)>_<ns>_<name>`` (one name per namespace
and function: :func:`nex.api.subjects.scoped_name`; work-queue retention, the node's
replicas, a duplicate window of ``DUPLICATE_WINDOW_S``). Every copy of the function,
on every node, pulls from one durable consumer of the same name, so the copies share
the work. For each message:

1. The idempotency key is the ``Nex-Key`` header, else ``Nats-Msg-Id``, else the
   stream sequence. A key already in the done bucket (``NEX_DONE``, kept
   ``DONE_TTL_S``) is acked without running: it completed before. (A sequence key
   on its first delivery is not looked up: it cannot have completed.)
2. A message delivered more than ``max_attempts`` times (its last run's copy died
   before it answered) is dead-lettered without running again.
3. Otherwise it runs through the function's own call path (the thread the sync calls
   use). Success: the key is recorded with ``create`` (compare-and-set: one completion
   record per key however many copies raced), the result is published on the
   ``Nex-Reply-To`` subject if there is one (with the invocation's ``Nex-Hop`` plus one,
   :mod:`nex.api.hops`), and the message is acked. Failure: a
   ``nak`` with the delay ``backoff_ms * 2**(attempt-1)`` capped at ``max_backoff_ms``;
   after the last attempt the message goes to the dead-letter stream ``NEX_DLQ``
   (subject ``$NEX.DLQ.<ns>.<name>``, headers naming the subject, key, attempts and
   last error), the final error goes to ``Nex-Reply-To``, a ``function_dead_lettered``
   event is published, and the message is acked.

The package is in two parts: :mod:`~nex.agent.durable.streams` makes the stream, the
consumer and the shared stores; :mod:`~nex.agent.durable.runner` pulls and runs.

A copy holds at most ``capacity`` messages (``max_concurrency``, else
``DEFAULT_CAPACITY``) and fetches only as many as it has room for. The ack wait is
the function's timeout plus ``ACK_MARGIN_S``; while a message waits for its turn
on the function's thread the copy tells JetStream it is in progress, so only a dead
copy's messages come back, one ack wait after it died.
"""
