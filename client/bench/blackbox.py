#!/usr/bin/env python3
"""Black-box benchmark of Reins from Python: what a Python service calling it sees.

Plain ``grpc.aio`` calls on the generated ``reins.v1`` stubs (the package of
``client/python`` supplies them; none of its client code is used), against one or two
replicas on one store. ``client/bench/run.sh --blackbox`` starts redis-server and
replicas a and b and runs this with ``--server a=URL --server b=URL``. Measures, in order:

- **dispatch**: StartTask of a ``sleep`` task of 0 steps through replica A until the task
  is seen started (in the response, or else the first WatchTask event showing
  ``started_at``), one at a time; also ``started_at - created_at`` as the server recorded it;
- **hard-cancel** and **soft-cancel**: an ``exec`` task running ``heartbeat.py`` (a beat
  every ~1 ms, see that file) is started through A; once it beats, HardCancel or SoftCancel
  goes through the replica that does **not** own it; stop = last beat - the time just
  before the call (the code stopped between its last beat and the next one due). The
  heartbeat tasks are started ``--batch`` at a time and cancelled one after the other;
- **throughput**: ``--in-flight`` coroutines, each starting a short task through the
  replicas in turn and following it to COMPLETED, for ``--duration`` after a warm-up, two
  ways: StartTask then WatchTask from the returned version, and one RunTask stream.

The replicas must run on this machine (the heartbeat files, ``/proc`` and the clock are
shared) with ``--allow-exec python3``. Prints one row per figure with p50/p90/p99/max in
milliseconds and the target it is held against; exits non-zero only if a part failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from google.protobuf import duration_pb2, struct_pb2

from reins.proto import tasks_pb2

SERVICE = "/reins.v1.TaskService/"
HEARTBEAT = (Path(__file__).resolve().parent / "heartbeat.py").read_text()
#: How long a task may take to reach an awaited state, or a heartbeat to start or stop.
PATIENCE = 30.0
#: A soft cancel's grace: long enough that escalation never is what stops the code.
SOFT_GRACE_SECONDS = 10
TERMINAL = (
    tasks_pb2.TASK_STATE_COMPLETED,
    tasks_pb2.TASK_STATE_FAILED,
    tasks_pb2.TASK_STATE_CANCELLED,
)

TARGET_DISPATCH_P50_MS = 1.3
TARGET_STOP_P99_MS = 0.7
TARGET_RATE = 4500.0


def unary(channel: grpc.aio.Channel, method: str, response: Any) -> Any:
    return channel.unary_unary(
        SERVICE + method,
        request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=response.FromString,
    )


def streaming(channel: grpc.aio.Channel, method: str) -> Any:
    return channel.unary_stream(
        SERVICE + method,
        request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=tasks_pb2.TaskEvent.FromString,
    )


class Replica:
    """One replica: its id (from ``ID=URL``) and the calls, over a few channels in turn."""

    CHANNELS = 2

    def __init__(self, spec: str) -> None:
        replica, _, url = spec.rpartition("=")
        self.id = replica or None
        self.address = url.split("://", 1)[-1].rstrip("/")
        self.name = self.id or self.address
        # A channel of its own per object (no shared subchannel): one TCP connection each.
        options = [("grpc.use_local_subchannel_pool", 1)]
        self.channels = [
            grpc.aio.insecure_channel(self.address, options=options) for _ in range(self.CHANNELS)
        ]
        self._calls = [self._bind(channel) for channel in self.channels]
        self._next = 0

    @staticmethod
    def _bind(channel: grpc.aio.Channel) -> dict[str, Any]:
        return {
            "start": unary(channel, "StartTask", tasks_pb2.Task),
            "hard": unary(channel, "HardCancel", tasks_pb2.CancelResponse),
            "soft": unary(channel, "SoftCancel", tasks_pb2.CancelResponse),
            "watch": streaming(channel, "WatchTask"),
            "run": streaming(channel, "RunTask"),
        }

    def call(self, name: str) -> Any:
        self._next += 1
        return self._calls[self._next % len(self._calls)][name]

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close(None)


def request(kind: str, params: dict[str, Any]) -> tasks_pb2.StartTaskRequest:
    struct = struct_pb2.Struct()
    struct.update(params)
    return tasks_pb2.StartTaskRequest(kind=kind, params=struct, labels={"origin": "blackbox"})


def short_task() -> tasks_pb2.StartTaskRequest:
    return request("sleep", {"steps": 0, "step_ms": 0})


async def wait_for(
    replica: Replica, task: tasks_pb2.Task, reached: Callable[[tasks_pb2.Task], bool]
) -> tasks_pb2.Task:
    """``task`` once ``reached`` holds, watched from the version after ``task``'s."""
    if reached(task):
        return task

    async def watch() -> tasks_pb2.Task:
        events = replica.call("watch")(
            tasks_pb2.WatchTaskRequest(
                task_id=task.id, after_version=task.version, view=tasks_pb2.TASK_VIEW_BASIC
            )
        )
        async for event in events:
            seen: tasks_pb2.Task = event.task
            if reached(seen):
                events.cancel()
                return seen
        raise RuntimeError(f"the watch of task {task.id} ended before the awaited state")

    return await asyncio.wait_for(watch(), PATIENCE)


