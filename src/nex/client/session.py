"""``nex.connect``: the front door, an async context manager that yields a connected client.

It takes the connection options of the ``nex`` command, with the same environment defaults
(``NATS_URL``, ``NEX_NAMESPACE``) and the same keys (``$NEX_HOME``, ``~/.nex`` by default).
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Sequence

from nex.api import subjects
from nex.api.errors import BadRequest
from nex.client.client import NexClient
from nex.connection import ConnectOptions
from nex.security.keystore import UserKeys

__all__ = ["HOME_KEYS", "connect"]


class _HomeKeys:
    """The default of ``connect(keys=...)``: the user's keys in ``$NEX_HOME``, when there are any."""

    def __repr__(self) -> str:
        return "HOME_KEYS"


HOME_KEYS = _HomeKeys()
"""The user's keys in ``$NEX_HOME`` (``~/.nex``), as the ``nex`` command uses them; none when not made yet."""


@asynccontextmanager
async def connect(
    servers: str | Sequence[str] | None = None,
    *,
    namespace: str | None = None,
    creds: str | os.PathLike[str] | None = None,
    nkey: str | os.PathLike[str] | None = None,
    user: str | None = None,
    password: str | None = None,
    tls_cert: str | os.PathLike[str] | None = None,
    tls_key: str | os.PathLike[str] | None = None,
    tls_ca: str | os.PathLike[str] | None = None,
    timeout: float = 5.0,
    keys: UserKeys | _HomeKeys | None = HOME_KEYS,
    name: str = "nex-python",
) -> AsyncIterator[NexClient]:
    """Connect to NATS and yield a :class:`~nex.client.NexClient` for one namespace; closes on exit.

    The options are those of the ``nex`` command:

    - ``servers``: a URL, comma-separated URLs or a list of them; default ``$NATS_URL``, else
      ``nats://127.0.0.1:4222`` (``--server``);
    - ``namespace``: default ``$NEX_NAMESPACE``, else ``default`` (``--namespace``);
    - ``creds`` (a NATS credentials file), ``nkey`` (an nkey seed file), ``user`` and
      ``password``; ``tls_cert`` with ``tls_key`` (a client certificate), ``tls_ca`` (the CA to
      trust; a ``tls://`` URL uses TLS with the system's CAs);
    - ``timeout``: of each request, in seconds (``--timeout``);
    - ``keys``: what requests are signed and env sealed with: by default the user's keys in
      ``$NEX_HOME`` (``~/.nex``) when they exist, as the ``nex`` command does; a
      :class:`~nex.security.keystore.UserKeys` (``UserKeys.load(create=True)`` makes them on first
      use); None to sign nothing.

    Raises:
        BadRequest: options that do not go together, a bad URL or namespace, a file that is not there.
        NatsUnavailable: no NATS server answers at ``servers``.
        NatsRefused: the server refuses these credentials.

    Example:
        ```python
        async with nex.connect("nats://127.0.0.1:4222", namespace="default") as client:
            for node in await client.ping():
                print(node.name)
        ```

    """
    options = connect_options(servers, creds=creds, nkey=nkey, user=user, password=password,
                              tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca, name=name)
    namespace = namespace or os.environ.get("NEX_NAMESPACE") or subjects.DEFAULT_NAMESPACE
    if timeout <= 0:
        raise BadRequest(f"timeout {timeout:g} is not above zero")
    signing = UserKeys.load() if isinstance(keys, _HomeKeys) else keys
    client = await NexClient.connect(options, namespace=namespace, timeout=timeout, keys=signing)
    async with client:
        yield client


def connect_options(servers: str | Sequence[str] | None = None, *, creds: str | os.PathLike[str] | None = None,
                    nkey: str | os.PathLike[str] | None = None, user: str | None = None,
                    password: str | None = None, tls_cert: str | os.PathLike[str] | None = None,
                    tls_key: str | os.PathLike[str] | None = None, tls_ca: str | os.PathLike[str] | None = None,
                    name: str = "nex-python") -> ConnectOptions:
    """The :class:`ConnectOptions` of :func:`connect`'s arguments; BadRequest for options that do not
    go together, a bad server URL, or a file that is not there."""
    files = {"creds": creds, "nkey": nkey, "tls_cert": tls_cert, "tls_key": tls_key, "tls_ca": tls_ca}
    for option, path in files.items():
        if path is not None and not Path(path).is_file():
            raise BadRequest(f"{option}: no file {os.fspath(path)!r}")
    text = {k: os.fspath(v) if v is not None else None for k, v in files.items()}
    url = servers if servers is None or isinstance(servers, str) else ",".join(servers)
    try:
        return ConnectOptions.from_url(
            url, creds=text["creds"], nkey_seed_file=text["nkey"], user=user, password=password,
            tls_cert=text["tls_cert"], tls_key=text["tls_key"], tls_ca=text["tls_ca"], name=name)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
