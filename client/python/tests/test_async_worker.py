"""reins.aio.AsyncWorker against two real replicas on Redis.

The worker connects to replica ``a``; tasks are started, watched, cancelled and answered
through replica ``b`` (an AsyncClient), so every step crosses replicas. Each test runs its
own event loop (``run_async``); waits are on watch events, or polls with deadlines.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import reins
from harness import (
    PATIENCE,
    PYTHON_DIR,
    Cluster,
    done_async,
    eventually,
    run_async,
    serving,
    until_async,
)
from reins import Backoff, Cancelled, CancelRequested, from_value
from reins.aio import AsyncClient, AsyncTaskContext, AsyncWorker
from reins.proto import tasks_pb2

RUNNING = tasks_pb2.TASK_STATE_RUNNING
PENDING = tasks_pb2.TASK_STATE_PENDING
COMPLETED = tasks_pb2.TASK_STATE_COMPLETED
CANCELLED = tasks_pb2.TASK_STATE_CANCELLED


class Trace:
    """Every message the worker sent / received, as ``(direction, what, task_id)``."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, str, str]] = []

    def __call__(self, direction: str, message: Any) -> None:
        what = message.WhichOneof("message" if direction == "send" else "command")
        body = getattr(message, what)
        task_id = getattr(body, "task_id", "") or (body.task.id if what == "assign" else "")
        self.messages.append((direction, what, task_id))

    def about(self, task_id: str) -> list[tuple[str, str]]:
        return [(d, what) for d, what, t in self.messages if t == task_id]


def test_a_task_completes_with_the_handlers_return_value(cluster, kind):
    async def handler(ctx: AsyncTaskContext) -> dict[str, Any]:
        task = ctx.task
        return {
            "params": task.params,
            "kind": task.kind,
            "labels": task.labels,
            "session_id": task.session_id,
            "parent_id": task.parent_id,
            "attempt": task.attempt,
        }

    async def scenario() -> None:
        async with (
            AsyncClient(cluster.b.address) as b,
            serving(cluster.a.address, [kind], handler, name="aw") as worker,
        ):
            parent = await b.start("sleep", {"steps": 1000, "step_ms": 100})
            task = await b.start(
                kind,
                {"topic": "rust", "n": 3},
                labels={"team": "py"},
                session_id="s-1",
                parent_id=parent.id,
            )
            done = await done_async(b, task.id)
            assert done.state == COMPLETED, done
            assert done.owner == "a"
            assert done.worker == f"aw/{worker.worker_id}"
            assert from_value(done.result) == {
                "params": {"topic": "rust", "n": 3},
                "kind": kind,
                "labels": {"team": "py"},
                "session_id": "s-1",
                "parent_id": parent.id,
                "attempt": 1,
            }
            await b.hard_cancel(parent.id)

    run_async(scenario)


def test_progress_and_checkpoints_are_visible_through_check_task(cluster, kind):
    release = asyncio.Event()

    async def handler(ctx: AsyncTaskContext) -> str:
        await ctx.progress(0.25, "a quarter")
        await ctx.checkpoint({"found": 1})
        await ctx.checkpoint({"found": 2}, 0.5, "half")
        await release.wait()
        return "done"

    async def scenario() -> None:
        async with (
            AsyncClient(cluster.b.address) as b,
            AsyncClient(cluster.a.address) as a,
            serving(cluster.a.address, [kind], handler),
        ):
            task = await b.start(kind)
            await until_async(b, task.id, lambda t: len(t.partial_results) == 2, "checkpointed")
            for client in (a, b):
                seen = await client.check(task.id)
                assert seen.state == RUNNING
                assert [from_value(p) for p in seen.partial_results] == [{"found": 1}, {"found": 2}]
                assert seen.progress.fraction == pytest.approx(0.5)
                assert seen.progress.message == "half"
            release.set()
            done = await done_async(b, task.id)
            assert done.state == COMPLETED, done
            assert from_value(done.result) == "done"
            assert len(done.partial_results) == 2

    run_async(scenario)


