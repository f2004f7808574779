"""Stream entry <-> Task: wire format v1 (CONTRACT.md §2).

Entries are flat string fields so any producer can publish with a plain XADD. Decoding never
raises on bad input: it returns a :class:`Rejected` with the dead-letter reason instead, so
the worker can move the entry to ``failed_tasks`` and keep going.
"""

from __future__ import annotations

import math
import os
import struct
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

__all__ = [
    "DLQ_REASONS",
    "MAX_FIELDS",
    "Delivery",
    "Rejected",
    "Task",
    "decode_task",
    "derive_task_id",
    "encode_entries",
    "format_millis",
    "format_time",
    "new_task_ids",
    "pack_fields",
    "parse_time",
    "unpack_fields",
]

DLQ_REASONS: Final = (
    "max_retries_exceeded",
    "max_deliveries_exceeded",
    "malformed",
    "too_large",
    "unknown_task_type",
    "contract_violation",
    "permanent_failure",
)

#: More fields than this is not a task but garbage: refused at the door, because a Lua script
#: cannot pass more than ~8000 arguments to one command and such an entry could never be
#: parked for a retry or moved back from the delayed set.
MAX_FIELDS: Final = 1000

#: A max_retries above this is a mistake rather than a policy (with the 300 s backoff cap it
#: would retry for longer than a year).
MAX_RETRIES_CEILING: Final = 100_000

# A fixed namespace so an entry without task_id gets the same id on every delivery.
_TASK_ID_NAMESPACE: Final = uuid.UUID("5f0c2d55-8a3e-4d7e-9f43-2a4c1b9d6e01")

Fields = dict[bytes, bytes]


class Delivery:
    """One stream entry as read by a consumer: where it came from and its raw fields."""

    __slots__ = (
        "cancelled",
        "deliveries",
        "entry_id",
        "family_index",
        "fields",
        "gated",
        "read_at",
        "task",
    )

    def __init__(
        self,
        family_index: int,
        entry_id: bytes,
        fields: Fields,
        read_at: float,
        deliveries: int = 1,
    ) -> None:
        self.family_index = family_index
        self.entry_id = entry_id
        self.fields = fields  # empty when the stream entry was deleted while pending
        self.read_at = read_at
        self.deliveries = deliveries  # Redis's delivery count, this delivery included
        self.cancelled = False  # its task was cancelled before it started
        self.gated = False  # passed the start gate (see Broker.begin)
        #: The task while its handler runs (set and cleared by the runner), for the writer
        #: of ``running`` statuses (``worker/leases.py``); it clears it once written.
        self.task: Task | None = None

    @property
    def task_id_field(self) -> bytes | None:
        return self.fields.get(b"task_id")

    @property
    def enqueued_at(self) -> float:
        """Epoch seconds at which the entry was added, from its stream id."""
        # float() of the millisecond part is exact (13 digits) and cheaper than int().
        return float(self.entry_id.partition(b"-")[0]) / 1000.0


class Task(msgspec.Struct, frozen=True, kw_only=True):
    """The decoded envelope. ``payload`` stays raw JSON until the handler's contract decodes it."""

    task_id: str
    task_type: str
    payload: bytes
    priority: str
    retry_count: int = 0
    max_retries: int | None = None
    timeout_seconds: float | None = None
    created_at: str | None = None
    scheduled_for: float | None = None  # epoch seconds
    idempotency_key: str | None = None
    correlation_id: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None


class Rejected(msgspec.Struct, frozen=True):
    """An entry that can never succeed, with its dead-letter reason and a payload-free error."""

    reason: str
    error: str
    task_id: str | None = None
    task_type: str | None = None


def derive_task_id(stream: str, entry_id: bytes | str) -> str:
    eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return str(uuid.uuid5(_TASK_ID_NAMESPACE, f"{stream}/{eid}"))


# (whole second, its formatted prefix) and (millisecond, its text): each replaced as one
# tuple, so a thread never sees one half of a pair updated without the other.
_second: tuple[int, str] = (-1, "")
_last: tuple[int, str] = (-1, "")


