"""``reins.aio.AsyncWorker``: many tasks per process on one ``WorkerService.Connect``
stream, each handler an asyncio task.

How a task stops:

- **soft cancel** (``cancel``): ``ctx.cancel_requested`` is set; ``ctx.checkpoint`` and
  ``ctx.ask`` raise :class:`~reins.CancelRequested` (so does ``ctx.raise_if_cancelled``).
  Raising :class:`~reins.Cancelled` (or letting ``CancelRequested`` escape) sends
  ``cancel_ack``.
- **hard cancel** (``abort``): the task is CANCELLED on the server already. The handler's
  asyncio task is cancelled: ``asyncio.CancelledError`` comes out of whatever it awaits,
  ``finally`` blocks run, and nothing it sends afterwards is written. A handler still
  running ``cleanup_timeout`` seconds later (it swallowed the ``CancelledError``) is logged,
  cancelled once more and abandoned.
- **shutdown** (SIGTERM or :meth:`AsyncWorker.close`): no new task is started; running ones
  get ``shutdown_grace`` seconds to finish; what still runs then is cancelled (as above) and
  handed back by closing the stream: the server requeues it if attempts remain.
- **lost connection**: running handlers are cancelled (the server treats their tasks as
  lost), then the worker reconnects with jittered exponential backoff.
- **the replica drains** (``reconnect``): the worker moves. It opens a new stream (the
  channel's load balancing picks a replica that stays; a refusal by the draining replica
  is retried), says ``hello`` listing its running tasks, and once welcomed writes there
  what the handlers sent meanwhile; the tasks the new replica adopted run on without
  restarting (same attempt), the others are stopped; the old stream is half-closed. A
  progress message or question written to the old stream in the instant of the move may
  reach the old replica after the adoption and is then dropped; outcomes never are.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import inspect
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import grpc
import grpc.aio

from .._backoff import Backoff
from .._calls import (
    WORKER_CONNECT,
    Seconds,
    TaskInfo,
    default_worker_name,
    duration,
    parse_server,
)
from .._credentials import Credentials
from .._errors import AnswerTimedOut, Cancelled, CancelRequested, ReinsError
from .._proto import tasks_pb2, workers_pb2
from .._tracing import handler_span
from .._values import to_value
from .._worker import is_async_callable
from ._client import open_channel
from ._current import _enter

log = logging.getLogger("reins.aio.worker")

#: What ``call.read()`` returns at the end of the stream (not in grpc-stubs).
_EOF: object = getattr(grpc.aio, "EOF")  # noqa: B009

#: An ``async def handler(ctx)``: its return value completes the task.
AsyncHandler = Callable[["AsyncTaskContext"], Awaitable[Any]]
#: ``trace(direction, message)``: ``"send"`` with each ``WorkerMessage`` written,
#: ``"recv"`` with each ``WorkerCommand`` read.
Trace = Callable[[str, Any], None]

#: The messages waiting to be written: the message, the task it is about (None for
#: ``hello``) and a future resolved once it is written; ``None`` half-closes the stream.
_Outbox = asyncio.Queue[
    "tuple[workers_pb2.WorkerMessage, AsyncTaskContext | None, asyncio.Future[None]] | None"
]

_Connect = grpc.aio.StreamStreamMultiCallable[workers_pb2.WorkerMessage, workers_pb2.WorkerCommand]
_Call = grpc.aio.StreamStreamCall[workers_pb2.WorkerMessage, workers_pb2.WorkerCommand]

#: Stream errors that reconnecting cannot fix: ``run()`` raises them.
PERMANENT = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)

#: gRPC's own reconnect backoff starts at 1 s and grows to 120 s; a worker wants its
#: replica back sooner. Our :class:`Backoff` paces the attempts; these let the channel
#: follow it. ``channel_options`` given to the worker come after (and win).
DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 5000),
)


class AsyncTaskContext:
    """What an ``async def`` handler can do with its task, and what it learns about it.

    ``task``: a :class:`~reins.TaskInfo`. Reports: :meth:`progress`, :meth:`checkpoint`,
    :meth:`ask`. Soft cancel: :attr:`cancel_requested` (an ``asyncio.Event``),
    :attr:`cancel_reason`, :attr:`grace_deadline`, :meth:`raise_if_cancelled`. A hard
    cancel cancels the handler (``asyncio.CancelledError``); :attr:`aborted` and
    :attr:`abort_reason` say so. Once the task has ended nothing more is sent about it.
    """

    def __init__(
        self,
        worker: AsyncWorker,
        task: tasks_pb2.Task,
        budget_remaining: Mapping[str, float] | None = None,
    ) -> None:
        #: The task as assigned; ``task.budget_remaining`` is refreshed after every
        #: acknowledged usage report.
        self.task = TaskInfo.from_proto(task, budget_remaining)
        #: Set when a soft cancel arrives (also after an abort).
        self.cancel_requested = asyncio.Event()
        #: The reason given with the cancel; empty before one arrives.
        self.cancel_reason = ""
        #: When the server hard-cancels the task if it has not stopped (UTC), if known.
        self.grace_deadline: datetime.datetime | None = None
        #: Why the task was aborted (hard cancel, shutdown, lost stream); empty if it was not.
        self.abort_reason = ""
        self._worker = worker
        self._aborted = False
        # The outcome was sent, or the task was aborted: send nothing more.
        self._ended = False
        self._answer: asyncio.Future[str] | None = None
        self._question = ""
        # Progress is resent with a checkpoint that names none, so it never goes back to 0.
        self._fraction = 0.0
        self._message = ""

    @property
    def aborted(self) -> bool:
        """True once the task was hard-cancelled, handed back or lost with the stream."""
        return self._aborted

    def raise_if_cancelled(self) -> None:
        """Raises :class:`~reins.CancelRequested` once a cancel has been requested."""
        if self.cancel_requested.is_set():
            raise CancelRequested(self.cancel_reason or self.abort_reason)

    async def progress(
        self,
        fraction: float,
        message: str | None = None,
        *,
        usage: Mapping[str, float] | None = None,
    ) -> None:
        """Reports progress: ``fraction`` from 0.0 to 1.0 and, optionally, a message;
        ``usage``: what was spent since the last report, counted against the budgets of
        the task and its ancestors (see :meth:`reins.TaskContext.progress`)."""
        self._fraction = fraction
        if message is not None:
            self._message = message
        await self._send(
            progress=workers_pb2.TaskProgress(
                task_id=self.task.id,
                fraction=self._fraction,
                message=self._message,
                usage=dict(usage or {}),
            )
        )

    async def checkpoint(
        self,
        value: Any,
        fraction: float | None = None,
        message: str | None = None,
        *,
        usage: Mapping[str, float] | None = None,
    ) -> None:
        """Records a partial result (appended to ``Task.partial_results``, kept even if
        the task is cancelled), with progress if given.

        Then raises :class:`~reins.CancelRequested` if a cancel has been requested: a
        checkpoint is where a task honours a soft cancel. ``value`` must be JSON
        (ValueError otherwise).
        """
        partial = to_value(value)
        if fraction is not None:
            self._fraction = fraction
        if message is not None:
            self._message = message
        await self._send(
            progress=workers_pb2.TaskProgress(
                task_id=self.task.id,
                fraction=self._fraction,
                message=self._message,
                partial_result=partial,
                usage=dict(usage or {}),
            )
        )
        self.raise_if_cancelled()

    async def ask(self, question: str, *, answer_within: Seconds | None = None) -> str:
        """Asks a question and waits for its answer (``AnswerTask``, through any replica).

        The task is WAITING_FOR_ANSWER meanwhile. Raises :class:`~reins.CancelRequested`
        if a cancel was requested before or arrives while waiting. With ``answer_within``
        the server resumes the task unanswered after that long:
        :class:`~reins.AnswerTimedOut`. One question at a time.
        """
        self.raise_if_cancelled()
        if self._answer is not None:
            raise RuntimeError("a question is open already: one at a time")
        answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._answer = answer
        self._question = question
        try:
            ask = workers_pb2.TaskAsk(task_id=self.task.id, question=question)
            if answer_within is not None:
                ask.timeout.CopyFrom(duration(answer_within))
            await self._send(ask=ask)
            return await answer
        finally:
            self._answer = None

    # -- driven by the worker -----------------------------------------------------------

    async def _send(self, **fields: Any) -> None:
        await self._send_message(workers_pb2.WorkerMessage(**fields))

    async def _send_message(self, message: workers_pb2.WorkerMessage) -> None:
        if not self._ended:
            await self._worker._send(message, self)

    def _on_cancel(self, cancel: workers_pb2.CancelRequest) -> None:
        self.cancel_reason = cancel.reason
        if cancel.HasField("grace_deadline"):
            self.grace_deadline = cancel.grace_deadline.ToDatetime(tzinfo=datetime.timezone.utc)
        self.cancel_requested.set()
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(CancelRequested(cancel.reason))

    def _on_answer(self, answer: workers_pb2.TaskAnswer) -> None:
        if self._answer is None or self._answer.done():
            log.warning("task %s: an answer nobody asked for; ignored", self.task.id)
            return
        if answer.timed_out:
            self._answer.set_exception(AnswerTimedOut(self._question))
        else:
            self._answer.set_result(answer.answer)

    def _on_usage_ack(self, ack: workers_pb2.UsageAck) -> None:
        self.task = dataclasses.replace(self.task, budget_remaining=dict(ack.budget_remaining))

    def _abort(self, reason: str) -> None:
        self._aborted = True
        self._ended = True
        self.abort_reason = reason
        self.cancel_requested.set()


class _Job:
    """One assigned task: its context and, once started, the handler's asyncio task."""

    def __init__(self, ctx: AsyncTaskContext, trace_context: Mapping[str, str]) -> None:
        self.ctx = ctx
        #: The assignment's W3C Trace Context: the parent of the handler's span.
        self.trace_context = trace_context
        self.runner: asyncio.Task[None] | None = None


