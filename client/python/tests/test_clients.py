"""reins.aio.AsyncClient and reins.Client against two real replicas on Redis, with the
built-in ``sleep`` kind (no worker needed): start, check, list paging, watch, soft and
hard cancel, answer, and the error type."""

from __future__ import annotations

import contextlib
import uuid

import grpc
import pytest

import reins
from harness import PATIENCE, done_async, run_async, until_async
from reins import Client, ReinsError, from_value
from reins.aio import AsyncClient
from reins.proto import tasks_pb2

LONG = {"steps": 1000, "step_ms": 100}
MISSING = "01900000-0000-7000-8000-000000000000"


def test_async_start_check_and_watch_across_replicas(cluster):
    async def scenario() -> None:
        async with AsyncClient(cluster.b.address) as b, AsyncClient(cluster.a.address) as a:
            task = await b.start(
                "sleep", {"steps": 3, "step_ms": 30}, description="py", labels={"x": "1"}
            )
            assert task.kind == "sleep" and task.description == "py"
            assert from_value(task.params) == {"steps": 3, "step_ms": 30}
            checked = await a.check(task.id)
            assert checked.id == task.id and dict(checked.labels) == {"x": "1"}

            versions, states = [], []
            async for event in a.watch(task.id):
                versions.append(event.task.version)
                states.append(event.task.state)
            assert states[-1] == tasks_pb2.TASK_STATE_COMPLETED, states
            assert versions == sorted(set(versions)), versions  # in order, no duplicate
            assert versions[-1] - versions[0] == len(versions) - 1  # no gap
            assert await b.wait(task.id) == await a.check(task.id)

    run_async(scenario)


def test_async_list_pages_through_the_active_tasks(cluster):
    async def scenario() -> None:
        label = {"list": uuid.uuid4().hex}
        async with AsyncClient(cluster.b.address) as b, AsyncClient(cluster.a.address) as a:
            started = [(await b.start("sleep", LONG, labels=label)).id for _ in range(5)]
            try:
                first = await a.list_page(labels=label, page_size=2)
                assert [t.id for t in first.tasks] == started[:2]
                assert first.next_page_token
                listed = [t.id async for t in a.list(labels=label, page_size=2)]
                assert listed == started  # creation order, across 3 pages
                assert [t.id async for t in a.list(labels=label, kind="exec")] == []
            finally:
                for task_id in started:
                    await b.hard_cancel(task_id)
            assert [t.id async for t in a.list(labels=label)] == []

    run_async(scenario)


def test_async_soft_and_hard_cancel(cluster):
    async def scenario() -> None:
        async with AsyncClient(cluster.b.address) as b, AsyncClient(cluster.a.address) as a:
            soft = await b.start("sleep", LONG)
            await until_async(
                a, soft.id, lambda t: t.state == tasks_pb2.TASK_STATE_RUNNING, "running"
            )
            response = await a.soft_cancel(soft.id, "enough", grace=PATIENCE)
            assert response.outcome in (
                tasks_pb2.CANCEL_OUTCOME_REQUESTED,
                tasks_pb2.CANCEL_OUTCOME_CANCELLED,
            ), response
            done = await done_async(b, soft.id)
            assert done.state == tasks_pb2.TASK_STATE_CANCELLED, done
            assert done.cancel.mode == tasks_pb2.CANCEL_MODE_SOFT
            assert done.cancel.reason == "enough"

            hard = await b.start("sleep", LONG)
            response = await a.hard_cancel(hard.id, "now")
            assert response.outcome == tasks_pb2.CANCEL_OUTCOME_CANCELLED
            assert response.task.state == tasks_pb2.TASK_STATE_CANCELLED
            assert response.task.cancel.mode == tasks_pb2.CANCEL_MODE_HARD
            again = await b.hard_cancel(hard.id)
            assert again.outcome == tasks_pb2.CANCEL_OUTCOME_ALREADY_CANCELLED

    run_async(scenario)


def test_async_answer_through_the_other_replica(cluster):
    async def scenario() -> None:
        async with AsyncClient(cluster.b.address) as b, AsyncClient(cluster.a.address) as a:
            task = await b.start("sleep", {"steps": 2, "step_ms": 10, "ask": "Colour?"})
            waiting = await until_async(
                b, task.id, lambda t: t.state == tasks_pb2.TASK_STATE_WAITING_FOR_ANSWER, "waiting"
            )
            assert waiting.question == "Colour?"
            await a.answer(task.id, "blue")
            done = await done_async(b, task.id)
            assert done.state == tasks_pb2.TASK_STATE_COMPLETED, done
            assert done.answer == "blue"

    run_async(scenario)


