"""The client's last line: a failure of nats-py that no part turned into a :class:`NexError` becomes one.

Each part converts the failures it expects where it knows what they mean (no responders: no such
workload; a timeout: no reply). What it did not expect (a connection closed under it, a timeout
deep in a JetStream call, a JetStream API error) would otherwise reach the user as a nats-py
exception; :func:`typed_failures` wraps every public coroutine and async iterator of
:class:`nex.client.NexClient` so that it arrives as a NexError too, the original chained.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, AsyncIterator, Callable, TypeVar

import nats.errors
import nats.js.errors

from nex.api.errors import BadRequest, Forbidden, InternalError, NatsConnectionLost, NexError, NotFound, Unavailable

__all__ = ["as_nex_error", "guard_public_methods", "typed_failures"]

T = TypeVar("T")

_CONNECTION = (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError,
               nats.errors.ConnectionReconnectingError, nats.errors.NoServersError, nats.errors.StaleConnectionError,
               nats.errors.UnexpectedEOF)
_BY_API_CODE: dict[int, type[NexError]] = {400: BadRequest, 403: Forbidden, 404: NotFound, 503: Unavailable}


def as_nex_error(exc: nats.errors.Error) -> NexError:
    """The NexError that says what ``exc``, a nats-py failure, means to a user of the client."""
    if isinstance(exc, nats.errors.TimeoutError):
        return Unavailable("no answer from NATS in time")
    if isinstance(exc, (nats.errors.ConnectionClosedError, nats.errors.UnexpectedEOF)):
        return NatsConnectionLost("the connection to NATS was closed")
    if isinstance(exc, nats.errors.NoServersError):
        return NatsConnectionLost("no NATS server answers any more")
    if isinstance(exc, _CONNECTION):
        return Unavailable(f"the connection to NATS is unusable: {type(exc).__name__.removesuffix('Error').lower()}")
    if isinstance(exc, nats.errors.NoRespondersError):
        return NotFound("nothing answers that subject")
    if isinstance(exc, nats.errors.MaxPayloadError):
        return BadRequest("the message is larger than the NATS server's max_payload")
    if isinstance(exc, nats.js.errors.APIError):
        code = exc.code or 500
        return _BY_API_CODE.get(code, InternalError)(f"JetStream refused the request: {exc.description or exc}")
    return InternalError(f"NATS: {exc}")


def typed_failures(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` (a coroutine function or an async generator function) with nats-py failures as NexErrors."""
    if inspect.isasyncgenfunction(function):
        @functools.wraps(function)
        async def iterate(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            iterator = function(*args, **kwargs)
            try:
                async for item in iterator:
                    yield item
            except nats.errors.Error as exc:
                raise as_nex_error(exc) from exc
            finally:
                await iterator.aclose()
        return iterate

    @functools.wraps(function)
    async def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return await function(*args, **kwargs)
        except nats.errors.Error as exc:
            raise as_nex_error(exc) from exc
    return call


def guard_public_methods(cls: type[T]) -> type[T]:
    """Wrap every public coroutine and async iterator method of ``cls`` (inherited ones included)."""
    for name in dir(cls):
        if name.startswith("_"):
            continue
        attribute = inspect.getattr_static(cls, name)
        if isinstance(attribute, (staticmethod, classmethod, property)):
            continue
        if inspect.iscoroutinefunction(attribute) or inspect.isasyncgenfunction(attribute):
            setattr(cls, name, typed_failures(attribute))
    return cls
