from nex.natsserver import NatsServer


async def test_embedded_server_serves_jetstream(nats_server: NatsServer, nc):
    js = nc.jetstream()
    info = await js.account_info()
    assert info.limits is not None
    kv = await js.create_key_value(bucket="probe")
    await kv.put("k", b"v")
    assert (await kv.get("k")).value == b"v"
