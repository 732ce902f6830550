"""``reins.Client``: the task service (``reins.v1.TaskService``) from threaded code."""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar

import grpc

from ._calls import (
    TASK_SERVICE,
    TERMINAL_STATES,
    Seconds,
    cancel_tasks_request,
    list_request,
    parse_server,
    soft_cancel_request,
    start_request,
)
from ._credentials import Credentials
from ._errors import ReinsError
from ._proto import tasks_pb2
from ._tracing import trace_metadata

_T = TypeVar("_T")
ChannelOptions = Sequence[tuple[str, Any]]


def open_channel(
    server: str, options: ChannelOptions = (), credentials: Credentials | None = None
) -> grpc.Channel:
    """A channel to ``server`` (``host:port`` or a URL; ``https://`` is TLS, and so is any
    server when ``credentials`` hold a CA or a client certificate)."""
    target = parse_server(server)
    channel_credentials = (credentials or Credentials()).channel_credentials(
        target.address, target.secure
    )
    if channel_credentials is not None:
        return grpc.secure_channel(
            target.address, channel_credentials, options=builtins.list(options)
        )
    return grpc.insecure_channel(target.address, options=builtins.list(options))


class Client:
    """Start, watch, cancel and answer tasks; blocking calls, safe to share among threads.

    ``server``: ``"host:port"``, a URL (``http://…``, ``https://…`` for TLS) or a
    ``grpc.Channel`` (not closed by :meth:`close`). ``credentials``: a token and TLS
    material (:class:`reins.Credentials`). ``timeout``: seconds each unary call
    may take (``None``: no limit). Every failed call raises :class:`reins.ReinsError`
    (``code``, ``reason``).

    Tasks and events are the ``reins.v1`` messages (:mod:`reins.proto`); results are
    ``google.protobuf.Value``\\ s: :func:`reins.from_value` turns them into Python data.
    """

    def __init__(
        self,
        server: str | grpc.Channel,
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
        ch = self._channel
        ser, Task = tasks_pb2, tasks_pb2.Task

        def unary(name: str, response: Any) -> Any:
            return ch.unary_unary(
                TASK_SERVICE + name,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=response.FromString,
            )

        self._start: grpc.UnaryUnaryMultiCallable[ser.StartTaskRequest, tasks_pb2.Task] = unary(
            "StartTask", Task
        )
        self._check: grpc.UnaryUnaryMultiCallable[ser.CheckTaskRequest, tasks_pb2.Task] = unary(
            "CheckTask", Task
        )
        self._soft: grpc.UnaryUnaryMultiCallable[ser.SoftCancelRequest, ser.CancelResponse] = unary(
            "SoftCancel", ser.CancelResponse
        )
        self._hard: grpc.UnaryUnaryMultiCallable[ser.HardCancelRequest, ser.CancelResponse] = unary(
            "HardCancel", ser.CancelResponse
        )
        self._list: grpc.UnaryUnaryMultiCallable[ser.ListActiveRequest, ser.ListActiveResponse] = (
            unary("ListActive", ser.ListActiveResponse)
        )
        self._answer: grpc.UnaryUnaryMultiCallable[ser.AnswerTaskRequest, tasks_pb2.Task] = unary(
            "AnswerTask", Task
        )
        self._watch: grpc.UnaryStreamMultiCallable[ser.WatchTaskRequest, ser.TaskEvent] = (
            ch.unary_stream(
                TASK_SERVICE + "WatchTask",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=ser.TaskEvent.FromString,
            )
        )
        self._run: grpc.UnaryStreamMultiCallable[ser.RunTaskRequest, ser.TaskEvent] = (
            ch.unary_stream(
                TASK_SERVICE + "RunTask",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=ser.TaskEvent.FromString,
            )
        )
        self._cancel_tasks: grpc.UnaryUnaryMultiCallable[
            ser.CancelTasksRequest, ser.CancelTasksResponse
        ] = unary("CancelTasks", ser.CancelTasksResponse)

    def _call(self, method: grpc.UnaryUnaryMultiCallable[Any, _T], request: Any) -> _T:
        try:
            return method(request, timeout=self.timeout, metadata=trace_metadata())
        except grpc.RpcError as err:
            raise ReinsError.from_rpc_error(err) from None

    # -- the calls ----------------------------------------------------------------------

    def start(
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

        ``params`` is a JSON object; ``timeout`` its maximum running time; ``request_id``
        makes the call idempotent; ``max_attempts`` how often it may be started when its
        worker is lost (0 means 1); ``budget`` limits per usage dimension over the task's
        subtree (e.g. ``{"output_tokens": 10000}``), enforced by the server.
        """
        return self._call(
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

    def run(
        self,
        kind: str,
        params: Mapping[str, Any] | None = None,
        *,
        continue_on_disconnect: bool = False,
        timeout: float | None = None,
        **options: Any,
    ) -> Iterator[tasks_pb2.TaskEvent]:
        """Starts a task and streams it until it ends (``RunTask``): the events of
        :meth:`watch`. Leaving the loop early (or losing the connection, or ``timeout``
        passing) soft-cancels the task ("caller disconnected") unless
        ``continue_on_disconnect``. ``options`` are those of :meth:`start`; with a
        ``request_id`` a second ``run`` re-attaches, and the task is cancelled only when
        the last of them leaves."""
        request = tasks_pb2.RunTaskRequest(
            task=start_request(kind, params, **options),
            continue_on_disconnect=continue_on_disconnect,
        )
        call: Any = self._run(request, timeout=timeout)  # a grpc.Call and an iterator
        try:
            yield from (event for event in call if not event.heartbeat)
        except grpc.RpcError as err:
            raise ReinsError.from_rpc_error(err) from None
        finally:
            call.cancel()

    def cancel_tasks(
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
        """Cancels every active task matching the filters (at least one), each with its
        subtree (``CancelTasks``); ``dry_run`` only counts. By ``session_id`` alone, the
        session also refuses new tasks for a while (``SESSION_CANCELLED``)."""
        return self._call(
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

    def check(self, task_id: str) -> tasks_pb2.Task:
        """The task as it is now (``CheckTask``)."""
        return self._call(self._check, tasks_pb2.CheckTaskRequest(task_id=task_id))

    def soft_cancel(
        self, task_id: str, reason: str = "", *, grace: Seconds | None = None
    ) -> tasks_pb2.CancelResponse:
        """Asks the task (and its subtree) to stop at its next checkpoint; hard-cancelled
        after ``grace`` (default: the server's). ``outcome`` says what happened."""
        return self._call(self._soft, soft_cancel_request(task_id, reason, grace))

    def hard_cancel(self, task_id: str, reason: str = "") -> tasks_pb2.CancelResponse:
        """Ends the task (and its subtree) now: CANCELLED when this returns."""
        return self._call(self._hard, tasks_pb2.HardCancelRequest(task_id=task_id, reason=reason))

    def answer(self, task_id: str, answer: str) -> tasks_pb2.Task:
        """Answers the open question of a task in WAITING_FOR_ANSWER."""
        return self._call(self._answer, tasks_pb2.AnswerTaskRequest(task_id=task_id, answer=answer))

    def list_page(
        self,
        *,
        kind: str = "",
        session_id: str = "",
        parent_id: str = "",
        labels: Mapping[str, str] | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> tasks_pb2.ListActiveResponse:
        """One page of active tasks (``ListActive``); ``next_page_token`` is empty on the last."""
        return self._call(
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

    def list(
        self,
        *,
        kind: str = "",
        session_id: str = "",
        parent_id: str = "",
        labels: Mapping[str, str] | None = None,
        page_size: int = 0,
    ) -> Iterator[tasks_pb2.Task]:
        """Every active task matching the filters, in creation order, fetching the pages
        (of ``page_size``, default the server's 100) as the iteration reaches them."""
        token = ""
        while True:
            page = self.list_page(
                kind=kind,
                session_id=session_id,
                parent_id=parent_id,
                labels=labels,
                page_size=page_size,
                page_token=token,
            )
            yield from page.tasks
            token = page.next_page_token
            if not token:
                return

    def watch(
        self,
        task_id: str,
        *,
        after_version: int = 0,
        cancel_on_disconnect: bool = False,
        timeout: float | None = None,
    ) -> Iterator[tasks_pb2.TaskEvent]:
        """The task as it is now, then every change in version order; ends after the
        terminal state. Leaving the loop early closes the stream (and with
        ``cancel_on_disconnect`` soft-cancels the task). The server's heartbeats (which
        keep a quiet stream alive through proxies) are skipped."""
        request = tasks_pb2.WatchTaskRequest(
            task_id=task_id, after_version=after_version, cancel_on_disconnect=cancel_on_disconnect
        )
        call: Any = self._watch(
            request, timeout=timeout, metadata=trace_metadata()
        )  # a grpc.Call and an iterator
        try:
            yield from (event for event in call if not event.heartbeat)
        except grpc.RpcError as err:
            raise ReinsError.from_rpc_error(err) from None
        finally:
            call.cancel()

    def wait(self, task_id: str, *, timeout: float | None = None) -> tasks_pb2.Task:
        """Watches the task until it ends and returns it (``timeout``: DEADLINE_EXCEEDED)."""
        for event in self.watch(task_id, timeout=timeout):
            if event.task.state in TERMINAL_STATES:
                return event.task
        raise ReinsError(grpc.StatusCode.UNAVAILABLE, "the watch ended before the task did")

    # -- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
