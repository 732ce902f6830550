#!/usr/bin/env python3
"""A Reins worker whose handler runs a **pydantic-ai** ``Agent``: a researcher that calls a
``search`` tool a few times, then streams its report.

Offline by default: the model is :class:`OfflineResearcher`, a
``pydantic_ai.models.function.FunctionModel`` stream function standing in for an LLM (it
plans ``searches`` tool calls, then streams a report word by word), and the search backend
is :class:`OfflineSources`. Give :func:`make_handler` a real model (``"openai:gpt-5"``…) and
sources to make it real; nothing else changes.

What Reins sees of a run:

- **usage**: each model response's token usage (``input_tokens``, ``output_tokens``) is
  reported as it arrives, as usage counted against the task's budgets
  (:func:`report_usage`), and the run's totals are in the result.
- **budgets**: started with ``budget={"output_tokens": N}`` (or any dimension above), the
  task stops by itself when the server reports the budget exhausted: a soft cancel
  (``cancel.budget_exhausted``), honoured before the next model request, with the partial
  findings. Meanwhile each request's ``max_tokens`` is capped at the output tokens the
  budget has left (:class:`BudgetedModel`).
- **checkpoints**: each tool call is a checkpoint ``{"tool", "args", "result"}`` (a partial
  result, kept if the task is cancelled).
- **soft cancel**: the agent stops before its next model request (a response being
  streamed is finished first) and the task ends CANCELLED with the partial findings:
  ``"Research was cancelled. Partial findings: …"``.
- **hard cancel**: the handler's asyncio task is cancelled, so ``asyncio.CancelledError``
  comes out of the model stream being read: the stream is closed at once, and no more
  tokens are consumed.

Params (all optional): ``topic`` (or ``description``, as reins.pydantic_ai's delegation
tools give it), ``searches`` (default 3), ``report_words`` (default 40)
and ``token_ms`` (the delay per streamed word, default 10). The result: ``{"topic",
"report", "findings", "usage", "cancelled"}``.

Run it (``pip install 'client/python[pydantic-ai]'``, or ``-r
examples/requirements-pydantic-ai.txt`` for the pinned version)::

    python examples/pydantic_ai_worker.py --server 127.0.0.1:50051 --concurrency 8
    reins start research-agent --params '{"topic": "solid-state batteries"}'
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import (
    FunctionToolCallEvent,
    FunctionToolResultEvent,
    ModelMessage,
    ModelRequest,
    ModelResponse,
    PartDeltaEvent,
    TextPartDelta,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models import Model, ModelRequestParameters, StreamedResponse
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel
from pydantic_ai.models.wrapper import WrapperModel
from pydantic_ai.settings import ModelSettings
from pydantic_ai.usage import RequestUsage, RunUsage

from reins import Cancelled, CancelRequested, TaskInfo
from reins.aio import AsyncHandler, AsyncTaskContext, AsyncWorker

log = logging.getLogger("pydantic_ai_worker")

#: The kind this worker serves by default.
KIND = "research-agent"

INSTRUCTIONS = """You are a research assistant. Search for sources on the topic (one search
per aspect), then write a short report of what you found."""

#: The aspects the offline researcher searches, in order.
ASPECTS = ("market size", "competitors", "trends", "regulation", "open questions")


# -- the search backend (offline) ------------------------------------------------------


class Sources(Protocol):
    """Where the ``search`` tool looks: a web search API in a real deployment."""

    async def search(self, query: str) -> str: ...


@dataclasses.dataclass
class OfflineSources:
    """Made-up but deterministic results, after ``delay`` seconds."""

    delay: float = 0.02

    async def search(self, query: str) -> str:
        await asyncio.sleep(self.delay)  # a hard cancel raises CancelledError here
        return f"3 sources on {query}"


# -- the model (offline) ---------------------------------------------------------------


class OfflineResearcher:
    """A ``FunctionModel`` stream function standing in for an LLM.

    Each request it gets (``requests`` counts them) answers with the next search (a tool
    call) while fewer than ``searches`` results came back, then streams a report of
    ``report_words`` words, one every ``token_delay`` seconds. ``tokens_streamed`` counts the
    words handed to the agent; ``stream_closed`` is set when a report stream ends, early
    (closed by a cancel: ``finished_report`` stays False) or not. Like an LLM it honours
    the request's ``max_tokens`` setting (one word per token here); ``max_tokens`` lists
    what each request was given (None: no limit).
    """

    def __init__(
        self, *, searches: int = 3, report_words: int = 40, token_delay: float = 0.01
    ) -> None:
        self.searches = searches
        self.report_words = report_words
        self.token_delay = token_delay
        self.requests = 0
        self.tokens_streamed = 0
        self.finished_report = False
        self.stream_closed = asyncio.Event()
        self.max_tokens: list[int | None] = []

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> OfflineResearcher:
        """Configured by a task's params (see the module docstring)."""
        return cls(
            searches=int(params.get("searches", 3)),
            report_words=int(params.get("report_words", 40)),
            token_delay=int(params.get("token_ms", 10)) / 1000,
        )

    def model(self) -> FunctionModel:
        return FunctionModel(stream_function=self, model_name="offline-researcher")

    async def __call__(
        self, messages: list[ModelMessage], info: AgentInfo
    ) -> AsyncIterator[str | DeltaToolCalls]:
        self.requests += 1
        limit = (info.model_settings or {}).get("max_tokens")
        self.max_tokens.append(limit)
        results = [
            part.content
            for message in messages
            if isinstance(message, ModelRequest)
            for part in message.parts
            if isinstance(part, ToolReturnPart)
        ]
        if len(results) < self.searches:
            aspect = ASPECTS[len(results) % len(ASPECTS)]
            query = json.dumps({"query": f"{_topic(messages)} {aspect}"})
            yield {
                0: DeltaToolCall(name="search", json_args=query, tool_call_id=f"s{len(results)}")
            }
            return
        words = f"Report on {_topic(messages)}: " + " ".join(str(r) for r in results)
        padding = [f"point-{i}" for i in range(self.report_words)]
        try:
            length = self.report_words if limit is None else min(self.report_words, limit)
            for word in [*words.split(), *padding][:length]:
                await asyncio.sleep(self.token_delay)  # the next token "arrives"
                self.tokens_streamed += 1
                yield word + " "
            self.finished_report = True
        finally:
            self.stream_closed.set()


