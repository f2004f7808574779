"""Changing STREAM_PARTITIONS on a deployment: drain, then switch (README "Scaling out").

A task's partition follows from its key and the partition count, so a new count moves keys to
other partitions. Switching while the old partitions still hold work could run a key's newer
task before an older one; so the switch is done on a drained system:

1. stop the producers (the API, publishers, schedulers); workers keep running;
2. wait until ``streamworker stats`` shows no backlog (nothing queued or pending);
3. stop the workers;
4. ``STREAM_PARTITIONS=<new> streamworker partitions migrate --from <old>``;
5. start everything with the new ``STREAM_PARTITIONS``.

:class:`Migration` (step 4) refuses while any old priority stream still holds an entry
(queued or pending: the drain is not finished, and moving those could reorder a key). What a
drained system still holds in the old layout is moved, each to its partition in the new one:
delayed tasks, dead letters (their ``source_stream`` is rewritten to the new stream, so they
can be replayed), idempotency keys (with their remaining time to live) and, on Redis Cluster,
task statuses and cancel markers (their hash tag follows the count too). Each item is
written to its new place before it is removed from the old one, so a crash or a repeat of the
command duplicates at most one item and loses none. Old streams are deleted once empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
import redis.asyncio as aioredis

from .keyspace import Keyspace, StreamFamily
from .wire import derive_task_id, unpack_fields

__all__ = ["Migration", "MigrationRefused", "MigrationReport", "partition_of_entry"]

_BATCH = 500


class MigrationRefused(RuntimeError):
    """The old layout still holds queued or pending entries: drain first."""


class MigrationReport(msgspec.Struct, kw_only=True):
    old_partitions: int
    new_partitions: int
    delayed: int = 0
    dead_letters: int = 0
    idempotency_keys: int = 0
    task_keys: int = 0  # status hashes and cancel markers (Redis Cluster only)
    streams_deleted: int = 0
    dry_run: bool = False


def partition_of_entry(keys: Keyspace, fields: Mapping[bytes, bytes], fallback: str) -> int:
    """The new partition of a stored task: by its idempotency key when it has one (so a repeat
    publish finds the key's record there), else by its task id."""
    key = fields.get(b"idempotency_key") or fields.get(b"task_id")
    return keys.partition_for(key.decode(errors="replace") if key else fallback)


class Migration:
    def __init__(self, redis: aioredis.Redis, old: Keyspace, new: Keyspace, group: str) -> None:
        if old.prefix != new.prefix or old.cluster != new.cluster:
            raise ValueError("only the partition count may change")
        self._redis = redis
        self._old = old
        self._new = new
        self._group = group
        self._by_stream = {f.stream: f for f in old.families}

    async def check_drained(self) -> None:
        """Raise :class:`MigrationRefused` naming the streams that still hold entries."""
        pipe = self._redis.pipeline(transaction=False)
        for family in self._old.families:
            pipe.xlen(family.stream)
        lengths = await pipe.execute()
        busy = [
            f"{family.stream} ({length})"
            for family, length in zip(self._old.families, lengths, strict=True)
            if int(length)
        ]
        if busy:
            raise MigrationRefused(
                "the old partitions still hold queued or pending entries: "
                + ", ".join(busy)
                + ". Stop the producers, let the workers finish (streamworker stats shows no"
                " backlog), stop the workers, then migrate."
            )

    async def run(self, *, dry_run: bool = False) -> MigrationReport:
        if self._old.families == self._new.families:
            raise ValueError("the old and new partition counts are the same: nothing to move")
        await self.check_drained()
        report = MigrationReport(
            old_partitions=self._old.partitions,
            new_partitions=self._new.partitions,
            dry_run=dry_run,
        )
        if not dry_run:
            await self._ensure_groups()
        for family in self._old.families:
            report.delayed += await self._move_delayed(family, dry_run)
        for stream in self._old.dead_letter_streams:
            report.dead_letters += await self._move_dead_letters(stream, dry_run)
        report.idempotency_keys = await self._move_idempotency_keys(dry_run)
        if self._new.cluster:
            for name in ("task", "cancelled"):
                report.task_keys += await self._move_task_keys(name, dry_run)
        if not dry_run:
            for family in self._old.families:
                if family.stream not in {f.stream for f in self._new.families}:
                    report.streams_deleted += int(await self._redis.delete(family.stream))
        return report

    async def _ensure_groups(self) -> None:
        # Made at id 0 (as the worker does), so a moved entry is never skipped.
        for family in self._new.families:
            try:
                await self._redis.xgroup_create(family.stream, self._group, id="0", mkstream=True)
            except aioredis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def _move_delayed(self, family: StreamFamily, dry_run: bool) -> int:
        moved = 0
        start = 0  # members before this index stay (their new place is this same set)
        while True:
            batch: Any = await self._redis.zrange(
                family.delayed, start, start + _BATCH - 1, withscores=True
            )
            if not batch:
                return moved
            moving: list[tuple[bytes, float, str]] = []
            for member, score in batch:
                fields = unpack_fields(member)
                partition = partition_of_entry(self._new, fields, member.hex())
                target = self._new.family(family.priority, partition).delayed
                if target != family.delayed:
                    moving.append((member, score, target))
            start += len(batch) - (0 if dry_run else len(moving))
            moved += len(moving)
            if dry_run or not moving:
                continue
            pipe = self._redis.pipeline(transaction=False)
            for member, score, target in moving:
                pipe.zadd(target, {member: score})  # the same member again is a no-op
            await pipe.execute()
            await self._redis.zrem(family.delayed, *[member for member, _, _ in moving])

    async def _move_dead_letters(self, stream: str, dry_run: bool) -> int:
        last: Any = await self._redis.xrevrange(stream, count=1)
        if not last:
            return 0
        end = last[0][0]  # entries added from here on (moved ones) are not looked at again
        moved = 0
        cursor: bytes | str = "-"
        while True:
            batch: Any = await self._redis.xrange(stream, min=cursor, max=end, count=_BATCH)
            if not batch:
                return moved
            cursor = b"(" + batch[-1][0]
            moving = []
            for entry_id, fields in batch:
                target, new_fields = self._new_dead_letter(entry_id, fields)
                if target != stream or new_fields != fields:
                    moving.append((entry_id, target, new_fields))
            moved += len(moving)
            if dry_run or not moving:
                continue
            pipe = self._redis.pipeline(transaction=False)
            for _, target, new_fields in moving:
                pipe.xadd(target, new_fields)  # type: ignore[arg-type]
            await pipe.execute()
            await self._redis.xdel(stream, *[entry_id for entry_id, _, _ in moving])

    def _new_dead_letter(
        self, entry_id: bytes, fields: dict[bytes, bytes]
    ) -> tuple[str, dict[bytes, bytes]]:
        """Where a dead letter goes, and its fields with ``source_stream`` pointing at the
        new layout (a source that is not one of ours is kept as it was)."""
        source = fields.get(b"source_stream", b"").decode(errors="replace")
        family = self._by_stream.get(source)
        fallback = derive_task_id(source, entry_id)
        new_partition = partition_of_entry(self._new, fields, fallback)
        if family is None:
            return self._new.dead_letter_streams[new_partition], dict(fields)
        target = self._new.family(family.priority, new_partition)
        return target.dead_letters, {**fields, b"source_stream": target.stream.encode()}

    async def _move_task_keys(self, name: str, dry_run: bool) -> int:
        """On a cluster a task's keys carry the tag of the partition its id hashes to, which
        depends on the count: copy each (DUMP/RESTORE keeps type, content and expiry)."""
        moved = 0
        start = len(self._new.prefix)
        async for raw in self._redis.scan_iter(match=self._new.task_key_pattern(name)):
            key = raw.decode(errors="replace")
            task_id = key[start:].partition("}")[2][len(name) + 1 :]
            target = (self._new.status if name == "task" else self._new.cancelled)(task_id)
            if target == key:
                continue
            moved += 1
            if dry_run:
                continue
            dumped, ttl_ms = await self._redis.dump(raw), await self._redis.pttl(raw)
            if dumped is not None:
                try:
                    await self._redis.restore(target, max(int(ttl_ms), 0), dumped)
                except aioredis.ResponseError as exc:
                    if "BUSYKEY" not in str(exc):  # already copied by an earlier run
                        raise
            await self._redis.delete(raw)
        return moved

    async def _move_idempotency_keys(self, dry_run: bool) -> int:
        moved = 0
        for partition in range(self._old.partitions):
            marker = "\x00"
            pattern = self._old.idempotency(marker, partition).replace(marker, "*")
            pattern = pattern.replace("{", "\\{").replace("}", "\\}")
            prefix_len = len(self._old.idempotency("", partition))
            async for raw in self._redis.scan_iter(match=pattern, count=_BATCH):
                name = raw.decode(errors="replace")
                key = name[prefix_len:]
                target = self._new.idempotency(key, self._new.partition_for(key))
                if target == name:
                    continue
                moved += 1
                if dry_run:
                    continue
                value, ttl_ms = await self._redis.get(raw), await self._redis.pttl(raw)
                if value is not None:
                    await self._redis.set(target, value, nx=True, px=max(int(ttl_ms), 1000))
                await self._redis.delete(raw)
        return moved
