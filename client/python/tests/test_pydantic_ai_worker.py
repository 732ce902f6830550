"""examples/pydantic_ai_worker.py: a pydantic-ai Agent in an AsyncWorker, against two real
replicas on Redis.

The worker connects to replica ``a``; tasks are started, watched and cancelled through
replica ``b``. The model is the example's :class:`OfflineResearcher` (a ``FunctionModel``
streaming text), kept by the test so it can count requests and streamed tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

from pydantic_ai.models import Model

from harness import PATIENCE, TERMINAL, done_async, eventually, run_async, serving, until_async
from pydantic_ai_worker import OfflineResearcher, OfflineSources, make_handler
from reins import TaskInfo, from_value
from reins.aio import AsyncClient
from reins.proto import tasks_pb2

COMPLETED = tasks_pb2.TASK_STATE_COMPLETED
CANCELLED = tasks_pb2.TASK_STATE_CANCELLED
USAGE = re.compile(r"^model response (\d+): input_tokens=(\d+) output_tokens=(\d+)$")


class Researchers:
    """The model factory: an OfflineResearcher per task, kept for the test to inspect."""

    def __init__(self) -> None:
        self.by_task: dict[str, OfflineResearcher] = {}

    def __call__(self, task: TaskInfo) -> Model:
        researcher = OfflineResearcher.from_params(task.params)
        self.by_task[task.id] = researcher
        return researcher.model()


class GatedSources(OfflineSources):
    """Searches that block from the ``gate_at``-th on until ``release`` is set."""

    def __init__(self, gate_at: int) -> None:
        super().__init__(delay=0)
        self.gate_at = gate_at
        self.started = 0
        self.gated = asyncio.Event()
        self.release = asyncio.Event()

    async def search(self, query: str) -> str:
        self.started += 1
        if self.started >= self.gate_at:
            self.gated.set()
            await self.release.wait()
        return await super().search(query)


class Trace:
    """The worker's received commands, with a hook run on each."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.on_abort: list[Any] = []

    def __call__(self, direction: str, message: Any) -> None:
        if direction == "recv":
            what = message.WhichOneof("command")
            self.received.append(what)
            if what == "abort":
                for hook in self.on_abort:
                    hook()


async def history(client: AsyncClient, task: tasks_pb2.Task) -> list[tasks_pb2.Task]:
    """Every version of the task after ``task`` (as StartTask returned it), to the end."""
    versions = []
    async with contextlib.aclosing(client.watch(task.id, after_version=task.version)) as events:
        async for event in events:
            versions.append(event.task)
            if event.task.state in TERMINAL:
                break
    return versions


def test_usage_of_each_model_response_and_each_tool_call_as_a_checkpoint(cluster, kind):
    researchers = Researchers()

    async def scenario() -> None:
        async with (
            AsyncClient(cluster.b.address) as b,
            serving(cluster.a.address, [kind], make_handler(researchers)),
        ):
            params = {"topic": "batteries", "searches": 2, "report_words": 12, "token_ms": 1}
            task = await b.start(kind, params)
            versions = await asyncio.wait_for(history(b, task), PATIENCE)
            done = versions[-1]
            assert done.state == COMPLETED, done
            result = from_value(done.result)

            # Each tool call is a checkpoint, in order.
            checkpoints = [from_value(p) for p in done.partial_results]
            assert checkpoints == [
                {
                    "tool": "search",
                    "args": {"query": "batteries market size"},
                    "result": "3 sources on batteries market size",
                },
                {
                    "tool": "search",
                    "args": {"query": "batteries competitors"},
                    "result": "3 sources on batteries competitors",
                },
            ]
            assert result["findings"] == [c["result"] for c in checkpoints]

            # Each model response's usage was reported once, and they add up to the run's.
            reports = {}
            for version in versions:
                match = USAGE.match(version.progress.message)
                if match:
                    reports[int(match[1])] = (int(match[2]), int(match[3]))
            assert sorted(reports) == [1, 2, 3]  # two tool calls, then the report
            assert all(i > 0 and o > 0 for i, o in reports.values()), reports
            assert result["usage"] == {
                "input_tokens": sum(i for i, _ in reports.values()),
                "output_tokens": sum(o for _, o in reports.values()),
                "requests": 3,
            }
            researcher = researchers.by_task[task.id]
            assert researcher.finished_report and researcher.tokens_streamed == 12
            # The streamed text is the agent's output.
            assert result["report"].startswith("Report on batteries: 3 sources on")
            assert len(result["report"].split()) == 12
            assert result["cancelled"] is False

    run_async(scenario)


