"""Reins from Python: start long-running work and reliably stop it.

- :class:`reins.Client` and :class:`reins.aio.AsyncClient`: start, check, soft/hard
  cancel, list, watch and answer tasks (``reins.v1.TaskService``).
- :class:`reins.aio.AsyncWorker`: runs tasks of your kinds as ``async def`` handlers, many
  per process; a hard cancel cancels the handler's asyncio task.
- :class:`reins.Worker`: the same with plain functions, one thread per task.
- :mod:`reins.pydantic_ai` (extra ``reins[pydantic-ai]``): delegation tools for a
  pydantic-ai agent whose subagents are Reins tasks.

A worker::

    import asyncio
    import reins
    from reins.aio import AsyncWorker

    async def handler(ctx):                    # one asyncio task per Reins task
        done = []
        try:
            for step in range(ctx.task.params.get("steps", 3)):
                await asyncio.sleep(0.1)       # a hard cancel raises CancelledError here
                done.append(step)
                # a partial result; raises CancelRequested once a soft cancel arrived
                await ctx.checkpoint({"step": step}, (step + 1) / 3)
        except reins.CancelRequested:
            raise reins.Cancelled({"steps_done": done})   # CANCELLED, partial results kept
        return {"steps_done": done}            # COMPLETED with this result

    asyncio.run(AsyncWorker("127.0.0.1:50051", ["demo"], handler, max_concurrency=4).run())

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
    progress {… , usage}                  →                         (spent since the last
                                          ←  usage_ack {budget_remaining}  report; budgets)
    ask {task_id, question, timeout}      →                         (WAITING_FOR_ANSWER)
                                          ←  answer {task_id, answer, timed_out}
                                                            (after AnswerTask, or the timeout)
                                          ←  cancel {task_id, reason, grace_deadline}
                                                            (soft: stop at the next checkpoint)
    cancel_ack {task_id, result}          →                 (CANCELLED, partial results kept)
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

How a handler's outcome is reported (both workers):

==========================================  =============================================
the handler…                                the worker sends
==========================================  =============================================
returns ``result``                          ``complete(result)``
returns ``result`` after a cancel arrived   ``cancel_ack(result)``
raises ``Cancelled(result)``                ``cancel_ack(result)``
raises ``CancelRequested`` (from ``ask``,   ``cancel_ack`` with no result
``checkpoint``, ``raise_if_cancelled``)
raises any other exception ``e``            ``fail(str(e))``
anything, once the task was aborted         nothing
==========================================  =============================================

Results, partial results and params are JSON values (``google.protobuf.Value``); numbers
arrive as ints when integral. A result that is not JSON (or holds NaN) fails the task.

The generated ``reins.v1`` modules are in :mod:`reins.proto` (built from ``proto/`` when
the package is built).
"""

from ._backoff import Backoff
from ._calls import TaskInfo
from ._client import Client
from ._credentials import Credentials
from ._errors import Aborted, AnswerTimedOut, Cancelled, CancelRequested, ReinsError
from ._values import from_value, to_value
from ._worker import Handler, TaskContext, Worker

__version__ = "0.2.0"

__all__ = [
    "Aborted",
    "AnswerTimedOut",
    "Backoff",
    "CancelRequested",
    "Cancelled",
    "Client",
    "Credentials",
    "Handler",
    "ReinsError",
    "TaskContext",
    "TaskInfo",
    "Worker",
    "__version__",
    "from_value",
    "to_value",
]
