"""Budgets, bulk cancel, RunTask and answer deadlines from Python: both clients and both
workers against two real replicas on Redis."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid

import pytest

from harness import PATIENCE, done_async, run_async, serving
from reins import AnswerTimedOut, CancelRequested, Client, ReinsError, from_value
from reins.aio import AsyncClient, AsyncTaskContext
from reins.proto import tasks_pb2

LONG = {"steps": 1000, "step_ms": 50}


def test_a_budget_stops_a_task_and_shows_in_its_usage(cluster):
    with Client(cluster.b.address) as b:
        task = b.start("sleep", {"steps": 100, "step_ms": 10}, budget={"steps": 3})
        done = b.wait(task.id, timeout=PATIENCE)
        assert done.state == tasks_pb2.TASK_STATE_CANCELLED
        assert done.cancel.budget_exhausted == "steps"
        assert done.cancel.reason == "budget exhausted: steps 3 of 3"
        assert b.check(task.id).subtree_usage["steps"] == 3


def test_cancel_tasks_by_session_and_late_starts(cluster):
    session = f"py-{uuid.uuid4().hex}"
    with Client(cluster.a.address) as a, Client(cluster.b.address) as b:
        ids = [b.start("sleep", LONG, session_id=session).id for _ in range(4)]
        dry = a.cancel_tasks(session_id=session, dry_run=True)
        assert (dry.matched, dry.cancelled, list(dry.task_ids)) == (4, 0, ids)
        done = a.cancel_tasks(session_id=session, reason="Stop", hard=True)
        assert (done.matched, done.cancelled) == (4, 4)
        assert all(b.check(i).state == tasks_pb2.TASK_STATE_CANCELLED for i in ids)
        with pytest.raises(ReinsError) as late:
            b.start("sleep", LONG, session_id=session)
        assert late.value.reason == "SESSION_CANCELLED"
        with pytest.raises(ReinsError) as no_filter:
            a.cancel_tasks()
        assert no_filter.value.field_violations[0][0] == "kind"


def test_run_streams_to_the_end_and_leaving_early_cancels(cluster):
    with Client(cluster.a.address) as a:
        events = list(a.run("sleep", {"steps": 2, "step_ms": 10}))
        assert events[-1].task.state == tasks_pb2.TASK_STATE_COMPLETED
        for event in a.run("sleep", LONG):
            task_id = event.task.id
            break
        done = a.wait(task_id, timeout=PATIENCE)
        assert done.state == tasks_pb2.TASK_STATE_CANCELLED
        assert done.cancel.reason == "caller disconnected"


def test_async_client_run_and_cancel_tasks(cluster):
    async def scenario() -> None:
        label = {"py": uuid.uuid4().hex}
        async with AsyncClient(cluster.a.address) as a:
            async with contextlib.aclosing(a.run("sleep", LONG, labels=label)) as events:
                async for event in events:
                    task_id = event.task.id
                    break
            done = await done_async(a, task_id)
            assert done.cancel.reason == "caller disconnected"
            await a.start("sleep", LONG, labels=label, budget={"steps": 1e6})
            counted = await a.cancel_tasks(labels=label)
            assert (counted.matched, counted.requested) == (1, 1)

    run_async(scenario)


def test_a_thread_worker_reports_usage_and_sees_the_budget_left(cluster, kind, workers):
    seen: dict[str, object] = {}
    stopped = threading.Event()

    def handler(ctx):
        seen["assigned"] = dict(ctx.task.budget_remaining)
        ctx.progress(0.5, "spent", usage={"tokens": 30})
        deadline = PATIENCE
        while ctx.task.budget_remaining.get("tokens") != 70 and deadline > 0:
            ctx.sleep(0.01)
            deadline -= 0.01
        seen["after"] = dict(ctx.task.budget_remaining)
        try:
            ctx.ask("go on?", answer_within=0.2)
        except AnswerTimedOut:
            seen["timed_out"] = True
        ctx.progress(0.9, "more", usage={"tokens": 80})
        ctx.wait_cancelled(PATIENCE)
        seen["reason"] = ctx.cancel_reason
        stopped.set()
        raise CancelRequested()

    workers(cluster.a.address, [kind], handler)
    with Client(cluster.b.address) as b:
        task = b.start(kind, budget={"tokens": 100})
        done = b.wait(task.id, timeout=PATIENCE)
    assert stopped.is_set()
    assert seen["assigned"] == {"tokens": 100}
    assert seen["after"] == {"tokens": 70}
    assert seen["timed_out"] is True
    assert seen["reason"] == "budget exhausted: tokens 110 of 100"
    assert done.state == tasks_pb2.TASK_STATE_CANCELLED
    assert done.answer_timed_out and done.usage["tokens"] == 110


def test_an_async_worker_reports_usage_and_its_question_times_out(cluster, kind):
    async def handler(ctx: AsyncTaskContext) -> dict[str, object]:
        await ctx.checkpoint({"step": 1}, 0.5, usage={"tokens": 5})
        try:
            await ctx.ask("anyone?", answer_within=0.2)
            answered = True
        except AnswerTimedOut:
            answered = False
        for _ in range(500):
            if ctx.task.budget_remaining.get("tokens") == 15:
                break
            await asyncio.sleep(0.01)
        return {"answered": answered, "left": ctx.task.budget_remaining.get("tokens")}

    async def scenario() -> None:
        async with AsyncClient(cluster.b.address) as b:
            async with serving(cluster.a.address, [kind], handler):
                task = await b.start(kind, budget={"tokens": 20})
                done = await done_async(b, task.id)
            assert done.state == tasks_pb2.TASK_STATE_COMPLETED, done
            assert from_value(done.result) == {"answered": False, "left": 15}

    run_async(scenario)
