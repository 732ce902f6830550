"""``reins.pydantic_ai``: the delegation tools of a parent pydantic-ai agent, backed by Reins.

A :class:`Delegation` toolset gives an agent the tools of the subagent pattern — start a
subagent's task, check it, soft- or hard-cancel it, list the active ones, answer its
question — with each subagent running as a Reins task on a worker anywhere (any process,
replica or language), instead of as an asyncio task in the parent's process::

    from pydantic_ai import Agent
    from reins.aio import AsyncClient
    from reins.pydantic_ai import Delegation, Subagent

    client = AsyncClient("127.0.0.1:50051")
    researcher = Subagent("research-agent", "Researches a topic and reports its findings")
    delegation = Delegation(client, {"researcher": researcher})
    parent = Agent("openai:gpt-5", toolsets=[delegation])

The tools, as the model sees them (what they return is text for the model):

================================================  ===========================================
``task(description, subagent_type, mode)``        ``"Task started with ID: …"`` (``async``), or
                                                  the final status (``sync``: waits for it)
``check_task(task_id)``                           ``"Task is running …"``, ``"Task completed.
                                                  Result: …"``, ``"Task cancelled. Partial
                                                  results: […]"``, …
``soft_cancel_task(task_id)``                     ``"Cancellation requested for task …"``
``hard_cancel_task(task_id)``                     ``"Task … cancelled immediately"``
``list_active_tasks()``                           the active subtasks, one per line
``answer_subagent(task_id, answer)``              answers the subagent's open question
================================================  ===========================================

**Subtree.** Run inside an :class:`~reins.aio.AsyncWorker` handler (the parent agent is a
Reins task itself), every subagent task is started as a *child* of the handler's task
(:func:`reins.aio.current_task_context`), in its session: cancelling the parent — a soft
cancel, a hard cancel, a budget — cancels the subagents with it, on whichever worker they
run. Elsewhere pass ``parent_id``; without one the subagents are top-level tasks, and when
the agent's run is cancelled (its asyncio task is: the user pressed Stop; Python 3.11+) the
toolset soft-cancels every active task it started, since no parent task does it for them.
A ``sync`` task whose wait is cancelled is soft-cancelled either way.

Every task it starts carries the label ``reins.delegation=<Delegation.id>``;
``list_active_tasks`` lists those (under the parent, when there is one). Errors from Reins
(an unknown task id, a finished task…) come back to the model as ``"Error: …"`` text; an
unknown ``subagent_type`` asks the model to retry (``ModelRetry``), as pydantic-ai does
for arguments its schema refuses (a ``mode`` other than ``async`` or ``sync``).

Needs the ``pydantic-ai`` extra: ``pip install 'reins[pydantic-ai]'``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import Mapping
from typing import Any, Literal

try:
    from pydantic_ai import FunctionToolset, ModelRetry
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "reins.pydantic_ai needs pydantic-ai: pip install 'reins[pydantic-ai]'"
    ) from err

from ._calls import TERMINAL_STATES
from ._errors import ReinsError
from ._proto import tasks_pb2
from ._values import from_value
from .aio import AsyncClient, current_task_context

__all__ = ["DELEGATION_LABEL", "Delegation", "Subagent"]

#: The label on every task a :class:`Delegation` starts; its value is ``Delegation.id``.
DELEGATION_LABEL = "reins.delegation"

_STATE = tasks_pb2.TaskState


@dataclasses.dataclass(frozen=True)
class Subagent:
    """A subagent type: the Reins ``kind`` its tasks run as, a description for the model,
    params every task of it gets (``{"description": …}`` is added) and the ``budget``
    each of its tasks is started with (limits per usage dimension, e.g.
    ``{"output_tokens": 20000}``; none by default: only its ancestors' budgets apply).
    A subagent whose budget is exhausted is soft-cancelled by the server; ``check_task``
    says so."""

    kind: str
    description: str = ""
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    budget: Mapping[str, float] = dataclasses.field(default_factory=dict)


class Delegation(FunctionToolset[Any]):
    """The delegation tools (see the module docstring) on an :class:`~reins.aio.AsyncClient`.

    ``subagents``: subagent type → :class:`Subagent` (or just its kind). ``parent_id``:
    the task the subagents are children of; default: the Reins task whose handler runs the
    agent, if any. ``session_id``: default: the parent task's. ``max_chars``: how much of a
    result or of the partial results one tool answer shows the model. ``id``: the toolset's
    id, also the value of :data:`DELEGATION_LABEL` (default: a new one).
    """

    def __init__(
        self,
        client: AsyncClient,
        subagents: Mapping[str, Subagent | str],
        *,
        parent_id: str | None = None,
        session_id: str | None = None,
        max_chars: int = 4000,
        id: str | None = None,
    ) -> None:
        if not subagents:
            raise ValueError("a Delegation needs at least one subagent type")
        self.client = client
        self.subagents = {
            name: spec if isinstance(spec, Subagent) else Subagent(spec)
            for name, spec in subagents.items()
        }
        self.delegation_id = id or uuid.uuid4().hex
        self._parent_id = parent_id
        self._session_id = session_id
        self.max_chars = max_chars
        super().__init__(id=f"reins-delegation-{self.delegation_id}")
        types = "\n".join(
            f"- {name}: {spec.description or spec.kind}" for name, spec in self.subagents.items()
        )
        self.add_function(
            self.task,
            description=(
                "Starts a subagent on a task: `description` says what it should do, "
                "`subagent_type` which subagent does it. mode='async' returns its ID at once "
                "(check it with check_task); mode='sync' waits for it to finish and returns "
                f"its final status.\nSubagent types:\n{types}"
            ),
        )
        for tool in (
            self.check_task,
            self.soft_cancel_task,
            self.hard_cancel_task,
            self.list_active_tasks,
            self.answer_subagent,
        ):
            self.add_function(tool)

    # -- where the subagents go ---------------------------------------------------------

    def parent_id(self) -> str:
        """The parent of the tasks started now: given, or the running handler's task."""
        if self._parent_id is not None:
            return self._parent_id
        ctx = current_task_context()
        return ctx.task.id if ctx is not None else ""

    def session_id(self) -> str:
        if self._session_id is not None:
            return self._session_id
        ctx = current_task_context()
        return ctx.task.session_id if ctx is not None else ""

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        """pydantic-ai leaves the toolset at the end of each run; a cancelled run with no
        parent task soft-cancels the tasks this toolset started (the server does it for
        children of a parent task, atomically and on every replica).

        "Cancelled" is read from the asyncio task running the agent, whose cancellation
        is pending while the run unwinds (``Task.cancelling()``, Python 3.11+): pydantic-ai
        leaves a toolset without the exception that ended the run.
        """
        task = asyncio.current_task()
        cancelling = getattr(task, "cancelling", None)
        if callable(cancelling) and cancelling() > 0 and not self.parent_id():
            await asyncio.shield(self._cancel_started())
        return await super().__aexit__(*exc_info)

    # -- the tools ----------------------------------------------------------------------

    async def task(
        self, description: str, subagent_type: str, mode: Literal["async", "sync"] = "async"
    ) -> str:
        """Starts a subagent (the model sees the description given in ``__init__``).

        Args:
            description: What the subagent should do.
            subagent_type: Which subagent does it.
            mode: 'async' returns the task's ID at once; 'sync' waits for its end.
        """
        if subagent_type not in self.subagents:
            raise ModelRetry(
                f"unknown subagent_type {subagent_type!r}; one of: {', '.join(self.subagents)}"
            )
        spec = self.subagents[subagent_type]
        try:
            started = await self.client.start(
                spec.kind,
                {**spec.params, "description": description},
                description=description,
                parent_id=self.parent_id(),
                session_id=self.session_id(),
                labels={DELEGATION_LABEL: self.delegation_id},
                budget=spec.budget,
            )
        except ReinsError as err:
            return _error(err)
        if mode == "async":
            return f"Task started with ID: {started.id}"
        try:
            done = await self.client.wait(started.id)
        except asyncio.CancelledError:
            # The parent's run was cancelled while it waited: the subagent is not wanted.
            await asyncio.shield(
                self._soft_cancel_quietly(started.id, "the parent stopped waiting")
            )
            raise
        except ReinsError as err:
            return _error(err)
        return self.describe(done)

    async def check_task(self, task_id: str) -> str:
        """Tells a subagent task's status: running (with progress), waiting for an answer,
        completed with its result, failed, or cancelled with its partial results.

        Args:
            task_id: The ID the task tool returned.
        """
        try:
            return self.describe(await self.client.check(task_id))
        except ReinsError as err:
            return _error(err)

    async def soft_cancel_task(self, task_id: str, reason: str = "") -> str:
        """Asks a subagent task (and its subtasks) to stop gracefully: it stops at its next
        checkpoint and returns its partial results. Check it afterwards with check_task.

        Args:
            task_id: The ID the task tool returned.
            reason: Why, for the subagent and the record.
        """
        try:
            response = await self.client.soft_cancel(task_id, reason or "cancelled by the parent")
        except ReinsError as err:
            return _error(err)
        return _cancel_outcome(task_id, response)

    async def hard_cancel_task(self, task_id: str, reason: str = "") -> str:
        """Stops a subagent task (and its subtasks) immediately, without cleanup: use it when
        a soft cancel did not work or there is no time. Partial results already reported
        are kept.

        Args:
            task_id: The ID the task tool returned.
            reason: Why, for the record.
        """
        try:
            response = await self.client.hard_cancel(task_id, reason or "cancelled by the parent")
        except ReinsError as err:
            return _error(err)
        return _cancel_outcome(task_id, response)

    async def list_active_tasks(self) -> str:
        """Lists the subagent tasks that have not finished, with their IDs and statuses."""
        lines = []
        try:
            async for task in self.client.list(
                parent_id=self.parent_id(), labels={DELEGATION_LABEL: self.delegation_id}
            ):
                lines.append(f"- {task.id} ({self._type_of(task)}): {_status_line(task)}")
        except ReinsError as err:
            return _error(err)
        return "Active tasks:\n" + "\n".join(lines) if lines else "No active tasks"

    async def answer_subagent(self, task_id: str, answer: str) -> str:
        """Answers the question a subagent task is waiting on (see check_task).

        Args:
            task_id: The ID of the waiting task.
            answer: The answer to its question.
        """
        try:
            await self.client.answer(task_id, answer)
        except ReinsError as err:
            return _error(err)
        return f"Answer sent to task {task_id}; it is running again"

    # -- text for the model -------------------------------------------------------------

    def describe(self, task: tasks_pb2.Task) -> str:
        """A task's status as ``check_task`` tells it."""
        partial = self._json([from_value(p) for p in task.partial_results])
        result = self._json(from_value(task.result)) if task.HasField("result") else ""
        state = task.state
        if state == _STATE.TASK_STATE_COMPLETED:
            return f"Task completed. Result: {result}"
        if state == _STATE.TASK_STATE_FAILED:
            return f"Task failed: {task.error}. Partial results: {partial}"
        if state == _STATE.TASK_STATE_CANCELLED:
            spent = task.cancel.budget_exhausted
            why = f" (its budget of {spent} was exhausted)" if spent else ""
            text = f"Task cancelled{why}. Partial results: {partial}"
            return f"{text}\nFinal result: {result}" if result else text
        text = f"Task is {_status_line(task)}"
        return f"{text}. Partial results so far: {partial}" if task.partial_results else text

    def _json(self, value: Any) -> str:
        text = json.dumps(value, ensure_ascii=False, sort_keys=True)
        if len(text) > self.max_chars:
            return text[: self.max_chars] + f"… ({len(text) - self.max_chars} more characters)"
        return text

    def _type_of(self, task: tasks_pb2.Task) -> str:
        names = [name for name, spec in self.subagents.items() if spec.kind == task.kind]
        return names[0] if names else task.kind

    async def _soft_cancel_quietly(self, task_id: str, reason: str) -> None:
        try:
            await self.client.soft_cancel(task_id, reason)
        except ReinsError:
            pass  # finished or gone meanwhile: nothing to stop

    async def _cancel_started(self) -> None:
        try:
            active = [
                task.id
                async for task in self.client.list(labels={DELEGATION_LABEL: self.delegation_id})
            ]
        except ReinsError:
            return  # Reins unreachable: nothing this run can do about it
        reason = "the parent agent's run was cancelled"
        await asyncio.gather(*(self._soft_cancel_quietly(task_id, reason) for task_id in active))


def _status_line(task: tasks_pb2.Task) -> str:
    """``running (40%: reading)``, ``pending``, ``waiting for an answer to: …``."""
    state = task.state
    if state == _STATE.TASK_STATE_PENDING:
        return "pending (not started yet)"
    if state == _STATE.TASK_STATE_WAITING_FOR_ANSWER:
        return f"waiting for an answer to: {task.question} (reply with answer_subagent)"
    if state in TERMINAL_STATES:
        return _STATE.Name(state).removeprefix("TASK_STATE_").lower()
    text = "running"
    if task.HasField("progress") and (task.progress.fraction or task.progress.message):
        text += f" ({task.progress.fraction:.0%}"
        text += f": {task.progress.message})" if task.progress.message else ")"
    if task.HasField("cancel"):
        text += "; cancellation requested"
    return text


def _cancel_outcome(task_id: str, response: tasks_pb2.CancelResponse) -> str:
    outcome = response.outcome
    if outcome == tasks_pb2.CANCEL_OUTCOME_REQUESTED:
        return f"Cancellation requested for task {task_id}"
    if outcome == tasks_pb2.CANCEL_OUTCOME_CANCELLED:
        return f"Task {task_id} cancelled immediately"
    if outcome == tasks_pb2.CANCEL_OUTCOME_ALREADY_CANCELLED:
        return f"Task {task_id} was already cancelled"
    state = _STATE.Name(response.task.state).removeprefix("TASK_STATE_").lower()
    return f"Task {task_id} already finished ({state}); it cannot be cancelled"


def _error(err: ReinsError) -> str:
    reason = f" ({err.reason})" if err.reason else ""
    return f"Error: {err.code().name}{reason}: {err.details()}"
