"""``reins.Worker``: one ``WorkerService.Connect`` stream, one thread per assigned task.

See the package docstring (``help(reins)``) for the protocol.
"""

from __future__ import annotations

import dataclasses
import datetime
import inspect
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import grpc

from ._calls import WORKER_CONNECT, Seconds, TaskInfo, default_worker_name, duration
from ._client import ChannelOptions, open_channel
from ._credentials import Credentials
from ._errors import Aborted, AnswerTimedOut, Cancelled, CancelRequested, ReinsError
from ._proto import tasks_pb2, workers_pb2
from ._tracing import handler_span
from ._values import to_value

log = logging.getLogger("reins.worker")

#: A handler runs one task: it gets the task's context and returns its result.
Handler = Callable[["TaskContext"], Any]
#: ``trace(direction, message)``: called with ``"send"`` and each ``WorkerMessage`` queued
#: for the server, and ``"recv"`` and each ``WorkerCommand`` received.
Trace = Callable[[str, Any], None]


class TaskContext:
    """What a handler can do with its task, and what it learns about it.

    Reporting: :meth:`progress`, :meth:`checkpoint`, :meth:`ask`. Stop signals:
    :attr:`cancel_requested` / :attr:`cancel_reason` / :attr:`grace_deadline` (soft
    cancel: stop at the next checkpoint), :attr:`aborted` / :attr:`abort_reason` (hard
    cancel: stop now), :meth:`raise_if_cancelled`, :meth:`sleep`,
    :meth:`wait_cancelled`.

    All methods are thread-safe. Once the task has ended (the handler returned, or the
    task was aborted) reports are silently dropped: nothing more is sent about the task.
    """

    def __init__(
        self,
        worker: Worker,
        task: tasks_pb2.Task,
        budget_remaining: Mapping[str, float] | None = None,
    ) -> None:
        #: The task as assigned; ``task.budget_remaining`` is refreshed after every
        #: acknowledged usage report.
        self.task = TaskInfo.from_proto(task, budget_remaining)
        self._worker = worker
        self._cond = threading.Condition(threading.RLock())
        self._cancel_requested = False
        self._cancel_reason = ""
        self._grace_deadline: datetime.datetime | None = None
        self._aborted = False
        self._abort_reason = ""
        self._asking = False
        self._answer: str | None = None
        self._answer_timed_out = False
        # An outcome was sent, or the task was aborted: send nothing more.
        self._ended = False
        self._abort_event = threading.Event()
        self._stop_event = threading.Event()  # soft cancel or abort

    # -- what the handler learns ------------------------------------------------------

    @property
    def cancel_requested(self) -> bool:
        """True once a soft cancel (``cancel``) or a hard cancel (``abort``) arrived."""
        return self._stop_event.is_set()

    @property
    def cancel_reason(self) -> str:
        """The reason given with the cancel (or the abort); empty before one arrives."""
        with self._cond:
            return self._cancel_reason or self._abort_reason

    @property
    def grace_deadline(self) -> datetime.datetime | None:
        """When the server hard-cancels the task if it has not stopped (UTC), if known."""
        with self._cond:
            return self._grace_deadline

    @property
    def aborted(self) -> bool:
        """True once the task is hard-cancelled (``abort``) or the worker's stream ended.

        The task is over: stop now. Nothing sent about it counts any more, and the
        library sends nothing.
        """
        return self._abort_event.is_set()

    @property
    def abort_reason(self) -> str:
        """Why the task was aborted; empty if it was not."""
        with self._cond:
            return self._abort_reason

    def raise_if_cancelled(self) -> None:
        """Raises :class:`Aborted` after an abort, :class:`CancelRequested` after a cancel."""
        with self._cond:
            if self._aborted:
                raise Aborted(self._abort_reason)
            if self._cancel_requested:
                raise CancelRequested(self._cancel_reason)

    def sleep(self, seconds: float) -> None:
        """``time.sleep`` that raises :class:`Aborted` as soon as the task is aborted.

        A soft cancel does not interrupt it: soft cancels are honoured at checkpoints.
        """
        if self._abort_event.wait(seconds):
            raise Aborted(self.abort_reason)

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Blocks until a cancel or an abort arrives (True) or ``timeout`` passes (False)."""
        return self._stop_event.wait(timeout)

    # -- what the handler reports -----------------------------------------------------

    def progress(
        self, fraction: float, message: str = "", *, usage: Mapping[str, float] | None = None
    ) -> None:
        """Reports progress: ``fraction`` from 0.0 to 1.0 and a short message; ``usage``:
        what was spent since the last report (e.g. ``{"output_tokens": 120}``), counted
        against the budgets of the task and its ancestors. The server stops the task
        (a soft cancel) when a budget is exhausted; ``task.budget_remaining`` follows."""
        self._send(
            progress=workers_pb2.TaskProgress(
                task_id=self.task.id, fraction=fraction, message=message, usage=dict(usage or {})
            )
        )

    def checkpoint(
        self,
        partial_result: Any,
        fraction: float,
        message: str = "",
        *,
        usage: Mapping[str, float] | None = None,
    ) -> bool:
        """Reports progress with a partial result, appended to ``Task.partial_results``.

        Partial results are kept even if the task is cancelled later. ``partial_result``
        must be JSON-serialisable (ValueError otherwise). Returns
        :attr:`cancel_requested`: a checkpoint is where a task honours a soft cancel, e.g.
        ``if ctx.checkpoint(...): raise Cancelled(what_was_done)``.
        """
        value = to_value(partial_result)
        self._send(
            progress=workers_pb2.TaskProgress(
                task_id=self.task.id,
                fraction=fraction,
                message=message,
                partial_result=value,
                usage=dict(usage or {}),
            )
        )
        return self.cancel_requested

    def ask(
        self, question: str, timeout: float | None = None, *, answer_within: Seconds | None = None
    ) -> str:
        """Asks a question and blocks until it is answered (``AnswerTask``).

        The task is WAITING_FOR_ANSWER meanwhile. Raises :class:`CancelRequested` if a
        soft cancel arrives first (or had arrived already), :class:`Aborted` on an abort,
        and TimeoutError after ``timeout`` seconds (the question stays open on the
        server). With ``answer_within``, the server resumes the task unanswered after that
        long: :class:`AnswerTimedOut` (the task runs on). One question at a time.
        """
        with self._cond:
            self.raise_if_cancelled()
            if self._asking:
                raise RuntimeError("a question is open already: one at a time")
            self._asking = True
            self._answer = None
            self._answer_timed_out = False
            try:
                ask = workers_pb2.TaskAsk(task_id=self.task.id, question=question)
                if answer_within is not None:
                    ask.timeout.CopyFrom(duration(answer_within))
                self._send(ask=ask)
                answered = self._cond.wait_for(
                    lambda: self._answer is not None or self._stop_event.is_set(),
                    timeout,
                )
                if self._answer is not None and self._answer_timed_out:
                    raise AnswerTimedOut(question)
                if self._answer is not None:
                    return self._answer
                if not answered:
                    raise TimeoutError(f"no answer to {question!r} within {timeout}s")
                self.raise_if_cancelled()
                raise AssertionError("unreachable")
            finally:
                self._asking = False
                self._answer = None

    # -- driven by the worker -----------------------------------------------------------

    def _send(self, **message: Any) -> None:
        with self._cond:
            if self._ended:
                return
            self._worker._send(workers_pb2.WorkerMessage(**message))

    def _on_cancel(self, cancel: workers_pb2.CancelRequest) -> None:
        with self._cond:
            self._cancel_requested = True
            self._cancel_reason = cancel.reason
            if cancel.HasField("grace_deadline"):
                self._grace_deadline = cancel.grace_deadline.ToDatetime(
                    tzinfo=datetime.timezone.utc
                )
            self._stop_event.set()
            self._cond.notify_all()

    def _on_abort(self, reason: str) -> None:
        with self._cond:
            self._ended = True
            self._aborted = True
            self._abort_reason = reason
            self._abort_event.set()
            self._stop_event.set()
            self._cond.notify_all()

    def _on_answer(self, answer: workers_pb2.TaskAnswer) -> None:
        with self._cond:
            if not self._asking:
                log.warning("task %s: an answer nobody asked for; ignored", self.task.id)
                return
            self._answer = answer.answer
            self._answer_timed_out = answer.timed_out
            self._cond.notify_all()

    def _on_usage_ack(self, ack: workers_pb2.UsageAck) -> None:
        with self._cond:
            self.task = dataclasses.replace(self.task, budget_remaining=dict(ack.budget_remaining))

    def _run(self, handler: Handler, trace_context: Mapping[str, str]) -> None:
        """Runs the handler in this thread (in its span, see ``_tracing``) and sends its
        outcome."""
        with handler_span(self.task, trace_context) as span:
            try:
                result = handler(self)
            except Aborted:
                outcome: tuple[str, Any] | None = None
            except Cancelled as stop:
                outcome = ("cancel_ack", stop.result)
            except CancelRequested:
                outcome = ("cancel_ack", None)
            except BaseException as err:
                if not self.aborted:
                    log.info("task %s failed", self.task.id, exc_info=True)
                outcome = ("fail", str(err) or type(err).__name__)
            else:
                outcome = ("cancel_ack" if self.cancel_requested else "complete", result)
            if outcome is None:
                span.outcome("aborted")
            else:
                span.outcome(outcome[0], str(outcome[1]) if outcome[0] == "fail" else "")
        try:
            self._finish(outcome)
        finally:
            self._worker._forget(self)

    def _finish(self, outcome: tuple[str, Any] | None) -> None:
        with self._cond:
            if self._ended or outcome is None:
                self._ended = True
                return
            kind, payload = outcome
            message: workers_pb2.WorkerMessage
            try:
                if kind == "fail":
                    message = workers_pb2.WorkerMessage(
                        fail=workers_pb2.TaskFail(task_id=self.task.id, error=payload)
                    )
                else:
                    value = None if payload is None else to_value(payload)
                    message = (
                        workers_pb2.WorkerMessage(
                            complete=workers_pb2.TaskComplete(task_id=self.task.id, result=value)
                        )
                        if kind == "complete"
                        else workers_pb2.WorkerMessage(
                            cancel_ack=workers_pb2.CancelAck(task_id=self.task.id, result=value)
                        )
                    )
            except ValueError as err:
                message = workers_pb2.WorkerMessage(
                    fail=workers_pb2.TaskFail(
                        task_id=self.task.id, error=f"the handler's result is {err}"
                    )
                )
            self._worker._send(message)
            self._ended = True


def is_async_callable(obj: object) -> bool:
    """True for ``async def`` functions (also behind ``functools.partial``), async
    generator functions and objects whose ``__call__`` is one."""
    call = getattr(obj, "__call__", None)  # noqa: B004 - the method, not callable()
    return any(inspect.iscoroutinefunction(f) or inspect.isasyncgenfunction(f) for f in (obj, call))


class Worker:
    """A worker process's connection to one Reins replica; one thread per task.

    ``server``: ``"host:port"``, a URL (``http://…``, ``https://…`` for TLS) or a
    ``grpc.Channel``. ``kinds``: the task kinds this worker runs (not built-in ones).
    ``handler(ctx)``: a plain function that runs one task in its own thread; see
    :class:`TaskContext` and the package docstring for how its outcome is reported (an
    ``async def`` handler is a TypeError: use :class:`reins.aio.AsyncWorker`).
    ``max_concurrency``: tasks it runs at once (the server assigns no more). ``name``: for
    logs and ``Task.worker`` (default ``program@host:pid``). ``trace(direction,
    message)``: optional, sees every message sent and received.

    :meth:`run` blocks while connected; :meth:`start` runs it in a background thread; use
    as a context manager to start, wait for the connection and stop::

        with Worker("127.0.0.1:50051", ["demo"], handler, max_concurrency=4):
            ...

    A thread worker does not reconnect by itself: :meth:`run` returns (or raises) when the
    stream ends; call it again to reconnect. :meth:`stop` is final. When the replica it
    is connected to drains (``reconnect``), it moves: it opens a new stream (the channel's
    load balancing picks a replica that stays), says ``hello`` listing the tasks it still
    runs, and those the new replica adopts run on without restarting (see
    :meth:`_move`). (The
    :class:`~reins.aio.AsyncWorker` reconnects, drains on SIGTERM, and hard-cancels by
    cancelling the handler.)
    """

    def __init__(
        self,
        server: str | grpc.Channel,
        kinds: Iterable[str],
        handler: Handler,
        *,
        max_concurrency: int = 1,
        name: str | None = None,
        trace: Trace | None = None,
        channel_options: ChannelOptions = (),
        credentials: Credentials | None = None,
    ) -> None:
        if not callable(handler):
            raise TypeError(f"the handler must be a function, not {type(handler).__name__}")
        if is_async_callable(handler):
            raise TypeError(
                "reins.Worker runs plain functions, one thread per task; "
                "for an async def handler use reins.aio.AsyncWorker"
            )
        if isinstance(kinds, str):
            raise TypeError("kinds is a list of task kinds, not one string")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, not {max_concurrency}")
        self.name = name or default_worker_name()
        self.kinds = list(kinds)
        self.max_concurrency = max_concurrency
        self.handler = handler
        self._trace = trace
        self._owns_channel = isinstance(server, str)
        self._channel = (
            open_channel(server, channel_options, credentials)
            if isinstance(server, str)
            else server
        )
        self._connect: grpc.StreamStreamMultiCallable[
            workers_pb2.WorkerMessage, workers_pb2.WorkerCommand
        ] = self._channel.stream_stream(
            WORKER_CONNECT,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=workers_pb2.WorkerCommand.FromString,
        )
        self._lock = threading.Lock()
        self._tasks: dict[str, TaskContext] = {}
        self._outbox: queue.Queue[workers_pb2.WorkerMessage | None] | None = None
        #: Messages held back while the worker moves to another replica (``reconnect``).
        self._held: list[workers_pb2.WorkerMessage] | None = None
        #: Tasks whose outcome has been queued: they no longer move with the worker.
        self._reported: set[str] = set()
        self._call: Any = None
        self._running = False
        self._stopping = False
        self._connected = threading.Event()
        self._finished = threading.Event()
        self._thread: threading.Thread | None = None
        #: The id the server gave this connection (``welcome.worker_id``).
        self.worker_id: str | None = None
        #: How often the server pings the connection (``welcome.heartbeat_interval``).
        self.heartbeat_interval: datetime.timedelta | None = None
        #: The error that ended a background :meth:`start`, if any.
        self.error: BaseException | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def run(self) -> None:
        """Connects, says ``hello`` and serves assignments until :meth:`stop` or the end
        of the stream.

        Returns normally after :meth:`stop` or when the server closes the stream with OK;
        raises :class:`reins.ReinsError` when the stream fails (server unreachable or gone, a
        refused ``hello`` such as a built-in kind: INVALID_ARGUMENT). Tasks still running
        then are aborted locally (:attr:`TaskContext.aborted`); the server treats them as
        lost (retried if attempts remain, else FAILED; CANCELLED if a cancel was pending).
        """
        with self._lock:
            if self._running:
                raise RuntimeError("the worker is running already")
            self._running = True
            self._connected.clear()
            self._finished.clear()
            outbox: queue.Queue[workers_pb2.WorkerMessage | None] = queue.Queue()
            self._outbox = outbox
        error: ReinsError | None = None
        try:
            self._send(
                workers_pb2.WorkerMessage(
                    hello=workers_pb2.WorkerHello(
                        name=self.name,
                        kinds=self.kinds,
                        max_concurrency=self.max_concurrency,
                    )
                )
            )
            with self._lock:
                if self._stopping:
                    return
                self._call = self._connect(self._requests(outbox))
            call = self._call
            while call is not None:
                call = self._serve(call)
        except grpc.RpcError as err:
            if not self._stopping:
                error = ReinsError.from_rpc_error(err)
        finally:
            with self._lock:
                current = self._outbox
                self._outbox = None
                self._call = None
                tasks = list(self._tasks.values())
                self._tasks.clear()
                self._running = False
            outbox.put(None)
            if current is not None and current is not outbox:
                current.put(None)  # the stream of the replica the worker moved to
            for ctx in tasks:
                ctx._on_abort("the worker's stream ended")
            self._finished.set()
        if error is not None:
            raise error

    def start(self) -> threading.Thread:
        """Runs :meth:`run` in a daemon thread; its error, if any, lands in :attr:`error`."""

        def target() -> None:
            try:
                self.run()
            except BaseException as err:
                self.error = err
                log.warning("worker %s stopped: %s", self.name, err)

        self._finished.clear()
        self.error = None
        self._thread = threading.Thread(
            target=target, name=f"reins-worker-{self.name}", daemon=True
        )
        self._thread.start()
        return self._thread

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Blocks until the server's ``welcome`` (True) or ``timeout`` (False).

        Raises the error that ended a :meth:`start` before the welcome; False if the stream
        ended without one.
        """
        deadline = None if timeout is None else _now() + timeout
        while True:
            if self._connected.is_set():
                return True
            if self.error is not None:
                raise self.error
            if self._finished.is_set():
                return False
            remaining = None if deadline is None else max(0.0, deadline - _now())
            if remaining == 0.0:
                return False
            self._connected.wait(min(0.05, remaining) if remaining is not None else 0.05)

    def stop(self, timeout: float | None = 10.0) -> None:
        """Closes the stream and waits (up to ``timeout``) for :meth:`run` to return.

        Running tasks are aborted locally and lost to the server (see :meth:`run`).
        """
        with self._lock:
            self._stopping = True
            call, outbox, running = self._call, self._outbox, self._running
        if call is not None:
            call.cancel()
        if outbox is not None:
            outbox.put(None)
        if running or (self._thread is not None and self._thread.is_alive()):
            self._finished.wait(timeout)
        if self._thread is not None:
            self._thread.join(timeout)
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> Worker:
        self.start()
        if not self.wait_connected(30):
            self.stop()
            raise TimeoutError(f"worker {self.name}: no welcome from the server within 30s")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def active_tasks(self) -> list[str]:
        """Ids of the tasks this worker runs now."""
        with self._lock:
            return list(self._tasks)

    # -- the stream ---------------------------------------------------------------------

    def _serve(self, call: Any) -> Any:
        """Dispatches the commands of ``call`` until it ends (``None``) or the worker moved
        to another replica (the new call)."""
        for command in call:
            if command.WhichOneof("command") == "reconnect":
                self._traced("recv", command)
                moved = self._move(command.reconnect.reason)
                if moved is not None:
                    # The old stream is half-closed; read it to its end, ignoring it.
                    threading.Thread(target=_drain_call, args=(call,), daemon=True).start()
                    return moved
            else:
                self._dispatch(command)
        return None

    def _move(self, reason: str, attempts: int = 20) -> Any:
        """Moves to another replica: holds back what the tasks send, opens a new stream
        whose ``hello`` lists the running tasks (those that have not sent their outcome),
        and once its ``welcome`` comes, sends the held messages there, stops the tasks it
        did not adopt and half-closes the old stream. Returns the new call, or ``None``
        when no replica took the worker (it stays where it is until that stream ends).

        A progress message or question sent on the old stream in the instant of the move
        may reach the old replica after the new one adopted the task, and is then dropped
        (its reports are fenced); outcomes never are: a task whose outcome is on its way
        to the old replica does not move.
        """
        log.info("worker %s: the replica asks to reconnect (%s); moving", self.name, reason)
        with self._lock:
            self._held = []
            running = [
                workers_pb2.RunningTask(task_id=task_id, attempt=ctx.task.attempt)
                for task_id, ctx in self._tasks.items()
                if task_id not in self._reported
            ]
        hello = workers_pb2.WorkerHello(
            name=self.name, kinds=self.kinds, max_concurrency=self.max_concurrency, running=running
        )
        delay = 0.1
        for _ in range(attempts):
            outbox: queue.Queue[workers_pb2.WorkerMessage | None] = queue.Queue()
            outbox.put(workers_pb2.WorkerMessage(hello=hello))
            call: Any = self._connect(self._requests(outbox))
            try:
                first = next(call)
            except (grpc.RpcError, StopIteration) as err:
                # Most likely the draining replica itself (refused: SHUTTING_DOWN).
                log.debug("worker %s: move attempt failed: %s", self.name, err)
                outbox.put(None)
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            self._dispatch(first)
            adopted = set(first.welcome.adopted)
            with self._lock:
                old, self._outbox, self._call = self._outbox, outbox, call
                held, self._held = self._held or [], None
                for message in held:
                    outbox.put(message)
                left = [ctx for task_id, ctx in self._tasks.items() if task_id not in adopted]
                for ctx in left:
                    del self._tasks[ctx.task.id]
            for ctx in left:
                ctx._on_abort("not adopted by the replica the worker moved to")
            if old is not None:
                old.put(None)
            log.info("worker %s: moved with %d task(s)", self.name, len(adopted))
            return call
        with self._lock:
            held, self._held = self._held or [], None
            for message in held:
                if self._outbox is not None:
                    self._outbox.put(message)
        log.warning("worker %s: no replica took the worker; staying", self.name)
        return None

    def _requests(
        self, outbox: queue.Queue[workers_pb2.WorkerMessage | None]
    ) -> Iterator[workers_pb2.WorkerMessage]:
        while True:
            message = outbox.get()
            if message is None:
                return
            yield message

    def _send(self, message: workers_pb2.WorkerMessage) -> None:
        with self._lock:
            outbox = self._outbox
            if outbox is None:
                return  # not connected: the task is lost to the server anyway
            self._traced("send", message)
            outcome = message.WhichOneof("message") in ("complete", "fail", "cancel_ack")
            if outcome:
                self._reported.add(getattr(message, message.WhichOneof("message")).task_id)
            if self._held is not None:
                self._held.append(message)
                return
            outbox.put(message)

    def _traced(self, direction: str, message: Any) -> None:
        if self._trace is not None:
            try:
                self._trace(direction, message)
            except Exception:
                log.exception("trace callback failed")

    def _forget(self, ctx: TaskContext) -> None:
        with self._lock:
            if self._tasks.get(ctx.task.id) is ctx:
                del self._tasks[ctx.task.id]
            self._reported.discard(ctx.task.id)

    def _dispatch(self, command: workers_pb2.WorkerCommand) -> None:
        self._traced("recv", command)
        which = command.WhichOneof("command")
        if which == "welcome":
            self.worker_id = command.welcome.worker_id
            if command.welcome.HasField("heartbeat_interval"):
                self.heartbeat_interval = command.welcome.heartbeat_interval.ToTimedelta()
            log.info("worker %s connected as %s", self.name, self.worker_id)
            self._connected.set()
        elif which == "assign":
            assigned = TaskContext(self, command.assign.task, command.assign.budget_remaining)
            with self._lock:
                self._tasks[assigned.task.id] = assigned
            threading.Thread(
                target=assigned._run,
                args=(self.handler, dict(command.assign.trace_context)),
                name=f"reins-task-{assigned.task.id}",
                daemon=True,
            ).start()
        elif which == "cancel":
            ctx = self._task(command.cancel.task_id)
            if ctx is not None:
                ctx._on_cancel(command.cancel)
        elif which == "abort":
            with self._lock:
                ctx = self._tasks.pop(command.abort.task_id, None)
            if ctx is not None:
                ctx._on_abort(command.abort.reason)
        elif which == "answer":
            ctx = self._task(command.answer.task_id)
            if ctx is not None:
                ctx._on_answer(command.answer)
        elif which == "usage_ack":
            ctx = self._task(command.usage_ack.task_id)
            if ctx is not None:
                ctx._on_usage_ack(command.usage_ack)
        else:
            log.warning("unknown command %r; ignored", which)

    def _task(self, task_id: str) -> TaskContext | None:
        with self._lock:
            ctx = self._tasks.get(task_id)
        if ctx is None:
            log.warning("command about task %s, which this worker does not run; ignored", task_id)
        return ctx


def _now() -> float:
    return time.monotonic()


def _drain_call(call: Any) -> None:
    """Reads a stream the worker moved away from to its end; what it says is ignored."""
    try:
        for _ in call:
            pass
    except grpc.RpcError:
        pass