class AsyncWorker:
    """A worker process's connection to a Reins replica, on asyncio (``grpc.aio``).

    ``server``: ``"host:port"``, a URL (``http://…``, ``https://…`` for TLS) or a
    ``grpc.aio.Channel``. ``kinds``: the task kinds it runs (not built-in ones).
    ``handler``: ``async def handler(ctx)``, one asyncio task per task; its return value
    completes the task (a plain function is a TypeError: use :class:`reins.Worker`).
    ``max_concurrency``: tasks at once (the server assigns no more). ``name``: for logs and
    ``Task.worker``. ``cleanup_timeout``: how long a hard-cancelled handler may take to
    unwind. ``shutdown_grace``: how long running tasks may finish after SIGTERM /
    :meth:`close`. ``handle_signals``: install the SIGTERM handler while :meth:`run` runs
    (main thread only). ``reconnect``: the :class:`~reins.Backoff` between connection
    attempts.

    ``await worker.run()`` serves until :meth:`close` or SIGTERM; it raises
    :class:`~reins.ReinsError` for what reconnecting cannot fix (a refused ``hello``, such
    as a built-in kind: INVALID_ARGUMENT) and reconnects after anything else.
    """

    def __init__(
        self,
        server: str | grpc.aio.Channel,
        kinds: Iterable[str],
        handler: AsyncHandler,
        *,
        max_concurrency: int = 1,
        name: str | None = None,
        cleanup_timeout: float = 5.0,
        shutdown_grace: float = 30.0,
        handle_signals: bool = True,
        reconnect: Backoff | None = None,
        trace: Trace | None = None,
        channel_options: Iterable[tuple[str, Any]] = (),
        credentials: Credentials | None = None,
    ) -> None:
        if not callable(handler) or not is_async_callable(handler):
            raise TypeError(
                "reins.aio.AsyncWorker needs an `async def handler(ctx)`; "
                "for a plain function use reins.Worker (one thread per task)"
            )
        if inspect.isasyncgenfunction(handler):
            raise TypeError("the handler is an async generator; it must be an async def")
        if isinstance(kinds, str):
            raise TypeError("kinds is a list of task kinds, not one string")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, not {max_concurrency}")
        if isinstance(server, str):
            parse_server(server)  # a bad address fails here, not in run()
        self.server = server
        self._credentials = credentials
        self.kinds = list(kinds)
        self.handler = handler
        self.max_concurrency = max_concurrency
        self.name = name or default_worker_name()
        self.cleanup_timeout = cleanup_timeout
        self.shutdown_grace = shutdown_grace
        self.handle_signals = handle_signals
        self.reconnect = reconnect or Backoff()
        self._trace = trace
        self._channel_options = [*DEFAULT_CHANNEL_OPTIONS, *channel_options]
        self._jobs: dict[str, _Job] = {}
        # Handlers cancelled and not yet finished: awaited (bounded) by the reapers.
        self._reapers: set[asyncio.Task[None]] = set()
        self._abandoned: set[asyncio.Task[None]] = set()
        self._outbox: _Outbox | None = None
        # What the handlers send while the worker moves to another replica.
        self._held: (
            list[tuple[workers_pb2.WorkerMessage, AsyncTaskContext | None, asyncio.Future[None]]]
            | None
        ) = None
        # Streams moved away from, read to their end.
        self._left_behind: set[asyncio.Task[None]] = set()
        self._draining = False
        self._running = False
        self._close_requested = asyncio.Event()
        self._hurry = asyncio.Event()  # a second close(): skip the rest of the grace period
        self._connected = asyncio.Event()
        self._stopped = asyncio.Event()
        self._error: ReinsError | None = None
        #: The id the server gave the current connection (``welcome.worker_id``).
        self.worker_id: str | None = None
        #: How often the server pings the connection (``welcome.heartbeat_interval``).
        self.heartbeat_interval: datetime.timedelta | None = None
        #: How many times the worker was welcomed (1 + reconnects).
        self.connections = 0

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while a connection is welcomed."""
        return self._connected.is_set()

    @property
    def active_tasks(self) -> list[str]:
        """Ids of the tasks assigned to this worker and not finished."""
        return list(self._jobs)

    async def run(self) -> None:
        """Connects and serves assignments until :meth:`close` or SIGTERM (then drains:
        see the module docstring); reconnects with backoff when the stream is lost."""
        if self._running:
            raise RuntimeError("the worker is running already")
        self._running = True
        self._stopped.clear()
        self._error = None
        loop = asyncio.get_running_loop()
        signals = self._install_signals(loop)
        owns_channel = isinstance(self.server, str)
        channel = self._open_channel() if isinstance(self.server, str) else self.server
        connect: _Connect = channel.stream_stream(
            WORKER_CONNECT,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=workers_pb2.WorkerCommand.FromString,
        )
        try:
            while not self._close_requested.is_set():
                welcomed_before = self.connections
                try:
                    await self._session(connect)
                except ReinsError as err:
                    if err.code() in PERMANENT:
                        self._error = err
                        raise
                    if not self._close_requested.is_set():  # else: the end of a drain
                        log.warning("worker %s: stream lost: %s", self.name, err)
                if self._close_requested.is_set():
                    break
                if self.connections > welcomed_before:
                    self.reconnect.reset()
                delay = self.reconnect.next()
                log.info("worker %s: reconnecting in %.2fs", self.name, delay)
                try:
                    await asyncio.wait_for(self._close_requested.wait(), delay)
                except asyncio.TimeoutError:
                    pass
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)
            await self._abort_all("the worker stopped")
            if owns_channel:
                await channel.close(None)
            self._running = False
            self._stopped.set()

    async def close(self) -> None:
        """Stops the worker as SIGTERM does: no new tasks, running ones finish within
        ``shutdown_grace``, the rest are handed back. Returns once :meth:`run` has
        returned. A second call skips what is left of the grace period."""
        self._request_close()
        if self._running:
            await self._stopped.wait()

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Waits for the server's ``welcome`` (True) or ``timeout`` (False); raises the
        error that ended :meth:`run` before one came."""
        waiters = {
            asyncio.ensure_future(self._connected.wait()),
            asyncio.ensure_future(self._stopped.wait()),
        }
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if self._connected.is_set():
            return True
        if self._error is not None:
            raise self._error
        return False

    def _request_close(self) -> None:
        if self._close_requested.is_set():
            self._hurry.set()
        self._close_requested.set()

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return []
        try:
            loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
        except (NotImplementedError, RuntimeError, ValueError):  # no signals on this loop
            return []
        return [signal.SIGTERM]

    def _on_sigterm(self) -> None:
        log.info("worker %s: SIGTERM: draining (grace %.1fs)", self.name, self.shutdown_grace)
        self._request_close()

    def _open_channel(self) -> grpc.aio.Channel:
        assert isinstance(self.server, str)
        return open_channel(self.server, self._channel_options, self._credentials)

    # -- one connection -----------------------------------------------------------------

    async def _session(self, connect: _Connect) -> None:
        """One ``Connect`` stream, from ``hello`` to its end (or to a finished drain)."""
        call: _Call = connect(None)
        outbox: _Outbox = asyncio.Queue()
        self._outbox = outbox
        self._draining = False
        writer: asyncio.Future[None] = asyncio.ensure_future(self._write_loop(call, outbox))
        reader: asyncio.Future[str | None] = asyncio.ensure_future(self._read_loop(call))
        closing = asyncio.ensure_future(self._close_requested.wait())
        try:
            hello = workers_pb2.WorkerHello(
                name=self.name, kinds=self.kinds, max_concurrency=self.max_concurrency
            )
            await self._send(workers_pb2.WorkerMessage(hello=hello), None)
            while True:
                either: set[asyncio.Future[Any]] = {reader, closing}
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                reason = _move_reason(reader)
                if reason is None or closing.done():
                    break
                moved = await self._move(connect, reason)
                if moved is not None:
                    old_call, old_outbox, old_writer = call, outbox, writer
                    call, outbox, writer = moved
                    old_outbox.put_nowait(None)  # half-close once its queue is written
                    leaving = asyncio.ensure_future(_read_to_end(old_call, old_writer))
                    self._left_behind.add(leaving)
                    leaving.add_done_callback(self._left_behind.discard)
                reader = asyncio.ensure_future(self._read_loop(call))
            if not reader.done():
                await self._drain(reader)
                outbox.put_nowait(None)  # half-close once everything queued is written
                both: set[asyncio.Future[Any]] = {reader, writer}
                await asyncio.wait(both, timeout=2.0)
            if reader.done() and not reader.cancelled():
                err = reader.exception()
                if err is not None:
                    raise err
        finally:
            self._connected.clear()
            self._outbox = None
            for task in (closing, reader, writer):
                task.cancel()
            call.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)
            _resolve_all(outbox)
            await self._abort_all("the worker's stream ended")

    async def _read_loop(self, call: _Call) -> str | None:
        """Dispatches commands until the end of the stream (``None``) or a ``reconnect``
        (its reason)."""
        try:
            while True:
                command = await call.read()
                if command is _EOF:
                    return None
                assert isinstance(command, workers_pb2.WorkerCommand)
                if command.WhichOneof("command") == "reconnect":
                    self._traced("recv", command)
                    return command.reconnect.reason
                self._dispatch(command)
        except grpc.RpcError as err:
            raise ReinsError.from_rpc_error(err) from None

    async def _write_loop(
        self,
        call: _Call,
        outbox: _Outbox,
    ) -> None:
        while True:
            item = await outbox.get()
            if item is None:
                await call.done_writing()
                return
            message, ctx, written = item
            try:
                if ctx is None or not ctx.aborted:  # nothing about an aborted task
                    self._traced("send", message)
                    await call.write(message)
            except (grpc.RpcError, asyncio.InvalidStateError) as err:
                log.debug("worker %s: write failed: %s", self.name, err)
                if self._outbox is outbox:
                    self._outbox = None
                _resolve(written)
                _resolve_all(outbox)
                return
            _resolve(written)

    async def _send(self, message: workers_pb2.WorkerMessage, ctx: AsyncTaskContext | None) -> None:
        """Queues a message and waits until it is written (backpressure); returns at once
        when there is no stream (the server has lost the task anyway)."""
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._held is not None:  # moving: written to the new stream once welcomed
            self._held.append((message, ctx, written))
            await written
            return
        outbox = self._outbox
        if outbox is None:
            return
        outbox.put_nowait((message, ctx, written))
        await written

    async def _move(
        self, connect: _Connect, reason: str, attempts: int = 20
    ) -> tuple[_Call, _Outbox, asyncio.Future[None]] | None:
        """Moves to another replica (module docstring): returns the new stream, its outbox
        and writer, or ``None`` if no replica took the worker (it stays where it is)."""
        log.info("worker %s: the replica asks to reconnect (%s); moving", self.name, reason)
        self._held = []
        running = [
            workers_pb2.RunningTask(task_id=task_id, attempt=job.ctx.task.attempt)
            for task_id, job in self._jobs.items()
            if job.runner is not None
        ]
        hello = workers_pb2.WorkerHello(
            name=self.name, kinds=self.kinds, max_concurrency=self.max_concurrency, running=running
        )
        delay = 0.1
        try:
            for _ in range(attempts):
                if self._close_requested.is_set():
                    break
                call: _Call = connect(None)
                try:
                    await call.write(workers_pb2.WorkerMessage(hello=hello))
                    first = await call.read()
                except grpc.RpcError as err:
                    # Most likely the draining replica itself (SHUTTING_DOWN).
                    log.debug("worker %s: move attempt failed: %s", self.name, err)
                    call.cancel()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                if not isinstance(first, workers_pb2.WorkerCommand) or not first.HasField(
                    "welcome"
                ):
                    call.cancel()
                    continue
                self._dispatch(first)
                adopted = set(first.welcome.adopted)
                outbox: _Outbox = asyncio.Queue()
                for item in self._held:
                    outbox.put_nowait(item)
                self._held = None
                self._outbox = outbox
                writer = asyncio.ensure_future(self._write_loop(call, outbox))
                for task_id in [task_id for task_id in self._jobs if task_id not in adopted]:
                    self._stop_job(
                        self._jobs.pop(task_id), "not adopted by the replica the worker moved to"
                    )
                log.info("worker %s: moved with %d task(s)", self.name, len(adopted))
                return call, outbox, writer
            log.warning("worker %s: no replica took the worker; staying", self.name)
            return None
        finally:
            held, self._held = self._held or [], None
            for item in held:
                if self._outbox is not None:
                    self._outbox.put_nowait(item)
                else:
                    _resolve(item[2])

    def _traced(self, direction: str, message: Any) -> None:
        if self._trace is not None:
            try:
                self._trace(direction, message)
            except Exception:
                log.exception("trace callback failed")

    def _dispatch(self, command: workers_pb2.WorkerCommand) -> None:
        self._traced("recv", command)
        which = command.WhichOneof("command")
        if which == "welcome":
            self.worker_id = command.welcome.worker_id
            if command.welcome.HasField("heartbeat_interval"):
                self.heartbeat_interval = command.welcome.heartbeat_interval.ToTimedelta()
            self.connections += 1
            log.info("worker %s connected as %s", self.name, self.worker_id)
            self._connected.set()
        elif which == "assign":
            self._assign(
                command.assign.task,
                dict(command.assign.trace_context),
                command.assign.budget_remaining,
            )
        elif which == "cancel":
            job = self._job(command.cancel.task_id)
            if job is not None:
                job.ctx._on_cancel(command.cancel)
        elif which == "abort":
            job = self._jobs.pop(command.abort.task_id, None)
            if job is not None:
                self._stop_job(job, command.abort.reason)
        elif which == "answer":
            job = self._job(command.answer.task_id)
            if job is not None:
                job.ctx._on_answer(command.answer)
        elif which == "usage_ack":
            job = self._job(command.usage_ack.task_id)
            if job is not None:
                job.ctx._on_usage_ack(command.usage_ack)
        else:
            log.warning("unknown command %r; ignored", which)

    def _job(self, task_id: str) -> _Job | None:
        job = self._jobs.get(task_id)
        if job is None:
            log.warning("command about task %s, which this worker does not run; ignored", task_id)
        return job

    def _assign(
        self,
        task: tasks_pb2.Task,
        trace_context: Mapping[str, str],
        budget_remaining: Mapping[str, float],
    ) -> None:
        job = _Job(AsyncTaskContext(self, task, budget_remaining), trace_context)
        self._jobs[task.id] = job
        if self._draining:
            # Shutting down: not started; handed back (requeued) when the stream closes.
            log.info("worker %s: draining; task %s not started, handed back", self.name, task.id)
            return
        running = sum(1 for j in self._jobs.values() if j.runner is not None)
        if running >= self.max_concurrency:
            log.warning(
                "worker %s: %d tasks assigned at once, more than max_concurrency %d",
                self.name,
                running + 1,
                self.max_concurrency,
            )
        job.runner = asyncio.ensure_future(self._run_job(job))
        job.runner.add_done_callback(_retrieve)

    async def _run_job(self, job: _Job) -> None:
        ctx = job.ctx
        outcome: workers_pb2.WorkerMessage | None
        _enter(ctx)  # this asyncio task's own context: reins.aio.current_task_context()
        with handler_span(ctx.task, job.trace_context) as span:
            try:
                result = await self.handler(ctx)
            except asyncio.CancelledError:
                span.outcome("aborted" if ctx.aborted else "fail", "the handler was cancelled")
                if not ctx.aborted:  # cancelled by someone else than this worker
                    self._forget(job)
                    await self._finish(ctx, _fail(ctx, "the handler was cancelled"))
                raise
            except Cancelled as stop:
                outcome = _outcome(ctx, "cancel_ack", stop.result)
            except CancelRequested:
                outcome = _outcome(ctx, "cancel_ack", None)
            except Exception as err:
                if not ctx.aborted:
                    log.info("task %s failed", ctx.task.id, exc_info=True)
                outcome = _fail(ctx, str(err) or type(err).__name__)
            else:
                kind = "cancel_ack" if ctx.cancel_requested.is_set() else "complete"
                outcome = _outcome(ctx, kind, result)
            which = outcome.WhichOneof("message") or ""
            span.outcome(which, outcome.fail.error if which == "fail" else "")
        self._forget(job)
        await self._finish(ctx, outcome)

    async def _finish(self, ctx: AsyncTaskContext, outcome: workers_pb2.WorkerMessage) -> None:
        if ctx._ended:
            return
        await ctx._send_message(outcome)
        ctx._ended = True

    def _forget(self, job: _Job) -> None:
        if self._jobs.get(job.ctx.task.id) is job:
            del self._jobs[job.ctx.task.id]

    def _stop_job(self, job: _Job, reason: str) -> None:
        """Hard stop: nothing more is sent; the handler is cancelled and reaped."""
        job.ctx._abort(reason)
        runner = job.runner
        if runner is None or runner.done():
            return
        runner.cancel(f"reins: task {job.ctx.task.id} aborted: {reason}")
        reaper = asyncio.ensure_future(self._reap(job.ctx.task.id, runner))
        self._reapers.add(reaper)
        reaper.add_done_callback(self._reapers.discard)

    async def _reap(self, task_id: str, runner: asyncio.Task[None]) -> None:
        done, _ = await asyncio.wait({runner}, timeout=self.cleanup_timeout)
        if done:
            _retrieve(runner)
            return
        log.error(
            "task %s: the handler was cancelled and still runs after %.1fs "
            "(it swallowed asyncio.CancelledError?); abandoned",
            task_id,
            self.cleanup_timeout,
        )
        runner.cancel("reins: abandoned after the cleanup timeout")
        self._abandoned.add(runner)
        runner.add_done_callback(self._abandoned.discard)
        runner.add_done_callback(_retrieve)

    async def _abort_all(self, reason: str) -> None:
        jobs = list(self._jobs.values())
        self._jobs.clear()
        for job in jobs:
            self._stop_job(job, reason)
        if self._reapers:
            await asyncio.gather(*self._reapers, return_exceptions=True)

    async def _drain(self, reader: asyncio.Future[Any]) -> None:
        """Shutdown: no new tasks; running ones may finish within ``shutdown_grace``."""
        self._draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.shutdown_grace
        hurry = asyncio.ensure_future(self._hurry.wait())
        try:
            while not reader.done() and not self._hurry.is_set():
                runners = {j.runner for j in self._jobs.values() if j.runner is not None}
                remaining = deadline - loop.time()
                if not runners or remaining <= 0:
                    break
                waiting: set[asyncio.Future[Any]] = {*runners, reader, hurry}
                await asyncio.wait(
                    waiting,
                    timeout=remaining,
                    return_when=asyncio.FIRST_COMPLETED,
                )
        finally:
            hurry.cancel()
        left = list(self._jobs.values())
        if left:
            log.info(
                "worker %s: handing back %d task(s): %s",
                self.name,
                len(left),
                ", ".join(job.ctx.task.id for job in left),
            )
        await self._abort_all("the worker is shutting down; the task is handed back")


