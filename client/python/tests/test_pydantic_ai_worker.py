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
RESPONSE = re.compile(r"^model response (\d+)$")


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
    """The worker's received commands, with hooks run on each (``on[command]``)."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.on: dict[str, list[Any]] = {"abort": [], "cancel": []}

    def __call__(self, direction: str, message: Any) -> None:
        if direction == "recv":
            what = message.WhichOneof("command")
            self.received.append(what)
            for hook in self.on.get(what, []):
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


def per_response(versions: list[tasks_pb2.Task]) -> dict[int, dict[str, float]]:
    """Each model response's usage increment, by response number: what the task's usage
    grew by in the version reporting it (``"model response N"``)."""
    responses: dict[int, dict[str, float]] = {}
    before: dict[str, float] = {}
    for version in versions:
        match = RESPONSE.match(version.progress.message)
        usage = dict(version.usage)
        if match and int(match[1]) not in responses and usage != before:
            responses[int(match[1])] = {d: usage[d] - before.get(d, 0) for d in usage}
        before = usage
    return responses


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

            # Each model response's usage was reported once, as usage of the task, and
            # they add up to the run's.
            responses = per_response(versions)
            assert sorted(responses) == [1, 2, 3]  # two tool calls, then the report
            assert all(u["input_tokens"] > 0 and u["output_tokens"] > 0 for u in responses.values())
            spent = {
                "input_tokens": done.usage["input_tokens"],
                "output_tokens": done.usage["output_tokens"],
            }
            assert spent == {
                dimension: sum(u[dimension] for u in responses.values()) for dimension in spent
            }
            assert result["usage"] == {**spent, "requests": 3}
            assert dict(done.subtree_usage) == dict(done.usage)
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
            trace.on["abort"].append(lambda: at_abort.append(researcher.tokens_streamed))

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


def test_the_agent_stops_by_itself_when_the_server_reports_the_budget_exhausted(cluster, kind):
    researchers = Researchers()
    sources = GatedSources(gate_at=2)
    trace = Trace()
    at_cancel: list[int] = []

    async def scenario() -> None:
        params = {"topic": "tidal power", "searches": 4, "report_words": 12, "token_ms": 1}
        async with AsyncClient(cluster.b.address) as b:
            # What each response of this run costs (the offline model is deterministic):
            # a run without a budget, on a worker of its own.
            async with serving(cluster.a.address, [kind], make_handler()):
                reference = await b.start(kind, params)
                versions = await asyncio.wait_for(history(b, reference), PATIENCE)
            assert versions[-1].state == COMPLETED, versions[-1]
            first, second = (per_response(versions)[n]["output_tokens"] for n in (1, 2))
            budget = first + 1  # under it after the first response, spent by the second

            async with serving(
                cluster.a.address, [kind], make_handler(researchers, sources), trace=trace
            ):
                await budgeted(b, params, budget, first, second)

    async def budgeted(
        b: AsyncClient, params: dict[str, Any], budget: float, first: float, second: float
    ) -> None:
        trace.on["cancel"].append(
            lambda: at_cancel.append(next(iter(researchers.by_task.values())).requests)
        )
        task = await b.start(kind, params, budget={"output_tokens": budget})
        assert dict(task.budget) == {"output_tokens": budget}
        # The second search waits until the server's cancel reached the worker, so the
        # agent would ask the model next.
        await asyncio.wait_for(sources.gated.wait(), PATIENCE)
        await eventually(lambda: "cancel" in trace.received, "told to cancel")
        sources.release.set()

        done = await done_async(b, task.id)
        assert done.state == CANCELLED, done
        assert done.cancel.budget_exhausted == "output_tokens", done.cancel
        assert done.cancel.reason.startswith("budget exhausted: output_tokens"), done.cancel
        # Partial findings kept: both searches' results and checkpoints.
        result = from_value(done.result)
        assert result["cancelled"] is True
        assert result["findings"] == [
            "3 sources on tidal power market size",
            "3 sources on tidal power competitors",
        ]
        assert result["report"].startswith("Research was cancelled. Partial findings:\n")
        assert [from_value(p)["tool"] for p in done.partial_results] == ["search", "search"]
        # No model request after the cancel; nothing streamed.
        researcher = researchers.by_task[task.id]
        assert at_cancel == [2], at_cancel
        assert researcher.requests == 2 and researcher.tokens_streamed == 0
        assert result["usage"]["requests"] == 2
        # The usage is the task's: the limit reached, overshot by less than one response.
        spent = done.subtree_usage["output_tokens"]
        assert spent == done.usage["output_tokens"] == result["usage"]["output_tokens"]
        assert spent == first + second
        assert budget <= spent < budget + second

    run_async(scenario)


def test_each_request_is_given_the_output_tokens_the_budget_has_left(cluster, kind):
    researchers = Researchers()
    sources = GatedSources(gate_at=1)
    trace = Trace()

    async def scenario() -> None:
        async with (
            AsyncClient(cluster.b.address) as b,
            serving(cluster.a.address, [kind], make_handler(researchers, sources), trace=trace),
        ):
            params = {"topic": "geothermal", "searches": 1, "report_words": 12, "token_ms": 1}
            task = await b.start(kind, params, budget={"output_tokens": 1000})
            # The search waits until the server acknowledged the first response's usage
            # (with what the budget has left), so the next request knows it.
            await asyncio.wait_for(sources.gated.wait(), PATIENCE)
            await eventually(lambda: "usage_ack" in trace.received, "usage acknowledged")
            sources.release.set()
            versions = await asyncio.wait_for(history(b, task), PATIENCE)
            done = versions[-1]
            assert done.state == COMPLETED, done
            first = per_response(versions)[1]["output_tokens"]
            researcher = researchers.by_task[task.id]
            assert researcher.max_tokens == [1000, 1000 - first]
            assert researcher.finished_report and researcher.tokens_streamed == 12

    run_async(scenario)
