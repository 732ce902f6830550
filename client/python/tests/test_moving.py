"""Workers moving off a draining replica (``WorkerCommand.reconnect``), thread and asyncio.

Each test has a cluster of its own (one replica is drained with SIGTERM). The worker's
channel balances over both replicas (``round_robin``), as a Kubernetes Service would: its
task was started on one, the replica running it is drained, and the worker moves to the
other with the task, which runs on without restarting (same attempt, handler called once).
"""

from __future__ import annotations

import asyncio
import signal
import threading
from typing import Any

import grpc
import grpc.aio

from harness import (
    PATIENCE,
    Cluster,
    Reinsd,
    done_async,
    run_async,
    serving,
    until_async,
    until_terminal,
    watch_until,
)
from reins import Worker, from_value
from reins.aio import AsyncClient, AsyncTaskContext
from reins.proto import tasks_pb2, tasks_pb2_grpc

#: Round-robin over the replicas: a new stream goes to a replica that is not draining. (An
#: explicit authority: the default one, the list of addresses, is not a valid :authority.)
#: A short reconnect backoff, so a restarted replica is back in the rotation at once (a
#: Service's address never goes away, so in a cluster this does not arise).
BALANCED = [
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.default_authority", "reins"),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


def both(cluster: Cluster) -> str:
    return f"ipv4:{cluster.a.address},{cluster.b.address}"


def drained_and_other(cluster: Cluster, owner: str) -> tuple[Reinsd, Reinsd]:
    return (cluster.a, cluster.b) if owner == "a" else (cluster.b, cluster.a)


def start(stub: tasks_pb2_grpc.TaskServiceStub, kind: str) -> tasks_pb2.Task:
    return stub.StartTask(tasks_pb2.StartTaskRequest(kind=kind, description="moving"))


def drain(replica: Reinsd) -> None:
    replica.process.send_signal(signal.SIGTERM)


def test_a_thread_worker_moves_with_its_task_when_its_replica_drains(kind: str) -> None:
    cluster = Cluster()
    channels: list[grpc.Channel] = []
    worker: Worker | None = None
    try:
        release = threading.Event()
        calls: list[str] = []

        def handler(ctx: Any) -> dict[str, bool]:
            calls.append(ctx.task.id)
            ctx.checkpoint({"page": 1}, 0.5)
            assert release.wait(PATIENCE), "the test never released the task"
            return {"found": True}

        channels.append(grpc.insecure_channel(both(cluster), options=BALANCED))
        worker = Worker(channels[0], [kind], handler, name="mover", max_concurrency=2)
        worker.start()
        assert worker.wait_connected(PATIENCE)
        channels.append(grpc.insecure_channel(cluster.a.address))
        task = start(tasks_pb2_grpc.TaskServiceStub(channels[-1]), kind)
        running = watch_until(
            tasks_pb2_grpc.TaskServiceStub(channels[-1]),
            task.id,
            lambda t: len(t.partial_results) == 1,
            "checkpointed",
        )
        drained, other = drained_and_other(cluster, running.owner)
        drain(drained)
        channels.append(grpc.insecure_channel(other.address))
        stub = tasks_pb2_grpc.TaskServiceStub(channels[-1])
        moved = watch_until(stub, task.id, lambda t: t.owner == other.replica_id, "adopted")
        assert (moved.state, moved.attempt) == (tasks_pb2.TASK_STATE_RUNNING, running.attempt)
        assert drained.process.wait(PATIENCE) == 0, "the drained replica exits once idle"

        release.set()
        done = until_terminal(stub, task.id)
        assert done.state == tasks_pb2.TASK_STATE_COMPLETED, done
        assert done.attempt == running.attempt, "the task was not restarted"
        assert from_value(done.result) == {"found": True}
        assert len(done.partial_results) == 1, "the checkpoint moved along"
        assert calls == [task.id], "the handler ran once"
    finally:
        if worker is not None:
            worker.stop()
        for channel in channels:
            channel.close()
        cluster.stop()


def test_an_asyncio_worker_moves_with_its_task_when_its_replica_drains(kind: str) -> None:
    cluster = Cluster()

    async def main() -> None:
        release = asyncio.Event()
        calls: list[str] = []

        async def handler(ctx: AsyncTaskContext) -> dict[str, bool]:
            calls.append(ctx.task.id)
            await ctx.checkpoint({"page": 1}, 0.5)
            await asyncio.wait_for(release.wait(), PATIENCE)
            return {"found": True}

        channel = grpc.aio.insecure_channel(both(cluster), options=BALANCED)
        async with (
            AsyncClient(cluster.a.address) as via_a,
            serving(
                channel,
                [kind],
                handler,
                max_concurrency=2,  # type: ignore[arg-type]
            ) as worker,
        ):
            task = await via_a.start(kind)
            running = await until_async(
                via_a, task.id, lambda t: len(t.partial_results) == 1, "checkpointed"
            )
            drained, other = drained_and_other(cluster, running.owner)
            drain(drained)
            async with AsyncClient(other.address) as client:
                moved = await until_async(
                    client, task.id, lambda t: t.owner == other.replica_id, "adopted"
                )
                assert (moved.state, moved.attempt) == (
                    tasks_pb2.TASK_STATE_RUNNING,
                    running.attempt,
                )
                exit_code = await asyncio.get_running_loop().run_in_executor(
                    None, lambda: drained.process.wait(PATIENCE)
                )
                assert exit_code == 0, "the drained replica exits once idle"
                assert worker.connections == 2
                release.set()
                done = await done_async(client, task.id)
        await channel.close(None)
        assert done.state == tasks_pb2.TASK_STATE_COMPLETED, done
        assert done.attempt == running.attempt, "the task was not restarted"
        assert from_value(done.result) == {"found": True}
        assert calls == [task.id], "the handler ran once"

    try:
        run_async(main)
    finally:
        cluster.stop()


def test_a_rolling_restart_of_both_replicas_moves_the_workers_tasks_twice(kind: str) -> None:
    cluster = Cluster()

    async def main() -> None:
        release = asyncio.Event()
        calls: list[str] = []

        async def handler(ctx: AsyncTaskContext) -> dict[str, str]:
            calls.append(ctx.task.id)
            await ctx.checkpoint({"started": True}, 0.1)
            await asyncio.wait_for(release.wait(), 3 * PATIENCE)
            return {"task": ctx.task.id}

        def replica(replica_id: str) -> Reinsd:
            return cluster.a if replica_id == "a" else cluster.b

        channel = grpc.aio.insecure_channel(both(cluster), options=BALANCED)
        async with serving(
            channel,  # type: ignore[arg-type]
            [kind],
            handler,
            max_concurrency=4,
        ) as worker:
            async with AsyncClient(cluster.a.address) as via_a:
                ids = [(await via_a.start(kind)).id for _ in range(4)]
                running = [
                    await until_async(via_a, i, lambda t: len(t.partial_results) == 1, "running")
                    for i in ids
                ]
            owner = running[0].owner
            assert {task.owner for task in running} == {owner}, "one worker, one owner"
            for _ in range(2):  # drain the owner, restart it; then the other one
                drained = replica(owner)
                other = cluster.b if drained is cluster.a else cluster.a
                drain(drained)
                async with AsyncClient(other.address) as client:
                    for task_id in ids:
                        await until_async(
                            client,
                            task_id,
                            lambda t, to=other.replica_id: t.owner == to,
                            "moved",
                        )
                code = await asyncio.get_running_loop().run_in_executor(
                    None, drained.process.wait, PATIENCE
                )
                assert code == 0, "the drained replica exits once idle"
                drained.restart()
                owner = other.replica_id
            release.set()
            async with AsyncClient(cluster.a.address) as client:
                done = [await done_async(client, task_id) for task_id in ids]
            assert worker.connections == 3, "welcomed once, then after each move"
        await channel.close(None)
        for task, first in zip(done, running, strict=True):
            assert task.state == tasks_pb2.TASK_STATE_COMPLETED, task
            assert task.attempt == first.attempt, "no task was restarted"
            assert from_value(task.result) == {"task": task.id}
        assert sorted(calls) == sorted(ids), "each handler ran once"

    try:
        run_async(main)
    finally:
        cluster.stop()
