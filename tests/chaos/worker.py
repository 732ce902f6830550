"""A chaos worker process: serves kind ``chaos`` with :class:`reins.aio.AsyncWorker` and
logs every run of a task's code (who ran which attempt of which task, from when to when,
and how it ended) to a JSON-lines file, one flushed line per event, so that a ``kill -9``
loses nothing already logged.

A task's params say what its code does:

- ``steps`` × ``step_ms``: each step sleeps, then checkpoints ``{"step", "attempt", "by"}``
  with the progress message ``worker#attempt:step`` (how the checker tells whose report
  a version holds);
- ``ask_at``: asks a question after that step (WAITING_FOR_ANSWER) and puts the answer into
  its result;
- ``fail_at``: fails at that step;
- ``spend``: reports that many ``tokens`` with each checkpoint. The code behaves as a
  budget-aware agent: one usage report in flight at a time (it waits for the server's
  ``UsageAck``), and none once the server said nothing is left; then it waits for the
  server's soft cancel.

    python worker.py --server 127.0.0.1:7001 --name w0 --log w0.jsonl --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import IO, Any

from reins import Backoff, CancelRequested
from reins.aio import AsyncTaskContext, AsyncWorker

KIND = "chaos"
#: How long code told that its budget is spent waits for the server's cancel before it
#: gives up and completes (which the checker then reports).
CANCEL_AFTER_BUDGET_WITHIN = 60.0


class RunLog:
    """The worker's log of runs: ``start`` and ``end`` lines."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def write(self, **entry: Any) -> None:
        entry["t"] = time.time()
        self._out.write(json.dumps(entry) + "\n")
        self._out.flush()


async def run_steps(ctx: AsyncTaskContext, label: str) -> dict[str, Any]:
    params = ctx.task.params
    steps, step_ms = int(params["steps"]), int(params["step_ms"])
    ask_at, fail_at = int(params.get("ask_at", 0)), int(params.get("fail_at", 0))
    spend = float(params.get("spend", 0))
    attempt = ctx.task.attempt
    answer: str | None = None
    for step in range(1, steps + 1):
        await asyncio.sleep(step_ms / 1000)
        usage: dict[str, float] | None = None
        if spend:
            left = ctx.task.budget_remaining.get("tokens")
            if left is not None and left <= 0:
                # Told that nothing is left: spend no more, wait for the server's cancel.
                try:
                    await asyncio.wait_for(ctx.cancel_requested.wait(), CANCEL_AFTER_BUDGET_WITHIN)
                except asyncio.TimeoutError:
                    break  # completes: the checker reports a budget that did not stop it
                ctx.raise_if_cancelled()
            usage = {"tokens": spend}
        acked = ctx.task
        await ctx.checkpoint(
            {"step": step, "attempt": attempt, "by": label},
            step / steps,
            f"{label}#{attempt}:{step}",
            usage=usage,
        )
        if usage is not None:
            # The UsageAck replaces ctx.task (the SDK has no event for it); a hard cancel
            # interrupts the wait.
            while ctx.task is acked:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        if step == ask_at:
            answer = await ctx.ask(f"question of {ctx.task.id} in attempt {attempt}")
        if step == fail_at:
            raise RuntimeError(f"planned failure at step {step}")
    return {"steps": steps, "answer": answer, "attempt": attempt, "by": label}


def make_handler(worker_of: list[AsyncWorker], log: RunLog) -> Any:
    async def handler(ctx: AsyncTaskContext) -> dict[str, Any]:
        worker = worker_of[0]
        label = f"{worker.name}/{worker.worker_id}"
        key = {"task": ctx.task.id, "attempt": ctx.task.attempt, "worker": label}
        log.write(ev="start", **key)
        how = "aborted"
        try:
            result = await run_steps(ctx, label)
            how = "cancel_ack" if ctx.cancel_requested.is_set() else "complete"
            return result
        except CancelRequested:
            how = "cancel_ack"
            raise
        except asyncio.CancelledError:
            how = "aborted"
            raise
        except Exception:
            how = "fail"
            raise
        finally:
            seen = ctx.cancel_requested.is_set() and not ctx.aborted
            log.write(ev="end", how=how, cancel_seen=seen, **key)

    return handler


async def serve(server: str, name: str, log_path: Path, concurrency: int) -> None:
    with log_path.open("a") as out:
        holder: list[AsyncWorker] = []
        worker = AsyncWorker(
            server,
            [KIND],
            make_handler(holder, RunLog(out)),
            max_concurrency=concurrency,
            name=name,
            cleanup_timeout=2.0,
            shutdown_grace=1.0,
            reconnect=Backoff(initial=0.05, maximum=1.0),
        )
        holder.append(worker)
        await worker.run()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="host:port (the chaos relay)")
    parser.add_argument("--name", required=True)
    parser.add_argument("--log", type=Path, required=True, help="the JSON-lines run log")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(serve(args.server, args.name, args.log, args.concurrency))
    return 0


if __name__ == "__main__":
    sys.exit(main())