def started(task: tasks_pb2.Task) -> bool:
    return task.HasField("started_at")


def terminal(task: tasks_pb2.Task) -> bool:
    return task.state in TERMINAL


def nanos(timestamp: Any) -> int:
    return int(timestamp.seconds) * 1_000_000_000 + int(timestamp.nanos)


@dataclass
class Row:
    part: str
    metric: str
    samples_ms: list[float] = field(default_factory=list)
    errors: int = 0
    rate: float | None = None
    target: str = ""
    met: bool | None = None

    def quantile(self, q: float) -> float:
        ordered = sorted(self.samples_ms)
        return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))]

    def format(self) -> str:
        count = len(self.samples_ms)
        figures = (
            " ".join(f"{self.quantile(q):>9.3f}" for q in (0.5, 0.9, 0.99))
            + f" {max(self.samples_ms):>9.3f}"
            if count
            else " ".join(f"{'-':>9}" for _ in range(4))
        )
        rate = f"{self.rate:>9.1f}" if self.rate is not None else f"{'-':>9}"
        verdict = "" if self.met is None else (" ok" if self.met else " MISSED")
        return (
            f"{self.part:<12} {self.metric:<36} {count:>6} {self.errors:>4} {figures} {rate}"
            f"  {self.target}{verdict}"
        )


HEADER = (
    f"{'part':<12} {'metric':<36} {'count':>6} {'err':>4} {'p50 ms':>9} {'p90 ms':>9}"
    f" {'p99 ms':>9} {'max ms':>9} {'rate/s':>9}  target"
)


def held(row: Row, q: float, limit_ms: float) -> Row:
    """``row`` held against quantile ``q`` (0.5 or 0.99) at most ``limit_ms``."""
    row.target = f"p{round(q * 100)}<={limit_ms}ms"
    row.met = bool(row.samples_ms) and row.quantile(q) <= limit_ms
    return row


async def dispatch(replicas: Sequence[Replica], count: int) -> list[Row]:
    seen = Row("dispatch", "client: call -> RUNNING seen")
    recorded = Row("dispatch", "server: started_at - created_at")
    origin = replicas[0]
    for _ in range(count):
        began = time.perf_counter_ns()
        try:
            task = await origin.call("start")(short_task())
            task = await wait_for(origin, task, started)
        except (grpc.aio.AioRpcError, RuntimeError, asyncio.TimeoutError) as err:
            seen.errors += 1
            recorded.errors += 1
            note(f"dispatch: {err}")
            continue
        seen.samples_ms.append((time.perf_counter_ns() - began) / 1e6)
        recorded.samples_ms.append(max(0, nanos(task.started_at) - nanos(task.created_at)) / 1e6)
    return [held(seen, 0.5, TARGET_DISPATCH_P50_MS), recorded]


@dataclass
class Beat:
    pid: int
    previous: int
    at: int


