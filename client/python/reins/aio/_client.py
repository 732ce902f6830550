"""``reins.aio.AsyncClient``: the task service (``reins.v1.TaskService``) on ``grpc.aio``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio

from .._calls import (
    TASK_SERVICE,
    TERMINAL_STATES,
    Seconds,
    cancel_tasks_request,
    list_request,
    parse_server,
    soft_cancel_request,
    start_request,
)
from .._credentials import Credentials
from .._errors import ReinsError
from .._proto import tasks_pb2
from .._tracing import trace_metadata

_T = TypeVar("_T")
ChannelOptions = Sequence[tuple[str, Any]]


def open_channel(
    server: str, options: ChannelOptions = (), credentials: Credentials | None = None
) -> grpc.aio.Channel:
    """A ``grpc.aio`` channel to ``server`` (``host:port`` or a URL; ``https://`` is TLS)."""
    target = parse_server(server)
    channel_credentials = (credentials or Credentials()).channel_credentials(
        target.address, target.secure
    )
    if channel_credentials is not None:
        return grpc.aio.secure_channel(target.address, channel_credentials, options=list(options))
    return grpc.aio.insecure_channel(target.address, options=list(options))


class AsyncClient:
    """Start, watch, cancel and answer tasks from asyncio code.

    ``server``: ``"host:port"``, a URL (``http://…``, ``https://…`` for TLS) or a
    ``grpc.aio.Channel`` (not closed by :meth:`close`). ``timeout``: seconds each unary
    call may take (``None``: no limit). Every failed call raises :class:`reins.ReinsError`
    (``code``, ``reason``). Use as ``async with AsyncClient(...) as client:``.

    The same calls as :class:`reins.Client`; :meth:`list` and :meth:`watch` are async
    iterators.
    """

    def __init__(
        self,
        server: str | grpc.aio.Channel,
        *,
        timeout: float | None = 30.0,
        channel_options: ChannelOptions = (),
        credentials: Credentials | None = None,
    ) -> None:
        self._owns_channel = isinstance(server, str)
        self._channel = (
            open_channel(server, channel_options, credentials)
            if isinstance(server, str)
            else server
        )
        self.timeout = timeout
        ch, pb, Task = self._channel, tasks_pb2, tasks_pb2.Task

        def unary(name: str, response: Any) -> Any:
            return ch.unary_unary(
                TASK_SERVICE + name,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=response.FromString,
            )

        self._start: grpc.aio.UnaryUnaryMultiCallable[pb.StartTaskRequest, tasks_pb2.Task] = unary(
            "StartTask", Task
        )
        self._check: grpc.aio.UnaryUnaryMultiCallable[pb.CheckTaskRequest, tasks_pb2.Task] = unary(
            "CheckTask", Task
        )
        self._soft: grpc.aio.UnaryUnaryMultiCallable[pb.SoftCancelRequest, pb.CancelResponse] = (
            unary("SoftCancel", pb.CancelResponse)
        )
        self._hard: grpc.aio.UnaryUnaryMultiCallable[pb.HardCancelRequest, pb.CancelResponse] = (
            unary("HardCancel", pb.CancelResponse)
        )
        self._list: grpc.aio.UnaryUnaryMultiCallable[
            pb.ListActiveRequest, pb.ListActiveResponse
        ] = unary("ListActive", pb.ListActiveResponse)
        self._answer: grpc.aio.UnaryUnaryMultiCallable[pb.AnswerTaskRequest, tasks_pb2.Task] = (
            unary("AnswerTask", Task)
        )
        self._watch: grpc.aio.UnaryStreamMultiCallable[pb.WatchTaskRequest, pb.TaskEvent] = (
            ch.unary_stream(
                TASK_SERVICE + "WatchTask",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=pb.TaskEvent.FromString,
            )
        )
        self._run: grpc.aio.UnaryStreamMultiCallable[pb.RunTaskRequest, pb.TaskEvent] = (
            ch.unary_stream(
                TASK_SERVICE + "RunTask",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=pb.TaskEvent.FromString,
            )
        )
        self._cancel_tasks: grpc.aio.UnaryUnaryMultiCallable[
            pb.CancelTasksRequest, pb.CancelTasksResponse
        ] = unary("CancelTasks", pb.CancelTasksResponse)

    async def _call(self, method: grpc.aio.UnaryUnaryMultiCallable[Any, _T], request: Any) -> _T:
        try:
            response: _T = await method(request, timeout=self.timeout, metadata=trace_metadata())
            return response
        except grpc.RpcError as err:
            raise ReinsError.from_rpc_error(err) from None

    # -- the calls ----------------------------------------------------------------------

    async def start(
        self,
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
    ) -> tasks_pb2.Task:
        """Starts a task (``StartTask``); returns it RUNNING, or PENDING when queued.
        See :meth:`reins.Client.start`."""
        return await self._call(
            self._start,
            start_request(
                kind,
                params,
                description=description,
                parent_id=parent_id,
                detached=detached,
                session_id=session_id,
                labels=labels,
                timeout=timeout,
                request_id=request_id,
                max_attempts=max_attempts,
                budget=budget,
            ),
        )

    async def run(
        self,
        kind: str,
        params: Mapping[str, Any] | None = None,
        *,
        continue_on_disconnect: bool = False,
        timeout: float | None = None,
        **options: Any,
    ) -> AsyncIterator[tasks_pb2.TaskEvent]:
        """``async for event in client.run(kind, params)``: starts a task and streams it
        until it ends (``RunTask``). Leaving early soft-cancels the task unless
        ``continue_on_disconnect`` (use ``contextlib.aclosing`` so that happens at once).
        See :meth:`reins.Client.run`."""
        request = tasks_pb2.RunTaskRequest(
            task=start_request(kind, params, **options),
            continue_on_disconnect=continue_on_disconnect,
        )
        call = self._run(request, timeout=timeout)
        try:
            async for event in call:
                if not event.heartbeat:
                    yield event
        except grpc.RpcError as err:
            raise ReinsError.from_rpc_error(err) from None
        finally:
            call.cancel()

    async def cancel_tasks(
        self,
        *,
        kind: str = "",
        session_id: str = "",
        parent_id: str = "",
        labels: Mapping[str, str] | None = None,
        hard: bool = False,
        reason: str = "",
        grace: Seconds | None = None,
        dry_run: bool = False,
    ) -> tasks_pb2.CancelTasksResponse:
        """Bulk cancel (``CancelTasks``). See :meth:`reins.Client.cancel_tasks`."""
        return await self._call(
            self._cancel_tasks,
            cancel_tasks_request(
                kind=kind,
                session_id=session_id,
                parent_id=parent_id,
                labels=labels,
                hard=hard,
                reason=reason,
                grace=grace,
                dry_run=dry_run,
            ),
        )

    async def check(self, task_id: str) -> tasks_pb2.Task:
        """The task as it is now (``CheckTask``)."""
        return await self._call(self._check, tasks_pb2.CheckTaskRequest(task_id=task_id))

    async def soft_cancel(
        self, task_id: str, reason: str = "", *, grace: Seconds | None = None
    ) -> tasks_pb2.CancelResponse:
        """Asks the task (and its subtree) to stop at its next checkpoint; hard-cancelled
        after ``grace`` (default: the server's)."""
        return await self._call(self._soft, soft_cancel_request(task_id, reason, grace))

    async def hard_cancel(self, task_id: str, reason: str = "") -> tasks_pb2.CancelResponse:
        """Ends the task (and its subtree) now: CANCELLED when this returns."""
        return await self._call(
            self._hard, tasks_pb2.HardCancelRequest(task_id=task_id, reason=reason)
        )

    async def answer(self, task_id: str, answer: str) -> tasks_pb2.Task:
        """Answers the open question of a task in WAITING_FOR_ANSWER."""
        return await self._call(
            self._answer, tasks_pb2.AnswerTaskRequest(task_id=task_id, answer=answer)
        )

    async def list_page(
        self,
        *,
        kind: str = "",
        session_id: str = "",
        parent_id: str = "",
        labels: Mapping[str, str] | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> tasks_pb2.ListActiveResponse:
        """One page of active tasks; ``next_page_token`` is empty on the last."""
        return await self._call(
            self._list,
            list_request(
                kind=kind,
                session_id=session_id,
                parent_id=parent_id,
                labels=labels,
                page_size=page_size,
                page_token=page_token,
            ),
        )

    async def list(
        self,
        *,
        kind: str = "",
        session_id: str = "",
        parent_id: str = "",
        labels: Mapping[str, str] | None = None,
        page_size: int = 0,
    ) -> AsyncIterator[tasks_pb2.Task]:
        """``async for task in client.list(...)``: every active task matching the filters,
        in creation order; pages (of ``page_size``) are fetched as the loop reaches them."""
        token = ""
        while True:
            page = await self.list_page(
                kind=kind,
                session_id=session_id,
                parent_id=parent_id,
                labels=labels,
                page_size=page_size,
                page_token=token,
            )
            for task in page.tasks:
                yield task
            token = page.next_page_token
            if not token:
                return

    async def watch(
        self,
        task_id: str,
        *,
        after_version: int = 0,
        cancel_on_disconnect: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[tasks_pb2.TaskEvent]:
        """``async for event in client.watch(id)``: the task as it is now, then every
        change in version order; ends after the terminal state. Leaving the loop early
        closes the stream (with ``cancel_on_disconnect`` that soft-cancels the task);
        ``contextlib.aclosing`` makes that happen at once rather than when the iterator
        is collected."""
        request = tasks_pb2.WatchTaskRequest(
            task_id=task_id, after_version=after_version, cancel_on_disconnect=cancel_on_disconnect
        )
        call = self._watch(request, timeout=timeout, metadata=trace_metadata())
        try:
            async for event in call:
                # Heartbeats only keep a quiet stream alive through proxies.
                if not event.heartbeat:
                    yield event
        except grpc.RpcError as err:
            raise ReinsError.from_rpc_error(err) from None
        finally:
            call.cancel()

    async def wait(self, task_id: str, *, timeout: float | None = None) -> tasks_pb2.Task:
        """Watches the task until it ends and returns it (``timeout``: DEADLINE_EXCEEDED)."""
        async for event in self.watch(task_id, timeout=timeout):
            if event.task.state in TERMINAL_STATES:
                return event.task
        raise ReinsError(grpc.StatusCode.UNAVAILABLE, "the watch ended before the task did")

    # -- lifecycle ----------------------------------------------------------------------

    async def close(self) -> None:
        if self._owns_channel:
            await self._channel.close(None)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