def test_leaving_a_watch_early_closes_it(cluster):
    async def scenario() -> None:
        async with AsyncClient(cluster.b.address) as b:
            task = await b.start("sleep", LONG)
            async with contextlib.aclosing(b.watch(task.id, cancel_on_disconnect=True)) as events:
                async for _ in events:
                    break  # the stream closes: the watcher's task is soft-cancelled
            done = await done_async(b, task.id)
            assert done.state == tasks_pb2.TASK_STATE_CANCELLED, done
            assert done.cancel.reason == "watcher disconnected"

    run_async(scenario)


def test_async_errors_carry_the_code_and_the_error_info_reason(cluster):
    async def scenario() -> None:
        async with AsyncClient(cluster.b.address) as b:
            with pytest.raises(ReinsError) as missing:
                await b.check(MISSING)
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
            assert missing.value.reason == "TASK_NOT_FOUND"
            assert missing.value.domain == "reins.v1"
            assert isinstance(missing.value, grpc.RpcError)

            with pytest.raises(ReinsError) as bad:
                await b.start("sleep", {"steps": "many", "step_ms": 10})
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert [field for field, _ in bad.value.field_violations] == ["params.steps"]

            with pytest.raises(ReinsError) as unknown:
                await b.start(f"no-such-kind-{uuid.uuid4().hex[:6]}")
            assert unknown.value.reason == "KIND_UNKNOWN", unknown.value

            with pytest.raises(ReinsError) as watched:
                async for _ in b.watch(MISSING):
                    pass
            assert watched.value.reason == "TASK_NOT_FOUND"

        async with AsyncClient("127.0.0.1:1", timeout=5) as nowhere:
            with pytest.raises(ReinsError) as unreachable:
                await nowhere.check(MISSING)
            assert unreachable.value.code() == grpc.StatusCode.UNAVAILABLE
            assert unreachable.value.reason == ""

    run_async(scenario)


def test_the_sync_client_does_the_same(cluster):
    label = {"sync": uuid.uuid4().hex}
    with Client(cluster.b.address) as b, Client(f"http://{cluster.a.address}") as a:
        quick = b.start("sleep", {"steps": 2, "step_ms": 10}, labels=label, max_attempts=1)
        events = list(a.watch(quick.id))
        assert events[-1].task.state == tasks_pb2.TASK_STATE_COMPLETED
        assert a.check(quick.id) == events[-1].task

        started = [b.start("sleep", LONG, labels=label).id for _ in range(3)]
        assert [t.id for t in a.list(labels=label, page_size=2)] == started
        assert b.soft_cancel(started[0], "soft").outcome == tasks_pb2.CANCEL_OUTCOME_REQUESTED
        assert a.wait(started[0], timeout=PATIENCE).state == tasks_pb2.TASK_STATE_CANCELLED
        for task_id in started[1:]:
            assert b.hard_cancel(task_id).task.state == tasks_pb2.TASK_STATE_CANCELLED

        asking = b.start("sleep", {"steps": 1, "step_ms": 10, "ask": "?"})
        for event in a.watch(asking.id):
            if event.task.state == tasks_pb2.TASK_STATE_WAITING_FOR_ANSWER:
                break
        a.answer(asking.id, "yes")
        assert b.wait(asking.id, timeout=PATIENCE).answer == "yes"

        with pytest.raises(ReinsError) as missing:
            b.answer(MISSING, "x")
        assert (missing.value.code(), missing.value.reason) == (
            grpc.StatusCode.NOT_FOUND,
            "TASK_NOT_FOUND",
        )


def test_server_addresses():
    from reins._calls import parse_server

    assert parse_server("127.0.0.1:50051") == reins._calls.Target("127.0.0.1:50051", False)
    assert parse_server("http://h:1") == reins._calls.Target("h:1", False)
    assert parse_server("https://h") == reins._calls.Target("h:443", True)
    assert parse_server("https://[::1]:9") == reins._calls.Target("[::1]:9", True)
    for bad in ("", "ftp://h:1", "http://"):
        with pytest.raises(ValueError):
            parse_server(bad)
