"""``@handler`` and the registry that maps a task type to its handler and contract."""

from __future__ import annotations

import importlib
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

if TYPE_CHECKING:
    from .context import TaskContext

__all__ = [
    "HandlerSpec",
    "Registry",
    "ScheduleDeclaration",
    "default_registry",
    "handler",
    "load_handler_modules",
]

HandlerFn = Callable[[Any, "TaskContext"], Awaitable[Any]]
F = TypeVar("F", bound=HandlerFn)

_json_any = msgspec.json.Decoder()

#: A recurring task declared in code: the keys of a ``SCHEDULES_FILE`` entry (``name``,
#: ``cron``, ``payload``, ``priority``, ``timezone``, ``misfire``, ...). ``task_type`` is filled
#: in from the handler. The scheduler validates it at start (streamworker.scheduler).
ScheduleDeclaration = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    task_type: str
    fn: HandlerFn
    contract: type[msgspec.Struct] | None
    max_retries: int | None
    timeout_seconds: float | None
    decoder: msgspec.json.Decoder[Any]

    def decode(self, payload: bytes) -> Any:
        """Payload JSON -> contract instance (or dict when there is no contract).

        Raises msgspec.ValidationError for a contract violation and msgspec.DecodeError for
        JSON that is not a JSON object. The validation message is cleaned of the values it
        quotes (msgspec names a bad enum value, for one), since it ends up in ``dlq_error``
        and statuses, where payload data must never appear.
        """
        try:
            return self.decoder.decode(payload)
        except msgspec.ValidationError as exc:
            raise msgspec.ValidationError(_without_values(str(exc))) from None
        except (UnicodeDecodeError, RecursionError):
            # msgspec lets these two through for invalid UTF-8 inside a string and for
            # very deep nesting; both are simply JSON we cannot read.
            raise msgspec.DecodeError("payload is not valid UTF-8 JSON") from None


_QUOTED = re.compile(r"['\"].*['\"]", re.DOTALL)
_UNKNOWN_FIELD = re.compile(r"unknown field `.*`", re.DOTALL)


def _without_values(message: str) -> str:
    """``Invalid enum value 'Jane Doe' - at `$.kind``` -> ``Invalid enum value … - at `$.kind```.

    The path after `` - at `` stays (msgspec writes dict keys as ``[...]``, so it only holds
    contract field names); quoted values and unknown field names before it are cut out.
    """
    head, sep, path = message.rpartition(" - at `")
    if not sep:
        head, path = message, ""
    head = _UNKNOWN_FIELD.sub("unknown field", _QUOTED.sub("…", head))
    return (head + sep + path)[:300]


class Registry:
    """Task type -> handler. The worker, the producer and the API all look types up here."""

    def __init__(self) -> None:
        self._specs: dict[str, HandlerSpec] = {}
        self._schedules: list[dict[str, Any]] = []

    def handler(
        self,
        task_type: str,
        *,
        contract: type[msgspec.Struct] | None = None,
        max_retries: int | None = None,
        timeout_seconds: float | None = None,
        schedule: str | None = None,
        schedules: Sequence[ScheduleDeclaration] = (),
    ) -> Callable[[F], F]:
        """``schedule="0 9 * * *"`` (or ``schedules=[{...}]``) also declares recurring tasks."""
        if not task_type or any(c.isspace() for c in task_type):
            raise ValueError(f"invalid task type name {task_type!r}")
        if max_retries is not None and max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if timeout_seconds is not None and timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be > 0")

        def register(fn: F) -> F:
            existing = self._specs.get(task_type)
            if existing is not None and existing.fn is not fn:
                raise ValueError(f"task type {task_type!r} already has a handler")
            decoder: msgspec.json.Decoder[Any] = (
                msgspec.json.Decoder(contract) if contract else msgspec.json.Decoder(dict[str, Any])
            )
            self._specs[task_type] = HandlerSpec(
                task_type, fn, contract, max_retries, timeout_seconds, decoder
            )
            if existing is None:
                if schedule is not None:
                    self.add_schedule(task_type, {"name": task_type, "cron": schedule})
                for declaration in schedules:
                    self.add_schedule(task_type, declaration)
            return fn

        return register

    def add_schedule(self, task_type: str, declaration: ScheduleDeclaration) -> None:
        """Declare a recurring ``task_type`` (its handler may live in another module)."""
        if not isinstance(declaration, Mapping):
            raise TypeError("a schedule declaration is a mapping (name, cron, payload, ...)")
        entry = dict(declaration)
        entry.setdefault("task_type", task_type)
        entry.setdefault("name", task_type)
        self._schedules.append(entry)

    @property
    def schedules(self) -> tuple[dict[str, Any], ...]:
        """Recurring tasks declared in code, in declaration order (copies)."""
        return tuple(dict(entry) for entry in self._schedules)

    def get(self, task_type: str) -> HandlerSpec | None:
        return self._specs.get(task_type)

    def __contains__(self, task_type: object) -> bool:
        return task_type in self._specs

    def __iter__(self) -> Iterator[HandlerSpec]:
        return iter(sorted(self._specs.values(), key=lambda s: s.task_type))

    def __len__(self) -> int:
        return len(self._specs)

    @property
    def contracts(self) -> Mapping[str, type[msgspec.Struct] | None]:
        return {name: spec.contract for name, spec in self._specs.items()}


#: The registry ``@handler`` writes to; the worker uses it unless given another.
default_registry = Registry()


def handler(
    task_type: str,
    *,
    contract: type[msgspec.Struct] | None = None,
    max_retries: int | None = None,
    timeout_seconds: float | None = None,
    schedule: str | None = None,
    schedules: Sequence[ScheduleDeclaration] = (),
) -> Callable[[F], F]:
    """Register an async ``fn(payload, ctx)`` as the handler of ``task_type``.

    ``payload`` is an instance of ``contract`` (a msgspec Struct), or a dict without one.
    ``schedule`` (a cron expression) or ``schedules`` (declarations) make it recurring.
    """
    return default_registry.handler(
        task_type,
        contract=contract,
        max_retries=max_retries,
        timeout_seconds=timeout_seconds,
        schedule=schedule,
        schedules=schedules,
    )


def load_handler_modules(modules: tuple[str, ...]) -> None:
    """Import the modules whose ``@handler`` decorators fill the default registry."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ImportError(f"cannot import handler module {name!r}: {exc}") from exc


def is_json_object(payload: bytes) -> bool:
    try:
        return isinstance(_json_any.decode(payload), dict)
    except msgspec.DecodeError:
        return False