def _topic(messages: list[ModelMessage]) -> str:
    for message in messages:
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, UserPromptPart) and isinstance(part.content, str):
                    return part.content.removeprefix("Research: ")
    return "anything"


def offline_model(task: TaskInfo) -> Model:
    """The default model factory: an :class:`OfflineResearcher` configured by the params."""
    return OfflineResearcher.from_params(task.params).model()


# -- the budget ----------------------------------------------------------------------


class BudgetedModel(WrapperModel):
    """A model whose requests are given at most the ``output_tokens`` the task's budget has
    left (``ctx.task.budget_remaining``, refreshed by the server after each usage
    report), so an agent asks for shorter answers as its budget shrinks; a request's own
    smaller ``max_tokens`` is kept. Without an ``output_tokens`` budget it changes nothing.
    """

    def __init__(self, wrapped: Model, ctx: AsyncTaskContext) -> None:
        super().__init__(wrapped)
        self.ctx = ctx

    def _capped(self, settings: ModelSettings | None) -> ModelSettings | None:
        left = self.ctx.task.budget_remaining.get("output_tokens")
        if left is None:
            return settings
        capped: ModelSettings = {**(settings or {})}
        # At least one token: a spent budget stops the run (a soft cancel), not the model.
        capped["max_tokens"] = max(1, min(int(left), capped.get("max_tokens", int(left))))
        return capped

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        return await super().request(
            messages, self._capped(model_settings), model_request_parameters
        )

    @asynccontextmanager
    async def request_stream(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
        run_context: RunContext[Any] | None = None,
    ) -> AsyncIterator[StreamedResponse]:
        async with super().request_stream(
            messages, self._capped(model_settings), model_request_parameters, run_context
        ) as stream:
            yield stream


# -- the agent -------------------------------------------------------------------------


@dataclasses.dataclass
class Deps:
    """What the agent's tools use: the search backend."""

    sources: Sources


def build_agent() -> Agent[Deps, str]:
    """The researcher agent; its model is given per run (``agent.iter(model=…)``)."""
    agent = Agent(deps_type=Deps, output_type=str, instructions=INSTRUCTIONS)

    @agent.tool
    async def search(ctx: RunContext[Deps], query: str) -> str:
        """Searches the web for ``query``."""
        return await ctx.deps.sources.search(query)

    return agent


# -- the handler -----------------------------------------------------------------------


