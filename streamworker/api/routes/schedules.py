"""``/api/v1/schedules``: list, run now, pause, resume, as ``streamworker schedules``.

The schedules are the app's registry declarations plus ``SCHEDULES_FILE``, read per request
(a file an operator edited is seen without a restart; a broken one answers 500 naming the
schedule, while the rest of the API keeps working).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import get, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException, NotFoundException
from litestar.openapi import ResponseSpec
from litestar.params import PathParameter

from ...registry import default_registry
from ...scheduler import (
    ScheduleControl,
    ScheduleError,
    ScheduleView,
    UnknownSchedule,
    load_schedules,
)
from ...settings import ConfigError
from ..models import ErrorBody
from ..services import ApiServices, services

__all__ = ["list_schedules", "pause_schedule", "resume_schedule", "run_schedule"]

ScheduleName = Annotated[
    str, PathParameter(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Schedule name")
]

_errors = {
    401: ResponseSpec(ErrorBody, description="Missing or invalid bearer token"),
    500: ResponseSpec(ErrorBody, description="The schedules configuration is invalid"),
    503: ResponseSpec(ErrorBody, description="Redis unavailable; see Retry-After"),
}
_named_errors = {**_errors, 404: ResponseSpec(ErrorBody, description="No such schedule")}


class ScheduleList(msgspec.Struct, kw_only=True):
    schedules: list[ScheduleView]


class ScheduleRun(msgspec.Struct, kw_only=True):
    schedule: str
    task_id: str


class SchedulePaused(msgspec.Struct, kw_only=True):
    schedule: str
    paused: bool


def _control(svc: ApiServices) -> ScheduleControl:
    registry = svc.registry if svc.registry is not None else default_registry
    try:
        schedules = load_schedules(svc.settings, registry)
    except (ScheduleError, ConfigError) as exc:
        raise HTTPException(status_code=500, detail=str(exc)) from None
    return ScheduleControl(svc.settings, svc.redis, schedules, registry=registry)


def _not_found(exc: UnknownSchedule) -> NotFoundException:
    return NotFoundException(str(exc))


@get(
    "/schedules",
    summary="Recurring tasks with next fire time, paused flag and last fire",
    tags=["schedules"],
    responses=_errors,
)
async def list_schedules(state: State) -> ScheduleList:
    return ScheduleList(schedules=await _control(services(state)).list())


@post(
    "/schedules/{name:str}/run",
    status_code=202,
    summary="Publish one task of the schedule now (its regular times are unchanged)",
    tags=["schedules"],
    responses=_named_errors,
)
async def run_schedule(state: State, name: ScheduleName) -> ScheduleRun:
    try:
        task_id = await _control(services(state)).run_now(name)
    except UnknownSchedule as exc:
        raise _not_found(exc) from None
    return ScheduleRun(schedule=name, task_id=task_id)


@post(
    "/schedules/{name:str}/pause",
    status_code=200,
    summary="Stop firing the schedule until resumed (occurrences meanwhile are dropped)",
    tags=["schedules"],
    responses=_named_errors,
)
async def pause_schedule(state: State, name: ScheduleName) -> SchedulePaused:
    try:
        await _control(services(state)).pause(name)
    except UnknownSchedule as exc:
        raise _not_found(exc) from None
    return SchedulePaused(schedule=name, paused=True)


@post(
    "/schedules/{name:str}/resume",
    status_code=200,
    summary="Fire the schedule again from its next occurrence",
    tags=["schedules"],
    responses=_named_errors,
)
async def resume_schedule(state: State, name: ScheduleName) -> SchedulePaused:
    try:
        await _control(services(state)).resume(name)
    except UnknownSchedule as exc:
        raise _not_found(exc) from None
    return SchedulePaused(schedule=name, paused=False)
