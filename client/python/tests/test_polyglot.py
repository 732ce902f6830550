"""Polyglot: a Python parent task whose children run on a Node worker, and one soft cancel of
the parent that stops the code of both languages, each with its partial results.

The Node worker is the Node SDK's example (``client/node/examples/worker.ts``, built into
``client/node/dist/`` by run_tests.sh) in a process of its own on replica ``a``; the Python
parent runs in an AsyncWorker on replica ``b``; the test talks to ``b``.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import PATIENCE, REPO, Cluster, done_async, run_async, serving, until_async
from reins import Cancelled, CancelRequested, from_value
from reins.aio import AsyncClient, AsyncTaskContext
from reins.proto import tasks_pb2

NODE_WORKER = REPO / "client" / "node" / "dist" / "examples" / "worker.js"
CANCELLED = tasks_pb2.TASK_STATE_CANCELLED
SOFT = tasks_pb2.CANCEL_MODE_SOFT


class NodeWorker:
    """``node client/node/dist/examples/worker.js SERVER KIND``, connected (it printed
    ``connected <id>``); stopped with SIGTERM (it drains), killed if it does not exit."""

    def __init__(self, server: str, kind: str) -> None:
        node = shutil.which("node")
        if node is None:
            pytest.fail("node is not installed (the machine has Node 20: see tests/run.sh)")
        if not NODE_WORKER.exists():
            pytest.fail(f"{NODE_WORKER} is missing: run_tests.sh builds it (npm ci, npm run build)")
        self.log = tempfile.NamedTemporaryFile(prefix="node-worker-", suffix=".log")
        self.process = subprocess.Popen(
            [node, str(NODE_WORKER), server, kind],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        connected = threading.Event()

        def read_stdout() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:  # drained to the end, so node never blocks
                if line.startswith("connected "):
                    connected.set()

        self._reader = threading.Thread(target=read_stdout, daemon=True)
        self._reader.start()
        if not connected.wait(PATIENCE):
            self.stop()
            pytest.fail(f"the Node worker did not connect:\n{self.logs()}")

    def logs(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(PATIENCE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(PATIENCE)
        self.log.close()


@pytest.fixture
def node_worker(
    request: pytest.FixtureRequest, cluster: Cluster, kind: str
) -> Iterator[tuple[str, NodeWorker]]:
    """A Node worker on replica ``a`` serving ``<kind>-node``: (its kind, the worker). Its
    log is printed when the test fails."""
    node_kind = f"{kind}-node"
    worker = NodeWorker(cluster.a.address, node_kind)
    try:
        yield node_kind, worker
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(f"---- Node worker log ----\n{worker.logs()}")
        worker.stop()


def test_one_soft_cancel_of_a_python_parent_stops_its_node_children(cluster, kind, node_worker):
    node_kind, node = node_worker
    children: list[str] = []

    async def parent(ctx: AsyncTaskContext) -> dict[str, Any]:
        """Starts two Node children, then works in steps until asked to stop; then waits
        for the children (cancelled by the server with it) and reports what each did."""
        async with AsyncClient(cluster.b.address) as client:
            for _ in range(2):
                child = await client.start(
                    node_kind, {"steps": 100_000, "step_ms": 10}, parent_id=ctx.task.id
                )
                children.append(child.id)
            steps = 0
            try:
                for step in itertools.count(1):
                    await asyncio.sleep(0.01)  # a step of work
                    steps = step
                    await ctx.checkpoint({"step": step, "by": "python"})
            except CancelRequested:
                finished = [await client.wait(child_id) for child_id in children]
                raise Cancelled(
                    {
                        "by": "python",
                        "steps": steps,
                        "children": {t.id: from_value(t.result) for t in finished},
                    }
                ) from None
        raise AssertionError("unreachable: the loop ends with a cancel")

    async def scenario() -> None:
        async with (
            AsyncClient(cluster.b.address) as b,
            serving(cluster.b.address, [kind], parent, name="python-parent"),
        ):
            task = await b.start(kind)
            await until_async(b, task.id, lambda t: len(t.partial_results) >= 2, "working")
            assert len(children) == 2
            for child_id in children:
                await until_async(b, child_id, lambda t: len(t.partial_results) >= 2, "working")

            response = await b.soft_cancel(task.id, "the user pressed Stop")
            assert response.outcome == tasks_pb2.CANCEL_OUTCOME_REQUESTED

            done = await done_async(b, task.id)
            assert done.state == CANCELLED, done
            assert done.cancel.mode == SOFT and not done.cancel.escalated, done.cancel
            result = from_value(done.result)
            assert result["by"] == "python"
            # The Python code's partial results: one checkpoint per step it took.
            python_steps = [from_value(p) for p in done.partial_results]
            assert python_steps == [
                {"step": i, "by": "python"} for i in range(1, result["steps"] + 1)
            ]

            assert sorted(result["children"]) == sorted(children)
            for child_id in children:
                child = await b.check(child_id)
                # Stopped by the Node code itself (cancel_ack), not escalated to an abort.
                assert child.state == CANCELLED, child
                assert child.parent_id == task.id
                assert child.owner == "a" and child.worker.startswith("node-worker")
                assert child.cancel.mode == SOFT and not child.cancel.escalated, child.cancel
                node_result = from_value(child.result)
                assert node_result["by"] == "node", node_result
                assert node_result == result["children"][child_id]
                # The Node code's partial results: one checkpoint per step it finished.
                node_steps = [from_value(p) for p in child.partial_results]
                assert len(node_result["done"]) >= 2, node_result
                assert node_steps == [{"step": s, "by": "node"} for s in node_result["done"]]
            assert node.process.poll() is None, node.logs()  # and the Node worker serves on

    run_async(scenario)