def format_time(ts: float) -> str:
    """RFC 3339 UTC with milliseconds, e.g. ``2025-09-01T12:00:00.000Z``."""
    # Called several times per task on the hot paths: the text of the last millisecond is
    # kept (many tasks share one under load); the milliseconds are truncated, as isoformat
    # does.
    millis = math.floor(ts * 1000)
    last = _last
    return last[1] if last[0] == millis else format_millis(millis)


def format_millis(millis: int) -> str:
    """:func:`format_time` of a time in whole milliseconds since the epoch (exact: no float
    division on the way)."""
    global _second, _last
    last = _last
    if last[0] == millis:
        return last[1]
    second, ms = divmod(millis, 1000)
    cached = _second
    if cached[0] != second:  # the date part is formatted once a second
        cached = _second = (
            second,
            datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S."),
        )
    text = f"{cached[1]}{ms:03d}Z"
    _last = (millis, text)
    return text


# The variant nibble of an RFC 4122 UUID is 10xx: map any random hex digit onto 8, 9, a or b.
_VARIANT: Final = {f"{n:x}": f"{8 | (n & 3):x}" for n in range(16)}


def new_task_ids(count: int) -> list[str]:
    """``count`` random (version 4) UUIDs as strings, from one read of the system's randomness.

    Same format and randomness as ``str(uuid.uuid4())`` (122 random bits), at a fraction of
    the cost when a batch of tasks is published.
    """
    digits = os.urandom(16 * count).hex()
    ids = []
    for start in range(0, 32 * count, 32):
        h = digits[start : start + 32]
        ids.append(f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}")
    return ids


_entries_encoder = msgspec.msgpack.Encoder()


def encode_entries(entries: list[list[str | bytes]]) -> bytes:
    """A batch of entries (each a flat field, value, ... list of str) as one MessagePack value
    for the ``publish_batch`` script. Values must be str: Redis's cmsgpack reads no bin type."""
    return _entries_encoder.encode(entries)


def parse_time(value: str) -> float:
    """RFC 3339 -> epoch seconds. A time without a zone is refused rather than guessed."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("is not an RFC 3339 date-time") from None
    if moment.tzinfo is None:
        raise ValueError("has no time zone (use e.g. 2025-09-01T14:00:00Z)")
    return moment.timestamp()


def decode_task(
    fields: Fields, stream: str, entry_id: bytes, priority: str, max_payload_bytes: int
) -> Task | Rejected:
    """Check the envelope of one entry. The payload's JSON is checked later, by its contract."""
    # Runs once a task: the fields are read with one bound ``get`` and decoded inline.
    task_id: str | None = None
    task_type: str | None = None
    get = fields.get
    try:
        raw = get(b"task_id")
        task_id = raw.decode() if raw else derive_task_id(stream, entry_id)
        if len(fields) > MAX_FIELDS:
            return Rejected(
                "malformed", f"{len(fields)} fields, over the {MAX_FIELDS} field limit", task_id
            )
        raw = get(b"task_type")
        task_type = raw.decode() if raw is not None else None
        if not task_type:
            return Rejected("malformed", "missing task_type", task_id)
        payload = get(b"payload")
        if payload is None:
            return Rejected("malformed", "missing payload", task_id, task_type)
        if len(payload) > max_payload_bytes:
            return Rejected(
                "too_large",
                f"payload is {len(payload)} bytes, over the {max_payload_bytes} byte limit",
                task_id,
                task_type,
            )
        field = "retry_count"
        raw = get(b"retry_count")
        # Absent on a first publish (the producer writes none): no call for the common case.
        retry_count = 0 if raw is None or raw == b"0" else (_nonnegative_int(raw, 0) or 0)
        field = "max_retries"
        raw = get(b"max_retries")
        max_retries = None if raw is None else _nonnegative_int(raw, None)
        if max_retries is not None and max_retries > MAX_RETRIES_CEILING:
            raise ValueError(f"must be at most {MAX_RETRIES_CEILING}")
        field = "timeout_seconds"
        raw = get(b"timeout_seconds")
        timeout = None if raw is None else _positive_number(raw)
        field = "scheduled_for"
        raw = get(b"scheduled_for")
        scheduled_for = parse_time(raw.decode()) if raw else None
        field = "envelope"
        created_at = get(b"created_at")
        idempotency_key = get(b"idempotency_key")
        correlation_id = get(b"correlation_id")
        traceparent = get(b"traceparent")
        tracestate = get(b"tracestate")
        return Task(
            task_id=task_id,
            task_type=task_type,
            payload=payload,
            priority=priority,
            retry_count=retry_count,
            max_retries=max_retries,
            timeout_seconds=timeout,
            created_at=None if created_at is None else created_at.decode(),
            scheduled_for=scheduled_for,
            idempotency_key=None if idempotency_key is None else idempotency_key.decode(),
            correlation_id=None if correlation_id is None else correlation_id.decode(),
            traceparent=None if traceparent is None else traceparent.decode(),
            tracestate=None if tracestate is None else tracestate.decode(),
        )
    except UnicodeDecodeError:
        return Rejected("malformed", "a field is not valid UTF-8", task_id, task_type)
    except ValueError as exc:
        return Rejected("malformed", f"invalid {field}: {exc}", task_id, task_type)


