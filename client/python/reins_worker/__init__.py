"""Run Reins tasks in Python: a worker for ``reins.v1.WorkerService``.

A worker process connects to any Reins replica, says which task kinds it serves, and runs
the tasks of those kinds the service assigns to it, one thread per task::

    from reins_worker import Worker, Cancelled

    def handler(ctx):                      # runs in its own thread, one per task
        steps, done = ctx.task.params.get("steps", 3), []
        for step in range(steps):
            ctx.sleep(0.1)                 # raises Aborted on a hard cancel
            done.append(step)
            if ctx.checkpoint({"step": step}, (step + 1) / steps, f"step {step}"):
                raise Cancelled({"steps_done": done})   # soft cancel honoured here
        return {"steps_done": done}        # → complete

    Worker("127.0.0.1:50051", "demo@host", ["demo"], 4, handler).run()

Protocol (``proto/reins/v1/workers.proto``), one bidirectional ``Connect`` stream per
worker process::

    worker → server                          server → worker
    ---------------                          ---------------
    hello {name, kinds, max_concurrency}  →
                                          ←  welcome {worker_id, heartbeat_interval}
                                          ←  assign {task}          (up to max_concurrency at once)
    progress {task_id, fraction, message} →                         (RUNNING; version + 1)
    progress {… , partial_result}         →                         (a checkpoint: appended
                                                                     to Task.partial_results)
    ask {task_id, question}               →                         (WAITING_FOR_ANSWER)
                                          ←  answer {task_id, answer}  (after AnswerTask)
                                          ←  cancel {task_id, reason, grace_deadline}
                                                                    (soft: stop at the next checkpoint)
    cancel_ack {task_id, result}          →                         (CANCELLED, partial results kept)
    complete {task_id, result}            →                         (COMPLETED; also wins a
                                                                     race against a soft cancel)
    fail {task_id, error}                 →                         (FAILED)
                                          ←  abort {task_id, reason}
                                                                    (hard: the task is CANCELLED
                                                                     already; stop now)

- ``hello`` comes first and once; the server answers ``welcome`` (or ends the stream with
  INVALID_ARGUMENT, e.g. for a built-in kind such as ``sleep``). Tasks of the worker's
  kinds may be started on any replica: they queue in the shared store and the replica
  this worker is connected to assigns them.
- Each assigned task ends with exactly one of ``complete``, ``fail``, ``cancel_ack`` —
  or with ``abort`` from the server, after which the worker sends nothing about it
  (anything sent is ignored).
- A soft cancel is a request: the task stops at its next checkpoint and sends
  ``cancel_ack`` with what it did, or finishes (``complete``). Past ``grace_deadline``
  the server aborts it. A cancel also interrupts an open question (no ``answer`` comes).
- The server pings the connection (HTTP/2 keepalive, answered by gRPC itself); when the
  stream ends the worker's tasks are lost: retried if attempts remain, else FAILED, or
  CANCELLED if a cancel was pending.

How a handler's outcome is reported (see :class:`TaskContext`):

==========================================  =============================================
the handler…                                the worker sends
==========================================  =============================================
returns ``result``                          ``complete(result)``
returns ``result`` after a cancel arrived   ``cancel_ack(result)``
raises ``Cancelled(result)``                ``cancel_ack(result)``
raises ``CancelRequested`` (e.g. from       ``cancel_ack`` with no result
``ask`` or ``raise_if_cancelled``)
raises any other exception ``e``            ``fail(str(e))``
anything, once the task was aborted         nothing
==========================================  =============================================

Results, partial results and params are JSON values (``google.protobuf.Value``); numbers
arrive as ints when integral. A result that is not JSON (or holds NaN) fails the task.

Stubs are generated from the repository's ``proto/`` on first import (see
:mod:`reins_worker.proto`); ``reins_worker.proto.tasks_pb2_grpc.TaskServiceStub`` is the
client side of the service.
"""

from .worker import (
    Aborted,
    Cancelled,
    CancelRequested,
    Handler,
    TaskContext,
    TaskInfo,
    Worker,
    from_value,
    to_value,
)

__all__ = [
    "Aborted",
    "Cancelled",
    "CancelRequested",
    "Handler",
    "TaskContext",
    "TaskInfo",
    "Worker",
    "from_value",
    "to_value",
]