class Heartbeat:
    """The file one heartbeat task writes, and the task."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.unlink(missing_ok=True)

    def params(self) -> tasks_pb2.StartTaskRequest:
        # -S: no `site` import, which is most of the interpreter's start.
        return request("exec", {"argv": ["python3", "-S", "-c", HEARTBEAT, str(self.path)]})

    def read(self) -> Beat | None:
        try:
            fields = self.path.read_text().split()
        except FileNotFoundError:
            return None
        if len(fields) != 3:
            return None
        return Beat(int(fields[0]), int(fields[1]), int(fields[2]))

    async def beating(self) -> Beat:
        """Two different beats in a row: the loop runs."""
        first = None
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            beat = self.read()
            if beat is not None and first is not None and beat != first:
                return beat
            first = beat
            await asyncio.sleep(0.001)
        raise RuntimeError(f"{self.path} did not start beating")

    async def stopped(self, pid: int) -> Beat:
        """The last beat, once the process is gone."""
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            if exited(pid):
                beat = self.read()
                if beat is not None:
                    return beat
            await asyncio.sleep(0.001)
        raise RuntimeError(f"the heartbeat process {pid} did not stop")


def exited(pid: int) -> bool:
    """Gone, or a zombie not yet reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rpartition(")")[2].split()[:1] in (["Z"], ["X"], [])


def other_than(replicas: Sequence[Replica], owner: str) -> tuple[Replica, bool]:
    """A replica to cancel through: one that does not own the task, when there is one."""
    for replica in replicas:
        if replica.id is not None and replica.id != owner:
            return replica, True
    return replicas[-1], False


async def cancels(
    replicas: Sequence[Replica], mode: str, rounds: int, batch: int, scratch: Path
) -> list[Row]:
    stop = Row(f"{mode}-cancel", "stop: last beat - cancel call")
    bound = Row(f"{mode}-cancel", "stop, bound: next beat due - call")
    rpc = Row(f"{mode}-cancel", f"{mode.capitalize()}Cancel RPC")
    rows = (stop, bound, rpc)
    origin = replicas[0]
    across = 0
    done = 0
    while done < rounds:
        size = min(batch, rounds - done)
        beats = [Heartbeat(scratch / f"{mode}-{done + n}") for n in range(size)]
        done += size
        prepared = await asyncio.gather(
            *(prepare(origin, heartbeat) for heartbeat in beats), return_exceptions=True
        )
        for heartbeat, ready in zip(beats, prepared, strict=True):
            try:
                if isinstance(ready, BaseException):
                    raise ready
                task, beat = ready
                canceller, elsewhere = other_than(replicas, task.owner)
                called_at = time.time_ns()
                began = time.perf_counter_ns()
                if mode == "hard":
                    response = await canceller.call("hard")(
                        tasks_pb2.HardCancelRequest(task_id=task.id, reason="blackbox")
                    )
                else:
                    response = await canceller.call("soft")(
                        tasks_pb2.SoftCancelRequest(
                            task_id=task.id,
                            reason="blackbox",
                            grace_period=duration_pb2.Duration(seconds=SOFT_GRACE_SECONDS),
                        )
                    )
                rpc_ms = (time.perf_counter_ns() - began) / 1e6
                ended = await wait_for(canceller, response.task, terminal)
                if ended.state != tasks_pb2.TASK_STATE_CANCELLED:
                    raise RuntimeError(f"task {task.id} ended {ended.state}, not CANCELLED")
                last = await heartbeat.stopped(beat.pid)
            except (grpc.aio.AioRpcError, RuntimeError, asyncio.TimeoutError) as err:
                for row in rows:
                    row.errors += 1
                note(f"{mode}-cancel: {err}")
                continue
            finally:
                heartbeat.path.unlink(missing_ok=True)
            stop.samples_ms.append(max(0, last.at - called_at) / 1e6)
            bound.samples_ms.append(max(0, 2 * last.at - last.previous - called_at) / 1e6)
            rpc.samples_ms.append(rpc_ms)
            across += elsewhere
    measured = len(stop.samples_ms)
    note(f"{mode}-cancel: through a replica other than the owner in {across}/{measured}")
    return [held(stop, 0.99, TARGET_STOP_P99_MS), held(bound, 0.99, TARGET_STOP_P99_MS), rpc]


async def prepare(origin: Replica, heartbeat: Heartbeat) -> tuple[tasks_pb2.Task, Beat]:
    """A heartbeat task started through ``origin``, running and beating."""
    task = await origin.call("start")(heartbeat.params())
    try:
        task = await wait_for(origin, task, started)
        return task, await heartbeat.beating()
    except BaseException:
        await origin.call("hard")(tasks_pb2.HardCancelRequest(task_id=task.id, reason="failed"))
        raise


