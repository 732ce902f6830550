#!/usr/bin/env python3
"""A Reins worker on asyncio (:class:`reins.aio.AsyncWorker`) for the phased "research"
task of ``research_worker.py``: search, read, summarize, many tasks per process.

Each phase runs a few steps (``await asyncio.sleep``, standing for an LLM call or an HTTP
request) with a progress report, and ends with a checkpoint ``{"phase", "notes"}``.

- A **soft cancel** is honoured at those checkpoints: ``ctx.checkpoint`` raises
  ``CancelRequested``, and the handler stops with what it has done (``Cancelled(result)``).
- A **hard cancel** cancels the handler: ``asyncio.CancelledError`` comes out of the step it
  awaits, the ``finally`` block runs, and nothing more is reported.
- **SIGTERM** drains the worker: no new tasks, running ones get ``--shutdown-grace``
  seconds, the rest are handed back to the server (retried elsewhere if attempts remain).

Params (all optional): ``topic``, ``step_ms`` (default 50), ``ask`` (a question after the
search phase), ``fail_in`` (a phase that fails). The result:
``{"topic", "phases_done", "summary", "answer", "stopped_early", "reason", "attempt"}``.

Run it::

    python examples/async_research_worker.py --server 127.0.0.1:50051 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

from reins import Cancelled, CancelRequested
from reins.aio import AsyncTaskContext, AsyncWorker

#: The phases and how many steps each takes.
PHASES = (("search", 3), ("read", 3), ("summarize", 2))

log = logging.getLogger("async_research_worker")


async def research(ctx: AsyncTaskContext) -> dict[str, Any]:
    """The handler: runs the phases, checkpointing one partial result per phase."""
    params = ctx.task.params
    topic = str(params.get("topic", "anything"))
    step = int(params.get("step_ms", 50)) / 1000
    phases_done: list[str] = []
    answer: str | None = None
    try:
        for index, (phase, steps) in enumerate(PHASES):
            if params.get("fail_in") == phase:
                raise RuntimeError(f"{phase} failed: no sources about {topic!r}")
            notes = []
            for i in range(steps):
                await asyncio.sleep(step)  # a hard cancel raises CancelledError here
                notes.append(f"{phase} {topic} #{i + 1}")
                fraction = (index + (i + 1) / steps) / len(PHASES)
                await ctx.progress(fraction, f"{phase}: step {i + 1}/{steps}")
            phases_done.append(phase)
            # Raises CancelRequested once a soft cancel has arrived: stop here.
            await ctx.checkpoint({"phase": phase, "notes": notes}, message=f"{phase} done")
            if phase == "search" and params.get("ask"):
                answer = await ctx.ask(str(params["ask"]))  # CancelRequested too
    except CancelRequested:
        raise Cancelled(
            {
                "topic": topic,
                "phases_done": phases_done,
                "answer": answer,
                "stopped_early": True,
                "reason": ctx.cancel_reason,
                "attempt": ctx.task.attempt,
            }
        ) from None
    except asyncio.CancelledError:
        log.info("task %s: hard-cancelled (%s)", ctx.task.id, ctx.abort_reason)
        raise  # always let it go on: the worker reaps the handler
    return {
        "topic": topic,
        "phases_done": phases_done,
        "summary": f"{topic}: {sum(steps for _, steps in PHASES)} steps in {len(PHASES)} phases",
        "answer": answer,
        "stopped_early": False,
        "reason": "",
        "attempt": ctx.task.attempt,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--server", default=os.environ.get("REINS_SERVER", "127.0.0.1:50051"))
    parser.add_argument("--name", default=None, help="default: program@host:pid")
    parser.add_argument(
        "--kind", action="append", help="kind served (repeatable); default research"
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--shutdown-grace", type=float, default=30.0, metavar="SECONDS")
    parser.add_argument("--cleanup-timeout", type=float, default=5.0, metavar="SECONDS")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    worker = AsyncWorker(
        args.server,
        args.kind or ["research"],
        research,
        max_concurrency=args.concurrency,
        name=args.name,
        shutdown_grace=args.shutdown_grace,
        cleanup_timeout=args.cleanup_timeout,
    )
    asyncio.run(worker.run())  # until SIGTERM (drains) or Ctrl-C
    log.info("worker stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