def test_a_checkpoint_without_progress_keeps_the_last_progress(cluster, kind):
    async def handler(ctx: AsyncTaskContext) -> None:
        await ctx.progress(0.75, "most")
        await ctx.checkpoint("partial")

    async def scenario() -> None:
        async with AsyncClient(cluster.b.address) as b, serving(cluster.a.address, [kind], handler):
            done = await done_async(b, (await b.start(kind)).id)
            assert done.state == COMPLETED, done
            assert done.progress.fraction == pytest.approx(0.75)
            assert done.progress.message == "most"
            assert not done.HasField("result") or from_value(done.result) is None

    run_async(scenario)


def test_a_question_answered_through_another_replica_reaches_the_handler(cluster, kind):
    async def handler(ctx: AsyncTaskContext) -> dict[str, str]:
        return {"answer": await ctx.ask("Which sources?")}

    async def scenario() -> None:
        async with AsyncClient(cluster.b.address) as b, serving(cluster.a.address, [kind], handler):
            task = await b.start(kind)
            waiting = await until_async(
                b, task.id, lambda t: t.state == tasks_pb2.TASK_STATE_WAITING_FOR_ANSWER, "waiting"
            )
            assert waiting.question == "Which sources?"
            await b.answer(task.id, "arxiv")
            done = await done_async(b, task.id)
            assert done.state == COMPLETED, done
            assert from_value(done.result) == {"answer": "arxiv"}

    run_async(scenario)


def test_a_soft_cancel_sets_the_event_and_the_next_checkpoint_raises(cluster, kind):
    seen: dict[str, Any] = {}

    async def handler(ctx: AsyncTaskContext) -> dict[str, Any]:
        steps = 0
        try:
            while True:
                await asyncio.sleep(0.02)
                steps += 1
                await ctx.checkpoint({"step": steps}, message=f"step {steps}")
        except CancelRequested as stop:
            seen["event_set"] = ctx.cancel_requested.is_set()
            seen["raised_by"] = "checkpoint"
            seen["reason"] = stop.reason
            raise Cancelled({"steps": steps, "reason": ctx.cancel_reason}) from None

    async def scenario() -> None:
        async with AsyncClient(cluster.b.address) as b, serving(cluster.a.address, [kind], handler):
            task = await b.start(kind)
            await until_async(b, task.id, lambda t: len(t.partial_results) >= 2, "checkpointing")
            response = await b.soft_cancel(task.id, "enough", grace=PATIENCE)
            assert response.outcome == tasks_pb2.CANCEL_OUTCOME_REQUESTED, response
            done = await done_async(b, task.id)
            assert done.state == CANCELLED, done
            assert done.cancel.mode == tasks_pb2.CANCEL_MODE_SOFT
            assert not done.cancel.escalated
            result = from_value(done.result)
            assert result["reason"] == "enough"
            # Every checkpoint up to the one that raised is kept.
            assert [from_value(p)["step"] for p in done.partial_results] == list(
                range(1, result["steps"] + 1)
            )
            assert seen == {"event_set": True, "raised_by": "checkpoint", "reason": "enough"}

    run_async(scenario)


def test_letting_cancel_requested_escape_acknowledges_the_cancel(cluster, kind):
    async def handler(ctx: AsyncTaskContext) -> str:
        await ctx.checkpoint("before")
        await ctx.cancel_requested.wait()
        ctx.raise_if_cancelled()
        return "unreachable"

    async def scenario() -> None:
        async with AsyncClient(cluster.b.address) as b, serving(cluster.a.address, [kind], handler):
            task = await b.start(kind)
            await until_async(b, task.id, lambda t: len(t.partial_results) == 1, "checkpointed")
            await b.soft_cancel(task.id, "stop")
            done = await done_async(b, task.id)
            assert done.state == CANCELLED, done
            assert not done.HasField("result") or from_value(done.result) is None
            assert [from_value(p) for p in done.partial_results] == ["before"]

    run_async(scenario)


