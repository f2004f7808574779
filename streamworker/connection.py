"""redis-py connections that pack commands with hiredis's C packer.

redis-py's asyncio connection packs every argument in Python (about a tenth of the worker's
CPU per task on the hot path, where a batch's acks and status keys are many arguments) and
sends every command through ``asyncio.wait_for`` when a socket timeout is set (a new task per
command). These classes change only that:

- ``pack_command`` is ``hiredis.pack_command``; a value hiredis does not take (None, a bool,
  a dict) goes through redis-py's own packer, so it fails with redis-py's usual DataError;
- a send writes to the transport directly and waits under the socket timeout only when the
  kernel did not take all of it (the only case in which the write can block);
- ``read_replies`` reads the replies of several commands sent together straight from the
  hiredis parser, under one timeout for them all (``read_response`` sets up a timeout and
  goes through three layers per reply): the broker's batches (a read with its acks) use it.

Everything else (parsing, health checks, retries, TLS, Unix sockets) is redis-py's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import hiredis
import redis._parsers.hiredis as redis_hiredis
import redis.exceptions as redis_errors
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    ConnectionPool,
    SSLConnection,
    UnixDomainSocketConnection,
)

__all__ = ["KeptConnection", "read_replies", "use_hiredis_packing"]


class _HiredisPacking(AbstractConnection):
    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0]
        if (isinstance(first, str) and " " in first) or (
            isinstance(first, bytes) and b" " in first
        ):
            args = (*first.split(), *args[1:])  # "SCRIPT LOAD" and the like go as two words
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            return super().pack_command(*args)  # raises redis-py's DataError for the value

    def pack_commands(self, commands: Iterable[Iterable[Any]]) -> list[bytes]:
        return [b"".join(b for command in commands for b in self.pack_command(*command))]

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        # As redis-py's own, except for when the write is put under ``wait_for``.
        if not self.is_connected:
            await self.connect_check_health(check_health=False)
        if (
            check_health
            and self.health_check_interval
            and asyncio.get_running_loop().time() > self.next_health_check
        ):
            # redis-py's check_health, whose test is inlined: a coroutine made and awaited
            # once a send only to find the connection was used a moment ago.
            await self.check_health()  # type: ignore[no-untyped-call]
        if isinstance(command, str):
            command = command.encode()
        if isinstance(command, bytes):
            command = [command]
        writer = self._writer
        try:
            assert writer is not None
            writer.writelines(command)
            if self.socket_timeout and writer.transport.get_write_buffer_size():
                # Part of it waits in user space, so drain may block: bound it.
                await asyncio.wait_for(writer.drain(), self.socket_timeout)
            else:
                await writer.drain()  # returns at once unless the transport is closing
        except BaseException as exc:
            # As redis-py: a half-sent command leaves the connection unusable.
            error = await self._dropped(exc, "writing to")
            if error is exc:
                raise
            raise error from exc

    async def read_replies(self, count: int) -> list[Any]:
        """The next ``count`` replies; an error reply is returned as its exception (as
        redis-py would raise it), not raised. Any failure drops the connection, since it is
        then out of step with its commands."""
        parser = self._parser
        if not isinstance(parser, redis_hiredis._AsyncHiredisParser):
            return await read_each(self, count)  # pragma: no cover
        reader = parser._reader
        if reader is None or not parser._connected:
            raise redis_errors.ConnectionError("Connection closed by server.")
        replies: list[Any] = []
        try:
            async with asyncio.timeout(self.socket_timeout):
                while len(replies) < count:
                    reply = reader.gets()
                    while reply is _NOT_ENOUGH_DATA or reply is False:  # False: older redis-py
                        await parser.read_from_socket()
                        reply = reader.gets()
                    if isinstance(reply, redis_errors.ConnectionError):
                        raise reply  # e.g. LOADING: redis-py raises these too
                    replies.append(reply)
        except BaseException as exc:
            error = await self._dropped(exc, "reading from")
            if error is exc:
                raise
            raise error from exc
        if self.health_check_interval:
            self.next_health_check = asyncio.get_running_loop().time() + self.health_check_interval
        return replies

    async def _dropped(self, exc: BaseException, doing: str) -> BaseException:
        """Drop the connection after a failed socket operation; what to raise for ``exc``
        (redis-py's own errors for a timeout or an OS error, else ``exc`` itself)."""
        await self.disconnect(nowait=True)
        if isinstance(exc, TimeoutError):  # asyncio's (wait_for, timeout)
            return redis_errors.TimeoutError(f"Timeout {doing} socket")
        if isinstance(exc, OSError):
            return redis_errors.ConnectionError(f"Error while {doing} socket: {exc}")
        return exc


class KeptConnection:
    """A connection of ``redis``'s pool kept between one caller's calls instead of given
    back each time. redis-py's ``execute_command`` costs about 40 us of CPU more per call
    than sending the packed command and reading the reply directly (its retry wrapper, the
    pool's check of the connection with a zero-timeout read, the response callbacks): on a
    call made every few hundred tasks, that was a tenth of the worker's CPU. A second
    caller while the connection is out gets one of the pool's; one that failed is never
    kept. Single Redis only (a cluster client has no one pool)."""

    def __init__(self, redis: Any) -> None:
        self._redis = redis
        self._kept: list[AbstractConnection] = []

    async def take(self) -> AbstractConnection:
        if self._kept:
            return self._kept.pop()
        conn: AbstractConnection = await self._redis.connection_pool.get_connection()
        return conn

    async def give_back(self, conn: AbstractConnection, *, ok: bool) -> None:
        """Keep ``conn`` for the next call if it is in step (``ok``), else drop it."""
        if ok and not self._kept:
            self._kept.append(conn)
            return
        if not ok:
            await conn.disconnect()
        await self._redis.connection_pool.release(conn)

    async def call(self, *args: Any) -> Any:
        """Send one command and return its reply (an error reply as its exception, not
        raised; a failed connection raises as redis-py would)."""
        conn = await self.take()
        ok = False
        try:
            await conn.send_packed_command(conn.pack_command(*args))
            (reply,) = await read_replies(conn, 1)
            ok = True
        finally:
            await self.give_back(conn, ok=ok)
        return reply

    async def aclose(self) -> None:
        """Give the kept connection back to the pool."""
        while self._kept:
            await self._redis.connection_pool.release(self._kept.pop())


async def read_replies(conn: AbstractConnection, count: int) -> list[Any]:
    """The next ``count`` replies on any redis-py connection, error replies as exceptions:
    straight from the parser on ours, else one ``read_response`` each."""
    if isinstance(conn, _HiredisPacking):
        return await conn.read_replies(count)
    return await read_each(conn, count)


async def read_each(conn: AbstractConnection, count: int) -> list[Any]:
    """``read_replies`` through redis-py's ``read_response``, one reply at a time."""
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(await conn.read_response())
        except redis_errors.ResponseError as exc:
            replies.append(exc)  # an error reply: the connection stays in step
    return replies


# What the hiredis reader returns while a reply is incomplete, as redis-py configures it
# (older versions leave hiredis's own False; no RESP2 reply parses to False).
_NOT_ENOUGH_DATA = getattr(redis_hiredis, "NOT_ENOUGH_DATA", False)


class FastConnection(_HiredisPacking, Connection):
    pass


class FastSSLConnection(_HiredisPacking, SSLConnection):
    pass


class FastUnixDomainSocketConnection(_HiredisPacking, UnixDomainSocketConnection):
    pass


_FAST: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: FastConnection,
    SSLConnection: FastSSLConnection,
    UnixDomainSocketConnection: FastUnixDomainSocketConnection,
}


def use_hiredis_packing(pool: ConnectionPool) -> None:
    """Make ``pool`` (made from a URL, before its first connection) use the classes above."""
    pool.connection_class = _FAST.get(pool.connection_class, pool.connection_class)
