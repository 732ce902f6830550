"""reins.pydantic_ai: a parent pydantic-ai agent delegates to subagents that are Reins tasks.

The subagents are examples/pydantic_ai_worker.py's researcher in an AsyncWorker on replica
``a``. The parent agent's model is a ``FunctionModel`` playing a script of tool calls (the
"Cancellation Workflow" of the task-cancellation docs); where the script waits for a
subagent to get somewhere, it watches the task (a model "thinking"), never sleeps.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
from collections.abc import AsyncGenerator, Callable
from typing import Any

from pydantic_ai import Agent
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from harness import PATIENCE, done_async, eventually, run_async, serving, until_async
from pydantic_ai_worker import make_handler
from reins import from_value
from reins.aio import AsyncClient, AsyncTaskContext, current_task_context
from reins.proto import tasks_pb2
from reins.pydantic_ai import DELEGATION_LABEL, Delegation, Subagent

COMPLETED = tasks_pb2.TASK_STATE_COMPLETED
CANCELLED = tasks_pb2.TASK_STATE_CANCELLED
STARTED = re.compile(r"^Task started with ID: (\S+)$")

#: A tool call the script makes, or (a str) its final answer.
Step = tuple[str, dict[str, Any]] | str
ScriptFn = Callable[[], AsyncGenerator[Step, str]]


class ScriptedModel:
    """A FunctionModel function driven by an async generator: each ``yield (tool, args)`` is
    one model response calling that tool, and evaluates to what the tool returned; a
    yielded ``str`` is the final answer."""

    def __init__(self, script: ScriptFn) -> None:
        self._script = script()
        self._started = False

    def model(self) -> FunctionModel:
        return FunctionModel(self, model_name="scripted-parent")

    async def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if not self._started:
            self._started = True
            step = await self._script.__anext__()
        else:
            last = messages[-1]
            assert isinstance(last, ModelRequest), last
            (returned,) = [p for p in last.parts if isinstance(p, ToolReturnPart)]
            step = await self._script.asend(str(returned.content))
        if isinstance(step, str):
            return ModelResponse(parts=[TextPart(step)])
        tool, args = step
        return ModelResponse(parts=[ToolCallPart(tool, args)])


class StallingSources:
    """The researcher's search backend: a task's first search answers at once; later ones
    stall until the task is asked to stop. After a soft cancel the stalled search comes
    back (and the researcher stops before its next model request); a hard cancel cancels it.
    """

    def __init__(self) -> None:
        self.searches: collections.Counter[str] = collections.Counter()

    async def search(self, query: str) -> str:
        ctx = current_task_context()
        assert ctx is not None, "a tool runs within its handler's context"
        self.searches[ctx.task.id] += 1
        if self.searches[ctx.task.id] > 1:
            await ctx.cancel_requested.wait()
        return f"3 sources on {query}"


def started_id(reply: str) -> str:
    match = STARTED.match(reply)
    assert match, reply
    return match[1]


def test_the_cancellation_workflow_of_a_parent_agent_inside_a_worker(cluster, kind):
    researcher_kind = f"{kind}-researcher"
    replies: dict[str, str] = {}
    ids: dict[str, str] = {}
    delegations: list[Delegation] = []

    async def scenario() -> None:
        async with (
            AsyncClient(cluster.b.address) as b,
            AsyncClient(cluster.a.address) as a,
            serving(
                cluster.a.address,
                [researcher_kind],
                make_handler(sources=StallingSources()),
                max_concurrency=4,
            ),
        ):

            async def checkpointed(task_id: str) -> None:
                await until_async(b, task_id, lambda t: len(t.partial_results) >= 1, "searching")

            async def workflow() -> AsyncGenerator[Step, str]:
                research = {"subagent_type": "researcher", "mode": "async"}
                reply = yield ("task", {"description": "Comprehensive market research", **research})
                replies["start"] = reply
                ids["x"] = started_id(reply)
                ids["y"] = started_id(
                    (yield ("task", {"description": "Competitor pricing", **research}))
                )
                await checkpointed(ids["x"])
                await checkpointed(ids["y"])
                replies["check"] = yield ("check_task", {"task_id": ids["x"]})
                replies["soft"] = yield ("soft_cancel_task", {"task_id": ids["x"]})
                await done_async(b, ids["x"])  # the researcher acknowledged it
                replies["final"] = yield ("check_task", {"task_id": ids["x"]})
                replies["list"] = yield ("list_active_tasks", {})
                replies["hard"] = yield ("hard_cancel_task", {"task_id": ids["y"]})
                replies["after_hard"] = yield ("check_task", {"task_id": ids["y"]})
                replies["list_empty"] = yield ("list_active_tasks", {})
                yield "Market research was cancelled with partial findings; pricing was stopped."

            async def coordinator(ctx: AsyncTaskContext) -> dict[str, Any]:
                researcher = Subagent(researcher_kind, "Researches a topic", params={"searches": 3})
                delegation = Delegation(a, {"researcher": researcher})
                delegations.append(delegation)
                agent = Agent(ScriptedModel(workflow).model(), toolsets=[delegation])
                result = await agent.run("Research the market; stop what is no longer needed")
                return {"output": result.output}

            async with serving(cluster.b.address, [kind], coordinator, name="coordinator"):
                parent = await b.start(kind, session_id="user-7")
                done = await asyncio.wait_for(done_async(b, parent.id), 2 * PATIENCE)
                assert done.state == COMPLETED, done
                assert from_value(done.result) == {
                    "output": "Market research was cancelled with partial findings; "
                    "pricing was stopped."
                }

            x, y = ids["x"], ids["y"]
            # The subagents are children of the parent's task, in its session, labelled.
            for task_id, description in (
                (x, "Comprehensive market research"),
                (y, "Competitor pricing"),
            ):
                child = await b.check(task_id)
                assert child.kind == researcher_kind
                assert child.parent_id == parent.id
                assert child.session_id == "user-7"
                assert child.description == description
                assert from_value(child.params)["description"] == description
                assert child.labels[DELEGATION_LABEL] == delegations[0].delegation_id
                assert child.state == CANCELLED

            assert replies["check"].startswith("Task is running"), replies["check"]
            assert "Partial results so far: [{" in replies["check"], replies["check"]
            assert replies["soft"] == f"Cancellation requested for task {x}"
            final = replies["final"]
            assert final.startswith('Task cancelled. Partial results: [{"args": {"query": '), final
            assert "Research was cancelled. Partial findings:" in final, final
            assert "3 sources on Comprehensive market research competitors" in final, final
            assert replies["list"].startswith("Active tasks:\n"), replies["list"]
            assert f"- {y} (researcher): running" in replies["list"], replies["list"]
            assert x not in replies["list"], replies["list"]
            assert replies["hard"] == f"Task {y} cancelled immediately"
            after_hard = replies["after_hard"]
            assert after_hard.startswith("Task cancelled. Partial results: [{"), after_hard
            assert "Final result" not in after_hard, after_hard
            assert replies["list_empty"] == "No active tasks"

    run_async(scenario, timeout=4 * PATIENCE)


def test_cancelling_the_parent_cancels_the_subagents_it_started(cluster, kind):
    researcher_kind = f"{kind}-researcher"
    ids: list[str] = []

    async def scenario() -> None:
        async with (
            AsyncClient(cluster.b.address) as b,
            AsyncClient(cluster.a.address) as a,
            serving(
                cluster.a.address,
                [researcher_kind],
                make_handler(sources=StallingSources()),
                max_concurrency=4,
            ),
        ):

            async def coordinator(ctx: AsyncTaskContext) -> dict[str, Any]:
                async def script() -> AsyncGenerator[Step, str]:
                    for topic in ("batteries", "solar"):
                        reply = yield ("task", {"description": topic, "subagent_type": "r"})
                        ids.append(started_id(reply))
                    # The model "thinks" until the parent is asked to stop.
                    await ctx.cancel_requested.wait()
                    yield "Stopping: the user cancelled."

                agent = Agent(
                    ScriptedModel(script).model(), toolsets=[Delegation(a, {"r": researcher_kind})]
                )
                result = await agent.run("Research two topics")
                return {"output": result.output}  # after a cancel: CANCELLED with it

            async with serving(cluster.b.address, [kind], coordinator, name="coordinator"):
                parent = await b.start(kind)
                await eventually(lambda: len(ids) == 2, "delegating")
                for task_id in ids:
                    await until_async(
                        b, task_id, lambda t: len(t.partial_results) >= 1, "searching"
                    )
                await b.soft_cancel(parent.id, "the user pressed Stop")
                done = await done_async(b, parent.id)
                assert done.state == CANCELLED, done
                assert from_value(done.result) == {"output": "Stopping: the user cancelled."}
                for task_id in ids:
                    child = await done_async(b, task_id)
                    assert child.state == CANCELLED, child
                    assert child.parent_id == parent.id
                    report = from_value(child.result)["report"]
                    assert report.startswith("Research was cancelled. Partial findings:"), report

    run_async(scenario, timeout=4 * PATIENCE)


def test_outside_a_worker_sync_mode_waits_for_a_top_level_subagent(cluster, kind):
    researcher_kind = f"{kind}-researcher"
    replies: list[str] = []

    async def scenario() -> None:
        async with (
            AsyncClient(cluster.b.address) as b,
            serving(cluster.a.address, [researcher_kind], make_handler()),
        ):

            async def script() -> AsyncGenerator[Step, str]:
                sync = {"description": "tidal power", "subagent_type": "researcher", "mode": "sync"}
                replies.append((yield ("task", sync)))
                replies.append(
                    (yield ("check_task", {"task_id": "01a231e1-0000-7000-8000-000000000000"}))
                )
                replies.append((yield ("task", {**sync, "subagent_type": "poet"})))
                replies.append((yield ("task", {**sync, "mode": "later"})))
                yield "done"

            researcher = Subagent(researcher_kind, params={"searches": 1, "report_words": 5})
            delegation = Delegation(b, {"researcher": researcher})
            assert current_task_context() is None
            # Two refused calls of `task` in one run: more than pydantic-ai's default 1 retry.
            agent = Agent(ScriptedModel(script).model(), toolsets=[delegation], retries=2)
            result = await agent.run("Research tidal power")
            assert result.output == "done"

            completed = replies[0]
            # The result as JSON with sorted keys (stable, whatever the map order).
            expected = (
                'Task completed. Result: {"cancelled": false, "findings": ["3 sources on tidal'
            )
            assert completed.startswith(expected), completed
            assert '"topic": "tidal power"' in completed, completed
            assert replies[1].startswith("Error: NOT_FOUND (TASK_NOT_FOUND): "), replies[1]
            # An unknown subagent type goes back to the model as a retry prompt.
            assert "unknown subagent_type 'poet'; one of: researcher" in replies[2], replies[2]
            # So is a mode the tool's schema does not have (pydantic-ai validates it).
            assert "'async' or 'sync'" in replies[3], replies[3]
            # sync waited for the end: nothing of it is still active.
            assert [task async for task in b.list(kind=researcher_kind)] == []

    run_async(scenario)


def test_outside_a_worker_a_cancelled_run_soft_cancels_the_subagents_it_started(cluster, kind):
    researcher_kind = f"{kind}-researcher"
    ids: list[str] = []

    async def scenario() -> None:
        async with (
            AsyncClient(cluster.b.address) as b,
            serving(cluster.a.address, [researcher_kind], make_handler(sources=StallingSources())),
        ):

            async def script() -> AsyncGenerator[Step, str]:
                reply = yield ("task", {"description": "wave power", "subagent_type": "r"})
                ids.append(started_id(reply))
                await asyncio.Event().wait()  # the model thinks until the run is cancelled
                yield "never"

            delegation = Delegation(b, {"r": researcher_kind})
            agent = Agent(ScriptedModel(script).model(), toolsets=[delegation])
            run = asyncio.ensure_future(agent.run("Research wave power"))
            await eventually(lambda: len(ids) == 1, "delegating")
            await until_async(b, ids[0], lambda t: len(t.partial_results) >= 1, "searching")
            run.cancel()  # the user pressed Stop
            with contextlib.suppress(asyncio.CancelledError):
                await run

            child = await done_async(b, ids[0])
            assert child.state == CANCELLED, child
            assert child.parent_id == ""
            assert child.cancel.reason == "the parent agent's run was cancelled"
            report = from_value(child.result)["report"]
            assert report.startswith("Research was cancelled. Partial findings:"), report

    run_async(scenario)


def test_a_subagent_type_with_a_budget_starts_its_tasks_with_it(cluster, kind):
    researcher_kind = f"{kind}-researcher"
    replies: list[str] = []
    ids: list[str] = []

    async def scenario() -> None:
        async with (
            AsyncClient(cluster.b.address) as b,
            serving(cluster.a.address, [researcher_kind], make_handler(sources=StallingSources())),
        ):

            async def script() -> AsyncGenerator[Step, str]:
                research = {"description": "tidal power", "subagent_type": "researcher"}
                ids.append(started_id((yield ("task", research))))
                await done_async(b, ids[0])
                replies.append((yield ("check_task", {"task_id": ids[0]})))
                yield "done"

            # The researcher's first model response spends the whole budget; its second
            # search stalls until the server's cancel arrives.
            researcher = Subagent(
                researcher_kind, params={"searches": 3}, budget={"output_tokens": 1}
            )
            delegation = Delegation(b, {"researcher": researcher})
            agent = Agent(ScriptedModel(script).model(), toolsets=[delegation])
            assert (await agent.run("Research tidal power")).output == "done"

            child = await b.check(ids[0])
            assert child.state == CANCELLED, child
            assert dict(child.budget) == {"output_tokens": 1}
            assert child.cancel.budget_exhausted == "output_tokens", child.cancel
            assert child.usage["output_tokens"] >= 1
            expected = (
                "Task cancelled (its budget of output_tokens was exhausted). Partial results: "
            )
            assert replies[0].startswith(expected), replies[0]
            assert "3 sources on tidal power market size" in replies[0], replies[0]

    run_async(scenario)
