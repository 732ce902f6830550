"""Reins on asyncio (``grpc.aio``): :class:`AsyncClient` and :class:`AsyncWorker`.

::

    import asyncio
    import reins
    from reins.aio import AsyncWorker

    async def handler(ctx):
        notes = []
        try:
            for step in range(ctx.task.params.get("steps", 3)):
                notes.append(await do_step(step))    # a hard cancel interrupts this
                await ctx.checkpoint({"step": step}) # CancelRequested after a soft cancel
        except reins.CancelRequested:
            raise reins.Cancelled({"notes": notes})         # CANCELLED, partial results kept
        return {"notes": notes}                             # COMPLETED

    asyncio.run(AsyncWorker("127.0.0.1:50051", ["demo"], handler, max_concurrency=8).run())
"""

from .._calls import TaskInfo
from .._errors import Cancelled, CancelRequested, ReinsError
from ._client import AsyncClient
from ._current import current_task_context
from ._worker import AsyncHandler, AsyncTaskContext, AsyncWorker

__all__ = [
    "AsyncClient",
    "AsyncHandler",
    "AsyncTaskContext",
    "AsyncWorker",
    "CancelRequested",
    "Cancelled",
    "ReinsError",
    "TaskInfo",
    "current_task_context",
]