def _outcome(ctx: AsyncTaskContext, kind: str, payload: Any) -> workers_pb2.WorkerMessage:
    try:
        value = None if payload is None else to_value(payload)
    except ValueError as err:
        return _fail(ctx, f"the handler's result is {err}")
    if kind == "complete":
        return workers_pb2.WorkerMessage(
            complete=workers_pb2.TaskComplete(task_id=ctx.task.id, result=value)
        )
    return workers_pb2.WorkerMessage(
        cancel_ack=workers_pb2.CancelAck(task_id=ctx.task.id, result=value)
    )


def _fail(ctx: AsyncTaskContext, error: str) -> workers_pb2.WorkerMessage:
    return workers_pb2.WorkerMessage(fail=workers_pb2.TaskFail(task_id=ctx.task.id, error=error))


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _resolve_all(
    outbox: _Outbox,
) -> None:
    while not outbox.empty():
        item = outbox.get_nowait()
        if item is not None:
            _resolve(item[2])


def _move_reason(reader: asyncio.Future[str | None]) -> str | None:
    """The reason of a ``reconnect`` that ended the read loop, if that is how it ended."""
    if not reader.done() or reader.cancelled() or reader.exception() is not None:
        return None
    return reader.result()


async def _read_to_end(call: _Call, writer: asyncio.Future[None]) -> None:
    """Reads a stream the worker moved away from to its end, ignoring what it says."""
    try:
        await writer
        while await call.read() is not _EOF:
            pass
    except (grpc.RpcError, asyncio.CancelledError):
        pass
    finally:
        call.cancel()


def _retrieve(task: asyncio.Task[None]) -> None:
    # Marks the handler's outcome as seen, so asyncio does not warn about it.
    if not task.cancelled():
        task.exception()