def test_a_soft_cancel_stops_before_the_next_model_request_with_partial_findings(cluster, kind):
    researchers = Researchers()
    sources = GatedSources(gate_at=2)
    trace = Trace()

    async def scenario() -> None:
        async with (
            AsyncClient(cluster.b.address) as b,
            serving(cluster.a.address, [kind], make_handler(researchers, sources), trace=trace),
        ):
            task = await b.start(kind, {"topic": "fusion", "searches": 4})
            # The second search is under way (so the first is a checkpoint already).
            await asyncio.wait_for(sources.gated.wait(), PATIENCE)
            await b.soft_cancel(task.id, "the user changed their mind")
            await eventually(lambda: "cancel" in trace.received, "told to cancel")
            sources.release.set()  # the search finishes; the agent would now ask the model

            done = await done_async(b, task.id)
            assert done.state == CANCELLED, done
            result = from_value(done.result)
            assert result["cancelled"] is True
            assert result["report"] == (
                "Research was cancelled. Partial findings:\n"
                "- 3 sources on fusion market size\n"
                "- 3 sources on fusion competitors\n"
                "- Further investigation was not completed"
            )
            # Both tool calls are checkpoints; no model request after the cancel arrived.
            assert [from_value(p)["tool"] for p in done.partial_results] == ["search", "search"]
            researcher = researchers.by_task[task.id]
            assert researcher.requests == 2, researcher.requests
            assert researcher.tokens_streamed == 0
            assert result["usage"]["requests"] == 2

    run_async(scenario)


def test_a_hard_cancel_mid_stream_stops_the_stream_at_once(cluster, kind):
    researchers = Researchers()
    trace = Trace()
    at_abort: list[int] = []

    async def scenario() -> None:
        async with (
            AsyncClient(cluster.b.address) as b,
            serving(cluster.a.address, [kind], make_handler(researchers), trace=trace) as worker,
        ):
            params = {"topic": "fission", "searches": 1, "report_words": 100_000, "token_ms": 2}
            task = await b.start(kind, params)
            await until_async(b, task.id, lambda t: len(t.partial_results) == 1, "searched")
            await eventually(lambda: task.id in researchers.by_task, "given a model")
            researcher = researchers.by_task[task.id]
            await eventually(lambda: researcher.tokens_streamed >= 5, "streaming")
            trace.on_abort.append(lambda: at_abort.append(researcher.tokens_streamed))

            cancelled = await b.hard_cancel(task.id, "stop billing")
            assert cancelled.task.state == CANCELLED
            # The worker got the abort, the stream was closed, the handler is gone.
            await asyncio.wait_for(researcher.stream_closed.wait(), PATIENCE)
            await eventually(lambda: not worker.active_tasks, "reaped")
            assert len(at_abort) == 1, trace.received
            assert not researcher.finished_report
            # Not one token more after the abort reached the worker.
            assert researcher.tokens_streamed == at_abort[0], (researcher.tokens_streamed, at_abort)
            assert researcher.tokens_streamed < 100_000
            assert researcher.requests == 2
            final = await b.check(task.id)
            assert final.state == CANCELLED and not final.HasField("result")

    run_async(scenario)
