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

Credentials, as the Kubernetes manifests give them (all optional): ``REINS_TOKEN_FILE``
(a file holding the bearer token; ``REINS_TOKEN`` for the token itself), ``REINS_CA_CERT``
(the PEM CA of the server's certificate: TLS), ``REINS_CLIENT_CERT`` and
``REINS_CLIENT_KEY`` (mutual TLS).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from reins import Aborted, Cancelled, CancelRequested, Credentials, TaskContext, Worker

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


def credentials_from_env() -> Credentials:
    """The worker's credentials from the environment (see the module doc)."""
    token = os.environ.get("REINS_TOKEN")
    token_file = os.environ.get("REINS_TOKEN_FILE")
    if token_file:
        token = Path(token_file).read_text().strip()
    ca_cert = os.environ.get("REINS_CA_CERT") or None
    if token and ca_cert is None:
        # reins sends a token only over TLS (or to loopback): without a CA the channel is
        # plaintext, as in the dev overlay, whose server has no auth config.
        logging.warning("no REINS_CA_CERT: the token is not sent over a plaintext channel")
        token = None
    return Credentials.from_files(
        token=token or None,
        ca_cert=ca_cert,
        cert=os.environ.get("REINS_CLIENT_CERT") or None,
        key=os.environ.get("REINS_CLIENT_KEY") or None,
    )


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
        credentials=credentials_from_env(),
    )
    signal.signal(signal.SIGTERM, lambda *_: worker.stop(timeout=0))
    try:
        worker.run()
    except KeyboardInterrupt:
        worker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