def test_a_soft_cancel_wakes_an_open_question(cluster, kind):
    async def handler(ctx: AsyncTaskContext) -> str:
        try:
            return await ctx.ask("Anyone?")
        except CancelRequested:
            raise Cancelled({"asked": True, "reason": ctx.cancel_reason}) from None

    async def scenario() -> None:
        async with AsyncClient(cluster.b.address) as b, serving(cluster.a.address, [kind], handler):
            task = await b.start(kind)
            await until_async(
                b, task.id, lambda t: t.state == tasks_pb2.TASK_STATE_WAITING_FOR_ANSWER, "waiting"
            )
            await b.soft_cancel(task.id, "nobody")
            done = await done_async(b, task.id)
            assert done.state == CANCELLED, done
            assert from_value(done.result) == {"asked": True, "reason": "nobody"}

    run_async(scenario)


def test_a_hard_cancel_cancels_the_handler_while_it_awaits_a_subprocess(cluster, kind, tmp_path):
    marker = tmp_path / "cleaned-up"
    trace = Trace()
    seen: dict[str, Any] = {}
    cleaned = asyncio.Event()

    async def handler(ctx: AsyncTaskContext) -> str:
        if ctx.task.params.get("quick"):
            return "next"
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import time; time.sleep(3600)"
        )
        seen["child"] = child
        try:
            await ctx.progress(0.1, "child started")
            await child.wait()  # a hard cancel interrupts this
            return "never"
        except asyncio.CancelledError:
            seen["cancelled_error"] = True
            seen["aborted"] = ctx.aborted
            seen["abort_reason"] = ctx.abort_reason
            raise
        finally:
            child.kill()
            await child.wait()
            await ctx.progress(0.99, "after the abort")  # must not count
            marker.write_text(f"child {child.pid} exited {child.returncode}")
            cleaned.set()

    async def scenario() -> None:
        async with (
            AsyncClient(cluster.b.address) as b,
            serving(cluster.a.address, [kind], handler, max_concurrency=1, trace=trace),
        ):
            task = await b.start(kind)
            running = await until_async(
                b, task.id, lambda t: t.progress.message == "child started", "running its child"
            )
            response = await b.hard_cancel(task.id, "stop now")
            assert response.outcome == tasks_pb2.CANCEL_OUTCOME_CANCELLED, response
            assert response.task.state == CANCELLED  # when the call returns

            await asyncio.wait_for(cleaned.wait(), PATIENCE)
            assert seen["cancelled_error"] and seen["aborted"], seen
            assert seen["abort_reason"] == "stop now"
            assert seen["child"].returncode is not None  # the subprocess is gone
            assert marker.read_text().startswith(f"child {seen['child'].pid} exited")
            messages = trace.about(task.id)
            abort_at = messages.index(("recv", "abort"))
            assert not [m for m in messages[abort_at:] if m[0] == "send"], messages

            # The slot is free: the next task runs on the same worker (max_concurrency 1).
            following = await done_async(b, (await b.start(kind, {"quick": True})).id)
            assert following.state == COMPLETED, following
            assert from_value(following.result) == "next"
            final = await b.check(task.id)
            assert final.state == CANCELLED
            assert final.progress.message != "after the abort"
            assert final.version == response.task.version
            assert running.version < final.version

    run_async(scenario)


def test_a_handler_that_swallows_the_cancellation_is_abandoned(cluster, kind, caplog):
    caplog.set_level(logging.ERROR, logger="reins.aio.worker")
    release = asyncio.Event()
    swallowed: list[str] = []

    async def handler(ctx: AsyncTaskContext) -> str:
        if ctx.task.params.get("quick"):
            return "next"
        await ctx.progress(0.1, "started")
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                swallowed.append("cancel")  # wrong: never swallow CancelledError
        return "late"

    async def scenario() -> None:
        try:
            await misbehave()
        finally:
            release.set()  # never leave a swallowing handler behind, even on failure

    async def misbehave() -> None:
        async with (
            AsyncClient(cluster.b.address) as b,
            serving(
                cluster.a.address, [kind], handler, max_concurrency=1, cleanup_timeout=0.3
            ) as worker,
        ):
            task = await b.start(kind)
            await until_async(b, task.id, lambda t: t.progress.message == "started", "started")
            await b.hard_cancel(task.id, "stop")
            await eventually(
                lambda: any("abandoned" in r.getMessage() for r in caplog.records),
                "logged as abandoned",
            )
            assert any(task.id in r.getMessage() for r in caplog.records)
            assert swallowed, "the handler never saw the CancelledError"
            # Abandoned, still running, and the worker goes on with the next task.
            assert worker.active_tasks == []
            following = await done_async(b, (await b.start(kind, {"quick": True})).id)
            assert following.state == COMPLETED, following
            assert not release.is_set()
            release.set()
            assert (await b.check(task.id)).state == CANCELLED

    run_async(scenario)


