"""Fixtures: real nats-server processes on free loopback ports, real clients."""

from __future__ import annotations

from pathlib import Path

import pytest

from nex.connection import ConnectOptions, connect
from nex.natsserver import NatsServer


@pytest.fixture
async def nats_server(tmp_path: Path):
    server = NatsServer(store_dir=tmp_path / "jetstream", port=0)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def connect_options(nats_server: NatsServer) -> ConnectOptions:
    return ConnectOptions(servers=[nats_server.url])


@pytest.fixture
async def nc(connect_options: ConnectOptions):
    client = await connect(connect_options, max_reconnect_attempts=0)
    yield client
    await client.close()
