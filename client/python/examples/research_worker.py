#!/usr/bin/env python3
"""A Reins worker (threads, :class:`reins.Worker`) for a phased "research" task: search,
read, summarize. ``async_research_worker.py`` is the same on asyncio.

Each phase runs a few steps (a small sleep each, with a progress report) and ends with a
checkpoint: one partial result ``{"phase": …, "notes": […]}``. A soft cancel is honoured
at those checkpoints: the task stops there and returns what it has done so far
(``cancel_ack``); a hard cancel (``abort``) interrupts the step at once.

Params (all optional):

- ``topic`` (str): what to research. Default ``"anything"``.
- ``step_ms`` (int): the length of one step. Default 50.
- ``ask`` (str): a question asked after the search phase; its answer goes into the result.
  A soft cancel while it waits stops the task too.
- ``fail_in`` (str): the phase in which the task fails (a demo of ``fail``).

The result: ``{"topic", "phases_done", "summary", "answer", "stopped_early", "reason"}``.

Run it (``--kind`` defaults to ``research``)::

    python examples/research_worker.py --server 127.0.0.1:50051 --concurrency 4
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys

from reins import Aborted, Cancelled, CancelRequested, TaskContext, Worker

#: The phases and how many steps each takes.
PHASES = (("search", 3), ("read", 3), ("summarize", 2))


def research(ctx: TaskContext) -> dict:
    """The handler: runs the phases, checkpointing one partial result per phase."""
    params = ctx.task.params
    topic = str(params.get("topic", "anything"))
    step = int(params.get("step_ms", 50)) / 1000
    phases_done: list[str] = []
    answer = None

    def stopped() -> Cancelled:
        return Cancelled(
            {
                "topic": topic,
                "phases_done": list(phases_done),
                "answer": answer,
                "stopped_early": True,
                "reason": ctx.cancel_reason,
            }
        )

    for index, (phase, steps) in enumerate(PHASES):
        if params.get("fail_in") == phase:
            raise RuntimeError(f"{phase} failed: no sources about {topic!r}")
        notes = []
        for i in range(steps):
            ctx.sleep(step)  # a hard cancel raises Aborted here: nothing more is sent
            notes.append(f"{phase} {topic} #{i + 1}")
            ctx.progress((index + (i + 1) / steps) / len(PHASES), f"{phase}: step {i + 1}/{steps}")
        phases_done.append(phase)
        fraction = (index + 1) / len(PHASES)
        if ctx.checkpoint({"phase": phase, "notes": notes}, fraction, f"{phase} done"):
            raise stopped()  # a soft cancel: stop at this checkpoint with what is done
        if phase == "search" and params.get("ask"):
            try:
                answer = ctx.ask(str(params["ask"]))
            except Aborted:
                raise
            except CancelRequested:  # a soft cancel while waiting for the answer
                raise stopped() from None
    return {
        "topic": topic,
        "phases_done": phases_done,
        "summary": f"{topic}: {sum(steps for _, steps in PHASES)} steps in {len(PHASES)} phases",
        "answer": answer,
        "stopped_early": False,
        "reason": "",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default=os.environ.get("REINS_SERVER", "127.0.0.1:50051"))
    parser.add_argument("--name", default=f"research-worker@{socket.gethostname()}")
    parser.add_argument(
        "--kind", action="append", help="kind served (repeatable); default research"
    )
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    worker = Worker(
        args.server,
        args.kind or ["research"],
        research,
        max_concurrency=args.concurrency,
        name=args.name,
    )
    signal.signal(signal.SIGTERM, lambda *_: worker.stop(timeout=0))
    try:
        worker.run()
    except KeyboardInterrupt:
        worker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
