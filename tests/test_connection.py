"""The client's connections: hiredis's packer gives the bytes redis-py's own would, refuses
what redis-py refuses, and a command too big for one socket write still arrives whole; the
replies of commands sent together are read in order, error replies as exceptions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.exceptions import DataError, NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streamworker import Producer, Settings
from streamworker.broker import Broker, connect
from streamworker.connection import (
    FastConnection,
    FastSSLConnection,
    FastUnixDomainSocketConnection,
)
from streamworker.embedded import EmbeddedRedis, free_port
from streamworker.keyspace import Keyspace
from streamworker.status import StatusStore
from tests.conftest import recording_registry, running_worker, status_is, wait_for

pytestmark = pytest.mark.anyio

COMMANDS: list[tuple[Any, ...]] = [
    ("SET", "key", "value"),
    ("XADD", b"stream", "*", "payload", '{"name":"ünïcødé ✓"}', "n", 12, "f", 0.25),
    ("EVALSHA", "a" * 40, 2, "k1", "k2", -3, 1e20, b"\x00\xff"),
    ("SCRIPT LOAD", "return 1"),  # two words in one argument go as two
    (b"CLIENT SETNAME", b"me"),
    ("SET", "view", memoryview(b"bytes")),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: str(c[0]))
def test_the_packer_gives_redis_pys_bytes(command: tuple[Any, ...]) -> None:
    ours = b"".join(FastConnection().pack_command(*command))
    theirs = b"".join(bytes(part) for part in Connection().pack_command(*command))
    assert ours == theirs


def test_pipelines_pack_as_one_buffer_with_the_same_bytes() -> None:
    ours = b"".join(FastConnection().pack_commands(COMMANDS))
    theirs = b"".join(bytes(part) for part in Connection().pack_commands(COMMANDS))
    assert ours == theirs


@pytest.mark.parametrize("value", [None, True, {"a": 1}], ids=["none", "bool", "dict"])
def test_what_redis_py_refuses_is_refused_with_its_error(value: Any) -> None:
    with pytest.raises(DataError, match="Invalid input"):
        FastConnection().pack_command("SET", "key", value)


async def test_the_client_uses_it_and_a_big_command_arrives_whole(
    redis_server: EmbeddedRedis,
) -> None:
    client = connect(redis_server.url)
    try:
        assert client.connection_pool.connection_class is FastConnection
        big = b"x" * (8 * 1024 * 1024)  # more than the kernel takes in one write
        await client.set("sw-test:big", big)
        assert await client.strlen("sw-test:big") == len(big)
        pipe = client.pipeline(transaction=False)
        pipe.set("sw-test:small", "1").get("sw-test:small").delete("sw-test:big", "sw-test:small")
        assert await pipe.execute() == [True, b"1", 2]
    finally:
        await client.aclose()


async def test_replies_read_together_come_in_order_with_errors_as_exceptions(
    redis_server: EmbeddedRedis,
) -> None:
    client = connect(redis_server.url, max_connections=1)  # the same connection throughout
    pool = client.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        big = b"y" * (3 * 1024 * 1024)  # a reply that arrives in many socket reads
        await conn.send_packed_command(
            conn.pack_commands(
                [
                    ("SET", "sw-test:big", big),
                    ("GET", "sw-test:big"),
                    ("LPUSH", "sw-test:big", "x"),  # WRONGTYPE
                    ("EVALSHA", "0" * 40, 0),  # NOSCRIPT
                    ("PING",),
                ]
            )
        )
        ok, value, wrong, noscript, pong = await conn.read_replies(5)
        assert ok is True or ok == b"OK"
        assert value == big
        assert isinstance(wrong, aioredis.ResponseError) and "WRONGTYPE" in str(wrong)
        assert isinstance(noscript, NoScriptError)
        assert pong in (True, b"PONG")
        await conn.send_packed_command(conn.pack_command("DEL", "sw-test:big"))
        assert await conn.read_replies(1) == [1]  # still in step
    finally:
        await pool.release(conn)
        await client.aclose()


async def test_a_reply_that_does_not_come_in_time_drops_the_connection(
    redis_server: EmbeddedRedis,
) -> None:
    client = connect(redis_server.url, socket_timeout=0.2)
    pool = client.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        await conn.send_packed_command(conn.pack_command("BLPOP", "sw-test:never", 2))
        with pytest.raises(RedisTimeoutError):
            await conn.read_replies(1)
        assert not conn.is_connected  # its late reply can never be taken for another's
    finally:
        await pool.release(conn)
        await client.aclose()


async def test_an_error_reply_leaves_the_connection_usable(redis_server: EmbeddedRedis) -> None:
    client = connect(redis_server.url, max_connections=1)  # the same connection throughout
    try:
        await client.set("sw-test:text", "not a list")
        with pytest.raises(aioredis.ResponseError, match="WRONGTYPE"):
            await client.lpush("sw-test:text", "x")
        assert await client.get("sw-test:text") == b"not a list"
    finally:
        await client.delete("sw-test:text")
        await client.aclose()


async def test_a_unix_socket_url_works_end_to_end(tmp_path: Path, settings: Settings) -> None:
    # REDIS_URL=unix://... (documented) used to fail: keepalive is a TCP option.
    socket_path = tmp_path / "redis.sock"
    unix = ("--unixsocket", str(socket_path), "--unixsocketperm", "700")
    with EmbeddedRedis(extra_args=unix):
        url = f"unix://{socket_path}"
        client = connect(url)
        assert client.connection_pool.connection_class is FastUnixDomainSocketConnection
        settings = settings.with_overrides(redis_url=url)
        ran: list[str] = []
        producer = Producer.from_settings(settings)
        try:
            task_id = await producer.publish("job", {"text": "ünïcødé"})
            async with running_worker(settings, recording_registry(ran, "job")):
                await wait_for(lambda: status_is(client, settings, task_id, "completed"))
            assert ran == [task_id]
        finally:
            await producer.aclose()
            await client.aclose()


async def test_a_tls_url_gets_its_own_fast_class(tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    tls_port = free_port()
    tls = (
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(cert_file),
        "--tls-key-file", str(key_file),
        "--tls-ca-cert-file", str(ca_file),
        "--tls-auth-clients", "no",
    )  # fmt: skip
    with EmbeddedRedis(extra_args=tls):  # the plain port answers the readiness check
        client = connect(f"rediss://127.0.0.1:{tls_port}/0", ssl_ca_certs=str(ca_file))
        try:
            assert client.connection_pool.connection_class is FastSSLConnection
            big = b"y" * (4 * 1024 * 1024)
            await client.set("sw-test:tls", big)
            assert await client.get("sw-test:tls") == big
        finally:
            await client.aclose()


async def test_the_broker_keeps_one_connection_and_a_failed_one_goes_back_closed(
    redis_server: EmbeddedRedis, redis: aioredis.Redis
) -> None:
    client = connect(redis_server.url)
    keys = Keyspace("sw-test")
    broker = Broker(client, keys, "g", status=StatusStore(keys, 60))
    try:
        assert await broker.send_in_order([[("PING",)]]) in ([True], [b"PONG"])
        (first,) = broker._connection._kept
        await broker.send_in_order([[("PING",)]])
        assert broker._connection._kept == [first]  # taken and kept again, not from the pool
        await redis.client_kill_filter(skipme=True)  # the server drops it
        assert await broker.send_in_order([[("SET", "sw-test:k", "v")]]) == [b"OK"]  # raw
        # The failed connection went back to the pool, closed; the resend took one from the
        # pool (redis-py may hand back the same object, connected afresh) and kept it.
        (second,) = broker._connection._kept
        assert second.is_connected
        assert await redis.get("sw-test:k") == b"v"
    finally:
        await client.aclose()
