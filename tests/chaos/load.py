"""The load of a chaos run: tasks started at a steady rate through random replicas, each
watched from its start to its end (resuming with ``after_version`` through any replica
when a stream breaks or goes quiet), its questions answered, some of them cancelled
softly or hard, and sessions and batches of them cancelled in bulk (CancelTasks).
Everything a client is told is recorded in the tasks' :class:`~history.TaskHistory`.

Calls that fail with a transient status (the replica is killed, stopped or cut off; Redis
restarts) are tried again through another replica; StartTask carries a ``request_id``,
so a retry never starts a second task.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import grpc
from reins import ReinsError
from reins.aio import AsyncClient
from reins.proto import tasks_pb2

from history import CancelAck, CancelCall, Plan, TaskHistory, Version

T = TypeVar("T")

#: Statuses after which the same call is tried again (through another replica).
TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    }
)
#: Seconds each unary call may take (a stopped replica answers nothing).
CALL_TIMEOUT = 4.0
#: How long a call keeps being retried before it counts as failed (not acknowledged).
RETRY_FOR = 60.0
#: A watch with no event for this long is closed and resumed through another replica.
WATCH_QUIET = 5.0
#: Tasks per session and per ``batch`` label: the units of bulk cancels.
SESSION_SIZE = 20
BATCH_SIZE = 25
#: Channel options: reconnect to a restarted replica quickly.
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


class Clients:
    """One client per replica; calls go through a random one."""

    def __init__(self, addresses: Sequence[str], rng: random.Random) -> None:
        self.by_address = {
            address: AsyncClient(address, timeout=CALL_TIMEOUT, channel_options=CHANNEL_OPTIONS)
            for address in addresses
        }
        self._rng = rng
        self.errors: Counter[str] = Counter()

    def pick(self) -> AsyncClient:
        return self._rng.choice(list(self.by_address.values()))

    async def close(self) -> None:
        for client in self.by_address.values():
            await client.close()

    async def call(
        self,
        what: str,
        call: Callable[[AsyncClient], Awaitable[T]],
        retry_for: float = RETRY_FOR,
    ) -> T:
        """``call`` through random replicas until it is answered, a non-transient error,
        or ``retry_for`` seconds (then the last error)."""
        deadline = time.monotonic() + retry_for
        delay = 0.05
        while True:
            try:
                return await call(self.pick())
            except ReinsError as err:
                self.errors[f"{what} {err.code().name}"] += 1
                if err.code() not in TRANSIENT or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(self._rng.uniform(delay / 2, delay))
            delay = min(delay * 2, 1.0)


def draw_plan(rng: random.Random, session: str, batch: str, long_ok: bool) -> Plan:
    """One task's kind, params and fate. The mix: mostly worker tasks of a few short
    steps; some long ones (several leases, so that faults hit them mid-run), questions,
    planned failures, budgets that run out, soft and hard cancels, retried attempts."""
    kind = "sleep" if rng.random() < 0.15 else "chaos"
    steps, step_ms = rng.randint(1, 8), rng.randint(20, 150)
    if kind == "chaos" and long_ok and rng.random() < 0.08:
        steps, step_ms = rng.randint(40, 60), 250
    params: dict[str, Any] = {"steps": steps, "step_ms": step_ms}
    budget: tuple[str, float, float] | None = None
    asks = rng.random() < 0.2
    if kind == "chaos":
        if asks:
            params["ask_at"] = rng.randint(1, steps)
        if rng.random() < 0.04:
            params["fail_at"] = rng.randint(1, steps)
        if steps >= 3 and rng.random() < 0.1:
            params["spend"] = 10
            budget = ("tokens", 10.0 * rng.randint(1, steps - 1) + 5, 10.0)
    else:
        if asks:
            params["ask"] = "Which colour?"
        if steps >= 2 and rng.random() < 0.1:
            budget = ("steps", float(rng.randint(1, steps - 1)), 1.0)
    roll = rng.random()
    cancel_after = None
    if roll < 0.2:
        cancel_after = rng.uniform(0, steps * step_ms / 1000 * 1.2)
    return Plan(
        kind=kind,
        params=params,
        max_attempts=rng.choice([1, 2, 3]),
        budget=budget,
        cancel_after=cancel_after,
        hard=roll < 0.08,
        cancel_question=asks and rng.random() < 0.3,
        session=session,
        batch=batch,
    )


def follow(history: TaskHistory, version: Version) -> None:
    """Adds the next version a watch delivered to the task's history, noting a version
    skipped, one seen twice (not added again) or any after a terminal one."""
    last = history.last
    assert last is not None
    if last.terminal:
        history.watch_faults.append(
            f"version {version.version} ({version.state}) after terminal version {last.version}"
        )
    elif version.version <= last.version:
        history.watch_faults.append(f"version {version.version} again (last was {last.version})")
        return
    elif version.version != last.version + 1:
        history.watch_faults.append(f"gap: version {version.version} after {last.version}")
    history.versions.append(version)


class Load:
    """Starts ``tasks`` tasks spread over ``duration`` seconds, at most ``in_flight`` at
    once, and follows each to its end."""

    def __init__(self, clients: Clients, rng: random.Random, seed: int) -> None:
        self.clients = clients
        self.rng = rng
        self.seed = seed
        self.histories: list[TaskHistory] = []
        self.by_id: dict[str, TaskHistory] = {}
        self.bulk_cancels: Counter[str] = Counter()
        self.starts_refused = 0
        self._session = 0
        self._cancels = 0
        self._lives: set[asyncio.Task[None]] = set()

    # -- sessions and batches: the units of bulk cancels -------------------------------

    def session_name(self, index: int) -> str:
        return f"s{self.seed}-{index}"

    def _next_session(self) -> str:
        self._session += 1
        return self.session_name(self._session)

    def _reason(self, what: str) -> str:
        self._cancels += 1
        return f"chaos {what} {self._cancels}"

    # -- the run -----------------------------------------------------------------------

    async def run(self, tasks: int, duration: float, in_flight: int, stop: asyncio.Event) -> None:
        places = asyncio.Semaphore(in_flight)
        bulk = asyncio.ensure_future(self._bulk_cancels(duration, tasks, stop))
        began = time.monotonic()
        try:
            for number in range(tasks):
                due = began + duration * number / tasks
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                await places.acquire()
                if stop.is_set():
                    places.release()
                    break
                if number % SESSION_SIZE == 0 and number:
                    self._session += 1
                session = self.session_name(self._session)
                batch = f"b{self.seed}-{number // BATCH_SIZE}"
                long_ok = number < tasks * 0.85
                plan = draw_plan(self.rng, session, batch, long_ok)
                history = TaskHistory(number, plan, f"chaos-{self.seed}-{number}")
                self.histories.append(history)
                life = asyncio.ensure_future(self._life(history))
                self._lives.add(life)
                life.add_done_callback(self._lives.discard)
                life.add_done_callback(lambda _: places.release())
            if self._lives:
                await asyncio.wait(set(self._lives))
        finally:
            bulk.cancel()
            for life in list(self._lives):
                life.cancel()
            await asyncio.gather(bulk, *self._lives, return_exceptions=True)

    async def _life(self, history: TaskHistory) -> None:
        if not await self._start(history):
            return
        helpers: list[asyncio.Task[None]] = []
        plan = history.plan
        if plan.cancel_after is not None and not plan.cancel_question:
            helpers.append(asyncio.ensure_future(self._cancel_later(history, plan.cancel_after)))
        try:
            await self._follow(history, helpers)
        finally:
            for helper in helpers:
                if not helper.done() and (history.last is None or history.last.terminal):
                    helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    async def _start(self, history: TaskHistory) -> bool:
        plan = history.plan
        for refusal in range(5):
            request_id = history.request_id + (f"-{refusal}" if refusal else "")
            try:
                task = await self._start_as(plan, request_id)
            except ReinsError as err:
                if err.reason == "SESSION_CANCELLED":
                    # Its session was cancelled in bulk meanwhile: a new session, and a new
                    # request id (the refused start created nothing).
                    plan.session = self._next_session()
                    continue
                self.starts_refused += 1
                return False
            history.request_id = request_id
            history.id = task.id
            history.started_at = time.time()
            history.versions.append(Version.of(task, history.started_at))
            self.by_id[task.id] = history
            return True
        self.starts_refused += 1
        return False

    async def _start_as(self, plan: Plan, request_id: str) -> tasks_pb2.Task:
        budget = {plan.budget[0]: plan.budget[1]} if plan.budget else None
        return await self.clients.call(
            "StartTask",
            lambda client: client.start(
                plan.kind,
                plan.params,
                session_id=plan.session,
                labels={"batch": plan.batch},
                request_id=request_id,
                max_attempts=plan.max_attempts,
                budget=budget,
            ),
        )

    async def _follow(self, history: TaskHistory, helpers: list[asyncio.Task[None]]) -> None:
        """Watches the task until its terminal state, resuming after the last version
        seen; checks that each version is the one after the last."""
        answered: set[int] = set()
        while history.last is not None and not history.last.terminal:
            history.streams += 1
            after = history.last.version
            client = self.clients.pick()
            events = cast(
                AsyncGenerator[tasks_pb2.TaskEvent, None],
                client.watch(history.id, after_version=after),
            )
            try:
                async with contextlib.aclosing(events):
                    while True:
                        event = await asyncio.wait_for(anext(events), WATCH_QUIET)
                        follow(history, Version.of(event.task, event.time.ToNanoseconds() / 1e9))
                        last = history.last
                        if last.state == tasks_pb2.TASK_STATE_WAITING_FOR_ANSWER and (
                            last.attempt not in answered
                        ):
                            answered.add(last.attempt)
                            helpers.append(asyncio.ensure_future(self._on_question(history)))
                        if last.terminal:
                            break
            except (asyncio.TimeoutError, StopAsyncIteration):
                pass  # quiet, or the stream ended: resume
            except ReinsError as err:
                self.clients.errors[f"WatchTask {err.code().name}"] += 1
                if err.code() not in TRANSIENT:
                    history.watch_faults.append(f"watch after {after} failed: {err}")
                    await asyncio.sleep(0.5)
            # A terminal event ends the stream; anything after it would be a change of a
            # finished task, which the final reads catch.

    async def _on_question(self, history: TaskHistory) -> None:
        """Answers a question (after a moment), or cancels the task instead."""
        if history.plan.cancel_question:
            await self._cancel(history)
            return
        await asyncio.sleep(self.rng.uniform(0, 0.3))
        assert history.last is not None
        answer = f"answer {history.number}.{history.last.attempt}.{len(history.answers_sent)}"
        history.answers_sent.append(answer)
        try:
            await self.clients.call("AnswerTask", lambda c: c.answer(history.id, answer))
        except ReinsError:
            return  # not waiting any more (cancelled, lost, answered by a retry) or failed
        history.answers_acked.append(answer)

    async def _cancel_later(self, history: TaskHistory, after: float) -> None:
        await asyncio.sleep(after)
        await self._cancel(history)

    async def _cancel(self, history: TaskHistory) -> None:
        hard = history.plan.hard
        reason = self._reason("hard" if hard else "soft")
        grace = self.rng.uniform(0.5, 3.0)

        def cancel(client: AsyncClient) -> Awaitable[tasks_pb2.CancelResponse]:
            if hard:
                return client.hard_cancel(history.id, reason)
            return client.soft_cancel(history.id, reason, grace=grace)

        try:
            answer = await self.clients.call("Cancel", cancel)
        except ReinsError:
            return  # never acknowledged
        outcome = tasks_pb2.CancelOutcome.Name(answer.outcome)
        call = CancelCall.HARD if hard else CancelCall.SOFT
        history.cancels.append(CancelAck(call, reason, outcome, time.time()))

    async def _bulk_cancels(self, duration: float, tasks: int, stop: asyncio.Event) -> None:
        """About one bulk cancel per two sessions' worth of tasks: a whole session (which
        also refuses its later starts) or a batch label, softly or hard."""
        every = duration * 2 * SESSION_SIZE / max(tasks, 1)
        while not stop.is_set():
            await asyncio.sleep(self.rng.uniform(every / 2, every * 1.5))
            hard = self.rng.random() < 0.4
            by_session = self.rng.random() < 0.5
            if by_session:
                session = self.session_name(max(0, self._session - self.rng.randint(0, 1)))
                if session == self.session_name(self._session):
                    self._session += 1  # later tasks go to a session nobody cancelled
                filters: dict[str, Any] = {"session_id": session}
            else:
                recent = [h.plan.batch for h in self.histories[-2 * BATCH_SIZE :]]
                if not recent:
                    continue
                filters = {"labels": {"batch": self.rng.choice(recent)}}
            await self._bulk_cancel(hard, filters)

    async def _bulk_cancel(self, hard: bool, filters: dict[str, Any]) -> None:
        reason = self._reason("bulk")
        try:
            answer = await self.clients.call(
                "CancelTasks",
                lambda c: c.cancel_tasks(
                    hard=hard, reason=reason, grace=None if hard else 1.0, **filters
                ),
            )
        except ReinsError:
            return  # never acknowledged
        call = CancelCall.BULK_HARD if hard else CancelCall.BULK_SOFT
        self.bulk_cancels[call.value] += 1
        now = time.time()
        for task_id in answer.task_ids:
            listed = self.by_id.get(task_id)
            if listed is not None:
                listed.cancels.append(CancelAck(call, reason, "", now))