def test_max_concurrency_bounds_the_tasks_running_at_once(cluster, kind):
    running = 0
    peak = 0

    async def handler(ctx: AsyncTaskContext) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await asyncio.sleep(0.3)
        finally:
            running -= 1
        return int(ctx.task.params["i"])

    async def scenario() -> None:
        async with (
            AsyncClient(cluster.b.address) as b,
            serving(cluster.a.address, [kind], handler, max_concurrency=3),
        ):
            tasks = [await b.start(kind, {"i": i}) for i in range(12)]
            done = await asyncio.gather(*(done_async(b, t.id) for t in tasks))
            assert [t.state for t in done] == [COMPLETED] * 12, done
            assert [from_value(t.result) for t in done] == list(range(12))
            assert peak == 3

    run_async(scenario)


def test_handlers_of_the_wrong_kind_are_a_type_error_at_construction():
    async def coroutine_handler(ctx: Any) -> None:
        return None

    def plain_handler(ctx: Any) -> None:
        return None

    async def generator_handler(ctx: Any) -> Any:
        yield None

    with pytest.raises(TypeError, match="AsyncWorker"):
        reins.Worker("127.0.0.1:1", ["k"], coroutine_handler)
    with pytest.raises(TypeError, match="async def"):
        AsyncWorker("127.0.0.1:1", ["k"], plain_handler)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        AsyncWorker("127.0.0.1:1", ["k"], generator_handler)
    with pytest.raises(TypeError):
        reins.Worker("127.0.0.1:1", ["k"], generator_handler)


def test_a_worker_cannot_serve_a_built_in_kind(cluster):
    async def handler(ctx: AsyncTaskContext) -> None:
        return None

    async def scenario() -> None:
        worker = AsyncWorker(cluster.a.address, ["sleep"], handler, handle_signals=False)
        with pytest.raises(reins.ReinsError) as raised:
            await worker.run()
        assert raised.value.code().name == "INVALID_ARGUMENT"
        assert "built-in" in raised.value.details()

    run_async(scenario)