def _nonnegative_int(raw: bytes | None, default: int | None) -> int | None:
    if raw is None or raw == b"":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError("must be an integer >= 0") from None
    if value < 0:
        raise ValueError("must be an integer >= 0")
    return value


def _positive_number(raw: bytes | None) -> float | None:
    if raw is None or raw == b"":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("must be a number > 0") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be a number > 0")
    return value


# -- delayed-set members ---------------------------------------------------------------------
# A parked entry is its field list as a MessagePack array of *str*-typed byte strings: Redis's
# built-in cmsgpack (which the Lua scripts use to XADD the fields back unchanged) reads the str
# family for any bytes but not the newer bin family, so this small encoder writes str headers
# and stays binary safe.


def _header(small: int, n: int, codes: tuple[int, int, int], tiny_limit: int) -> bytes:
    if n < tiny_limit:
        return bytes([small | n])
    if codes[0] and n < 256:
        return bytes([codes[0], n])
    if n < 65536:
        return bytes([codes[1]]) + struct.pack(">H", n)
    return bytes([codes[2]]) + struct.pack(">I", n)


def pack_fields(
    fields: Mapping[str, str | bytes] | Mapping[bytes, bytes] | Mapping[Any, Any],
) -> bytes:
    parts = [_header(0x90, 2 * len(fields), (0, 0xDC, 0xDD), 16)]
    for key, value in fields.items():
        for item in (key, value):
            raw = item.encode() if isinstance(item, str) else bytes(item)
            parts.append(_header(0xA0, len(raw), (0xD9, 0xDA, 0xDB), 32))
            parts.append(raw)
    return b"".join(parts)


def unpack_fields(member: bytes) -> dict[bytes, bytes]:
    """The inverse of :func:`pack_fields` (for inspecting the delayed set)."""
    view = memoryview(member)
    count, pos = _read_len(view, 0, 0x90, 16, (0, 0xDC, 0xDD))
    items: list[bytes] = []
    for _ in range(count):
        length, pos = _read_len(view, pos, 0xA0, 32, (0xD9, 0xDA, 0xDB))
        items.append(bytes(view[pos : pos + length]))
        pos += length
    return dict(zip(items[::2], items[1::2], strict=True))


def _read_len(
    view: memoryview, pos: int, small: int, tiny_limit: int, codes: tuple[int, int, int]
) -> tuple[int, int]:
    first = view[pos]
    if small <= first < small + tiny_limit:
        return first - small, pos + 1
    if codes[0] and first == codes[0]:
        return view[pos + 1], pos + 2
    if first == codes[1]:
        return struct.unpack_from(">H", view, pos + 1)[0], pos + 3
    if first == codes[2]:
        return struct.unpack_from(">I", view, pos + 1)[0], pos + 5
    raise ValueError("not a packed field list")
