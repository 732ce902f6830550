"""The task an :class:`~reins.aio.AsyncWorker` handler runs, for code deep in its call
tree: a library the handler calls (``reins.pydantic_ai``'s delegation tools) starts its
subtasks as children of it without the handler passing its context down.

Each handler runs in an asyncio task of its own, with a copy of the context, so the value
is per task and follows the handler into the tasks it creates (``asyncio.create_task``,
``TaskGroup``, the tool calls of an agent framework), and nowhere else.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._worker import AsyncTaskContext

_current: ContextVar[AsyncTaskContext | None] = ContextVar("reins_task_context", default=None)


def current_task_context() -> AsyncTaskContext | None:
    """The context of the Reins task whose handler (or a task it created) calls this;
    ``None`` outside a handler."""
    return _current.get()


def _enter(ctx: AsyncTaskContext) -> None:
    """Called by the worker at the start of the handler's own asyncio task."""
    _current.set(ctx)