def test_sigterm_drains_the_worker_and_hands_back_what_still_runs(cluster, kind):
    script = PYTHON_DIR / "examples" / "async_research_worker.py"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REINS")}
    process = subprocess.Popen(
        [sys.executable, str(script), "--server", cluster.a.address, "--kind", kind,
         "--name", "draining", "--concurrency", "2", "--shutdown-grace", "5"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    lines: list[str] = []
    welcomed = threading.Event()

    def read_output() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.decode(errors="replace"))
            if " connected as " in lines[-1]:
                welcomed.set()

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()

    async def second(ctx: AsyncTaskContext) -> dict[str, int]:
        return {"attempt": ctx.task.attempt}

    async def scenario() -> None:
        async with AsyncClient(cluster.b.address) as b:
            assert await asyncio.to_thread(welcomed.wait, PATIENCE), "".join(lines)
            # One task that finishes within the grace period, one that does not.
            quick = await b.start(kind, {"step_ms": 200}, max_attempts=2)
            slow = await b.start(kind, {"step_ms": 3_600_000}, max_attempts=2)
            for task in (quick, slow):
                await until_async(
                    b, task.id, lambda t: t.worker.startswith("draining/"), "on the worker"
                )
            process.send_signal(signal.SIGTERM)

            finished = await done_async(b, quick.id)
            assert finished.state == COMPLETED, finished  # finished during the drain
            assert finished.worker.startswith("draining/")
            assert from_value(finished.result)["attempt"] == 1
            requeued = await until_async(b, slow.id, lambda t: t.state == PENDING, "handed back")
            assert requeued.attempt == 1
            await asyncio.wait_for(asyncio.to_thread(process.wait), PATIENCE)
            assert process.returncode == 0

            async with serving(cluster.b.address, [kind], second, name="second"):
                done = await done_async(b, slow.id)
            assert done.state == COMPLETED, done
            assert done.worker.startswith("second/")
            assert done.attempt == 2
            assert from_value(done.result) == {"attempt": 2}

    try:
        run_async(scenario)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        reader.join(PATIENCE)
        output = "".join(lines)
        print(output)
    assert "handing back 1 task(s)" in output, output


def test_a_draining_worker_starts_no_new_task_and_hands_it_back(cluster, kind):
    release = asyncio.Event()
    started: list[tuple[str, str]] = []  # (worker, task id) of every handler call

    async def handler(ctx: AsyncTaskContext) -> dict[str, int]:
        started.append(("first", ctx.task.id))
        await release.wait()
        return {"attempt": ctx.task.attempt}

    async def second(ctx: AsyncTaskContext) -> dict[str, int]:
        started.append(("second", ctx.task.id))
        return {"attempt": ctx.task.attempt}

    async def scenario() -> None:
        async with AsyncClient(cluster.b.address) as b:
            worker = AsyncWorker(
                cluster.a.address, [kind], handler, name="first", max_concurrency=2,
                shutdown_grace=PATIENCE, handle_signals=False,
            )  # fmt: skip
            runner = asyncio.ensure_future(worker.run())
            assert await worker.wait_connected(PATIENCE)
            running = await b.start(kind, max_attempts=2)
            await until_async(b, running.id, lambda t: t.worker.startswith("first/"), "running")
            # The server has assigned it; the drain waits for it once its handler runs.
            await eventually(lambda: bool(started), "the first handler started")
            closing = asyncio.ensure_future(worker.close())  # drains: waits for `running`
            await eventually(lambda: worker._draining, "draining")
            late = await b.start(kind, max_attempts=2)  # a free slot: assigned, not started
            await until_async(b, late.id, lambda t: t.worker.startswith("first/"), "assigned")
            release.set()
            await asyncio.wait_for(closing, PATIENCE)
            await runner

            done = await done_async(b, running.id)
            assert done.state == COMPLETED and from_value(done.result) == {"attempt": 1}, done
            requeued = await b.check(late.id)
            assert requeued.state == PENDING, requeued
            async with serving(cluster.b.address, [kind], second, name="second"):
                retried = await done_async(b, late.id)
            assert retried.state == COMPLETED, retried
            assert from_value(retried.result) == {"attempt": 2}
            assert started == [("first", running.id), ("second", late.id)]

    run_async(scenario)


@pytest.fixture
def own_cluster():
    """A cluster of this test's own: it restarts a replica."""
    cluster = Cluster()
    yield cluster
    cluster.stop()


def test_the_worker_reconnects_after_its_replica_restarts(own_cluster, kind):
    cluster = own_cluster

    async def handler(ctx: AsyncTaskContext) -> str:
        return f"served by connection {ctx.task.params['n']}"

    async def scenario() -> None:
        async with (
            AsyncClient(cluster.b.address) as b,
            serving(cluster.a.address, [kind], handler, reconnect=Backoff(0.05, 0.5)) as worker,
        ):
            first = await done_async(b, (await b.start(kind, {"n": 1})).id)
            assert first.state == COMPLETED, first
            first_id = worker.worker_id

            await asyncio.to_thread(cluster.a.restart)
            await eventually(lambda: worker.connections >= 2 and worker.connected, "reconnected")
            assert worker.worker_id != first_id

            second = await done_async(b, (await b.start(kind, {"n": 2})).id)
            assert second.state == COMPLETED, second
            assert second.owner == "a"
            assert second.worker == f"pytest-async/{worker.worker_id}"

    run_async(scenario)


def test_reconnect_delays_grow_with_jitter_and_reset():
    import random

    backoff = Backoff(0.1, 1.0, rng=random.Random(7))
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    delays = [backoff.next() for _ in ceilings]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling, (delays, ceilings)
    assert len(set(delays)) == len(delays)  # jittered, not in lockstep
    backoff.reset()
    assert 0.05 <= backoff.next() <= 0.1
    with pytest.raises(ValueError):
        Backoff(0, 1)


def test_the_tests_use_the_installed_package():
    # Not the source tree, which has no generated stubs.
    assert Path(reins.__file__).resolve().is_relative_to(Path(sys.prefix).resolve())
