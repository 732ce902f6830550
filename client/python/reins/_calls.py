"""What the sync and asyncio flavours share: server addresses, request builders, the task
snapshot handlers see. One place builds each request, so a new field (budgets, …) is added
once for both clients."""

from __future__ import annotations

import dataclasses
import datetime
import urllib.parse
from collections.abc import Mapping
from typing import Any

from google.protobuf import duration_pb2

from ._proto import tasks_pb2
from ._values import from_value, to_struct

#: Where the task service's methods live.
TASK_SERVICE = "/reins.v1.TaskService/"
WORKER_CONNECT = "/reins.v1.WorkerService/Connect"

TERMINAL_STATES = frozenset(
    {
        tasks_pb2.TASK_STATE_COMPLETED,
        tasks_pb2.TASK_STATE_FAILED,
        tasks_pb2.TASK_STATE_CANCELLED,
    }
)

#: Seconds, or a timedelta.
Seconds = float | datetime.timedelta


@dataclasses.dataclass(frozen=True)
class Target:
    """A parsed ``server`` argument."""

    #: ``host:port`` as gRPC dials it.
    address: str
    #: TLS (``https://`` or ``grpcs://``).
    secure: bool


def parse_server(server: str) -> Target:
    """``host:port``, ``http://host:port`` or ``https://host[:port]`` (TLS).

    A URL without a port gets 80 (http) or 443 (https); a bare ``host:port`` is plaintext.
    """
    if "://" not in server:
        if not server:
            raise ValueError("server is empty: give host:port or a URL")
        return Target(server, secure=False)
    url = urllib.parse.urlsplit(server)
    if url.scheme not in ("http", "https", "grpc", "grpcs") or not url.hostname:
        raise ValueError(f"server {server[:80]!r}: expected host:port or http(s)://host:port")
    secure = url.scheme in ("https", "grpcs")
    port = url.port or (443 if secure else 80)
    host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
    return Target(f"{host}:{port}", secure=secure)


def duration(value: Seconds) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    if isinstance(value, datetime.timedelta):
        message.FromTimedelta(value)
    else:
        if value < 0:
            raise ValueError(f"a duration cannot be negative: {value}")
        message.FromNanoseconds(round(value * 1e9))
    return message


def start_request(
    kind: str,
    params: Mapping[str, Any] | None = None,
    *,
    description: str = "",
    parent_id: str = "",
    detached: bool = False,
    session_id: str = "",
    labels: Mapping[str, str] | None = None,
    timeout: Seconds | None = None,
    request_id: str = "",
    max_attempts: int = 0,
    budget: Mapping[str, float] | None = None,
) -> tasks_pb2.StartTaskRequest:
    """The one place a ``StartTaskRequest`` is built (both clients call it)."""
    request = tasks_pb2.StartTaskRequest(
        kind=kind,
        description=description,
        parent_id=parent_id,
        detached=detached,
        session_id=session_id,
        labels=dict(labels or {}),
        request_id=request_id,
        max_attempts=max_attempts,
        budget=dict(budget or {}),
    )
    if params is not None:
        request.params.CopyFrom(to_struct(dict(params)))
    if timeout is not None:
        request.timeout.CopyFrom(duration(timeout))
    return request


def soft_cancel_request(
    task_id: str, reason: str = "", grace: Seconds | None = None
) -> tasks_pb2.SoftCancelRequest:
    request = tasks_pb2.SoftCancelRequest(task_id=task_id, reason=reason)
    if grace is not None:
        request.grace_period.CopyFrom(duration(grace))
    return request


def cancel_tasks_request(
    *,
    kind: str = "",
    session_id: str = "",
    parent_id: str = "",
    labels: Mapping[str, str] | None = None,
    hard: bool = False,
    reason: str = "",
    grace: Seconds | None = None,
    dry_run: bool = False,
) -> tasks_pb2.CancelTasksRequest:
    request = tasks_pb2.CancelTasksRequest(
        kind=kind,
        session_id=session_id,
        parent_id=parent_id,
        labels=dict(labels or {}),
        mode=tasks_pb2.CANCEL_MODE_HARD if hard else tasks_pb2.CANCEL_MODE_SOFT,
        reason=reason,
        dry_run=dry_run,
    )
    if grace is not None:
        request.grace_period.CopyFrom(duration(grace))
    return request


def list_request(
    *,
    kind: str = "",
    session_id: str = "",
    parent_id: str = "",
    labels: Mapping[str, str] | None = None,
    page_size: int = 0,
    page_token: str = "",
) -> tasks_pb2.ListActiveRequest:
    return tasks_pb2.ListActiveRequest(
        kind=kind,
        session_id=session_id,
        parent_id=parent_id,
        labels=dict(labels or {}),
        page_size=page_size,
        page_token=page_token,
    )


def default_worker_name() -> str:
    import os
    import socket
    import sys

    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    return f"{program or 'python'}@{socket.gethostname()}:{os.getpid()}"


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """The task a handler runs, as assigned (a snapshot; the server's record moves on)."""

    id: str
    kind: str
    #: ``StartTaskRequest.params`` as a dict; integral numbers are ints.
    params: dict[str, Any]
    description: str
    labels: dict[str, str]
    parent_id: str
    session_id: str
    #: How many times the task has been started (1 on the first run).
    attempt: int
    #: How many times it may be started.
    max_attempts: int
    #: The assigned ``reins.v1.Task`` message.
    proto: tasks_pb2.Task = dataclasses.field(repr=False, compare=False)
    #: The task's own budget (``StartTaskRequest.budget``).
    budget: dict[str, float] = dataclasses.field(default_factory=dict)
    #: What is left to spend, per dimension: the tightest remaining amount over the
    #: budgets of the task and its ancestors, as of the assignment or the last
    #: acknowledged usage report (empty: no budget applies).
    budget_remaining: dict[str, float] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_proto(
        cls, task: tasks_pb2.Task, budget_remaining: Mapping[str, float] | None = None
    ) -> TaskInfo:
        params = from_value(task.params) if task.HasField("params") else {}
        return cls(
            id=task.id,
            kind=task.kind,
            params=params if isinstance(params, dict) else {},
            description=task.description,
            labels=dict(task.labels),
            parent_id=task.parent_id,
            session_id=task.session_id,
            attempt=task.attempt,
            max_attempts=task.max_attempts,
            proto=task,
            budget=dict(task.budget),
            budget_remaining=dict(budget_remaining or {}),
        )