async def throughput(
    replicas: Sequence[Replica], in_flight: int, duration: float, warmup: float, way: str
) -> Row:
    """Short tasks start -> COMPLETED, ``in_flight`` at once, ``way`` "watch" or "run"."""
    metric = (
        f"StartTask+WatchTask, {in_flight} in flight"
        if way == "watch"
        else f"RunTask stream, {in_flight} in flight"
    )
    row = Row("throughput", metric)
    began = time.monotonic()
    measure_from, until = began + warmup, began + warmup + duration
    last_end = measure_from
    sequence = 0

    async def one(replica: Replica) -> tasks_pb2.Task:
        if way == "watch":
            task = await replica.call("start")(short_task())
            return await wait_for(replica, task, terminal)
        events: AsyncIterator[tasks_pb2.TaskEvent] = replica.call("run")(
            tasks_pb2.RunTaskRequest(task=short_task())
        )
        async for event in events:
            if terminal(event.task):
                return event.task
        raise RuntimeError("RunTask ended before the task did")

    async def loop() -> None:
        nonlocal sequence, last_end
        while (start := time.monotonic()) < until:
            sequence += 1
            replica = replicas[sequence % len(replicas)]
            try:
                task = await one(replica)
                ok = task.state == tasks_pb2.TASK_STATE_COMPLETED
            except (grpc.aio.AioRpcError, RuntimeError, asyncio.TimeoutError) as err:
                ok = False
                if row.errors < 3:
                    note(f"throughput: {err}")
            if start < measure_from:
                continue
            last_end = time.monotonic()
            if ok:
                row.samples_ms.append((last_end - start) * 1e3)
            else:
                row.errors += 1

    cpu_from = time.process_time()
    await asyncio.gather(*(loop() for _ in range(in_flight)))
    busy = (time.process_time() - cpu_from) / max(time.monotonic() - began, 1e-9)
    note(f"throughput ({way}): this client used {busy * 100:.0f} % of a core")
    row.rate = len(row.samples_ms) / max(last_end - measure_from, 1e-9)
    row.target, row.met = f">={TARGET_RATE:.0f}/s", row.rate >= TARGET_RATE
    return row


def note(text: str) -> None:
    print(f"  {text}", file=sys.stderr, flush=True)


async def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--server",
        action="append",
        required=True,
        metavar="[ID=]URL",
        help="a replica; the first is replica A (repeat; give ids to cancel across replicas)",
    )
    parser.add_argument("--dispatches", type=int, default=500, help="dispatches measured")
    parser.add_argument("--rounds", type=int, default=150, help="cancels measured per mode")
    parser.add_argument("--batch", type=int, default=10, help="heartbeat tasks started at once")
    parser.add_argument("--in-flight", type=int, default=128, help="tasks in flight (throughput)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each throughput")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    parser.add_argument(
        "--part",
        action="append",
        choices=["dispatch", "hard-cancel", "soft-cancel", "throughput"],
        help="a part to run (repeat); default: all, in this order",
    )
    args = parser.parse_args(argv)
    parts = args.part or ["dispatch", "hard-cancel", "soft-cancel", "throughput"]
    replicas = [Replica(spec) for spec in args.server]
    rows: list[Row] = []
    failed = 0
    try:
        with tempfile.TemporaryDirectory(prefix="reins-blackbox-") as scratch:
            for part in parts:
                print(f"== {part}", file=sys.stderr, flush=True)
                try:
                    if part == "dispatch":
                        rows += await dispatch(replicas, args.dispatches)
                    elif part == "throughput":
                        for way in ("watch", "run"):
                            rows.append(
                                await throughput(
                                    replicas, args.in_flight, args.duration, args.warmup, way
                                )
                            )
                    else:
                        mode = part.removesuffix("-cancel")
                        rows += await cancels(
                            replicas, mode, args.rounds, args.batch, Path(scratch)
                        )
                except (grpc.aio.AioRpcError, RuntimeError, OSError) as err:
                    failed += 1
                    note(f"{part} FAILED: {err}")
    finally:
        for replica in replicas:
            await replica.close()
    print(HEADER)
    for row in rows:
        print(row.format())
    print(
        f"  * python {sys.version.split()[0]}, grpcio {grpc.__version__}, one asyncio process; "
        f"load average {' '.join(f'{load:.2f}' for load in os.getloadavg())}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