async def report_usage(ctx: AsyncTaskContext, usage: RequestUsage, totals: RunUsage) -> None:
    """Reports one model response's token usage as budget usage: the increment
    ``{"input_tokens", "output_tokens"}`` is added to the task's usage and to the subtree
    usage of the task and its ancestors. Once a budget of one of them is spent the server
    soft-cancels the subtree (reason ``"budget exhausted: …"``,
    ``CancelInfo.budget_exhausted``), which :func:`research` honours like any soft cancel:
    before the next model request, so a budget is overshot by one response at most.
    ``ctx.task.budget_remaining`` follows each acknowledged report."""
    # An agent cannot know how far along it is: the fraction grows with each request
    # and never reaches 1 before the end.
    fraction = 1 - 1 / (totals.requests + 1)
    await ctx.progress(
        fraction,
        f"model response {totals.requests}",
        usage={"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens},
    )


async def _checkpoint_tool_call(ctx: AsyncTaskContext, call: dict[str, Any]) -> None:
    """Records a finished tool call. A soft cancel is honoured before the next model
    request (see :func:`research`), so the other tool calls of this step still finish."""
    with contextlib.suppress(CancelRequested):
        await ctx.checkpoint(call, message=f"{call['tool']} done")


def _usage(totals: RunUsage) -> dict[str, int]:
    return {
        "input_tokens": totals.input_tokens,
        "output_tokens": totals.output_tokens,
        "requests": totals.requests,
    }


async def research(
    ctx: AsyncTaskContext, agent: Agent[Deps, str], model: Model, deps: Deps
) -> dict[str, Any]:
    """Runs the agent node by node, so that Reins sees each response and tool call and a
    soft cancel takes effect between them."""
    params = ctx.task.params
    topic = str(params.get("topic") or params.get("description") or "anything")
    findings: list[str] = []
    report: list[str] = []
    totals = RunUsage()
    calls: dict[str, dict[str, Any]] = {}
    try:
        budgeted = BudgetedModel(model, ctx)
        async with agent.iter(f"Research: {topic}", model=budgeted, deps=deps) as run:
            async for node in run:
                if Agent.is_model_request_node(node):
                    # Soft cancel: no new model request (and no more tokens billed).
                    ctx.raise_if_cancelled()
                    async with node.stream(run.ctx) as stream:
                        async for event in stream:  # a hard cancel stops the stream here
                            if isinstance(event, PartDeltaEvent) and isinstance(
                                event.delta, TextPartDelta
                            ):
                                report.append(event.delta.content_delta)
                    totals = run.usage
                    await report_usage(ctx, stream.response.usage, totals)
                elif Agent.is_call_tools_node(node):
                    async with node.stream(run.ctx) as events:
                        async for event in events:
                            if isinstance(event, FunctionToolCallEvent):
                                calls[event.part.tool_call_id] = {
                                    "tool": event.part.tool_name,
                                    "args": event.part.args_as_dict(),
                                }
                            elif isinstance(event, FunctionToolResultEvent):
                                result = str(event.part.content)
                                call = calls.pop(event.part.tool_call_id, {"tool": "?"})
                                findings.append(result)
                                await _checkpoint_tool_call(ctx, {**call, "result": result})
            assert run.result is not None
            output = run.result.output
            totals = run.usage
    except CancelRequested:
        lines = [f"- {finding}" for finding in findings] or ["- nothing yet"]
        raise Cancelled(
            {
                "topic": topic,
                "report": "\n".join(
                    [
                        "Research was cancelled. Partial findings:",
                        *lines,
                        "- Further investigation was not completed",
                    ]
                ),
                "findings": findings,
                "usage": _usage(totals),
                "cancelled": True,
            }
        ) from None
    except asyncio.CancelledError:
        log.info("task %s: hard-cancelled (%s)", ctx.task.id, ctx.abort_reason)
        raise  # always let it go on: the worker reaps the handler
    return {
        "topic": topic,
        "report": output.strip(),
        "findings": findings,
        "usage": _usage(totals),
        "cancelled": False,
    }


def make_handler(
    model_for: Callable[[TaskInfo], Model] = offline_model,
    sources: Sources | None = None,
) -> AsyncHandler:
    """The handler for :class:`~reins.aio.AsyncWorker`: one agent, a model per task."""
    agent = build_agent()
    deps = Deps(sources=sources or OfflineSources())

    async def handler(ctx: AsyncTaskContext) -> dict[str, Any]:
        return await research(ctx, agent, model_for(ctx.task), deps)

    return handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--server", default=os.environ.get("REINS_SERVER", "127.0.0.1:50051"))
    parser.add_argument("--name", default=None, help="default: program@host:pid")
    parser.add_argument("--kind", action="append", help=f"kind served (repeatable); default {KIND}")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    worker = AsyncWorker(
        args.server,
        args.kind or [KIND],
        make_handler(),
        max_concurrency=args.concurrency,
        name=args.name,
    )
    asyncio.run(worker.run())  # until SIGTERM (drains) or Ctrl-C
    return 0


if __name__ == "__main__":
    sys.exit(main())
