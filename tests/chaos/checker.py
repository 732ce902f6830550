"""The checks of a chaos run, over everything the clients saw and the workers logged.

1. **One end.** Every task is in a terminal state, the same one (and version) on every
   replica, and it is the terminal version its watch saw.
2. **No terminal state overwritten, no watch gap.** Each watch saw versions one by one,
   across streams resumed with ``after_version``: no version skipped, none twice, none
   after a terminal one.
3. **Acknowledged cancels took effect.** A task a client saw a cancel answered for ended
   CANCELLED; or it had finished before the cancel was recorded (ALREADY_FINISHED, or a
   bulk cancel that listed it and then found it finished: its cancel is not in the
   record); or its
   code finished without having seen a soft cancel (the documented race: a completion
   wins over a soft cancel the code never saw). An acknowledged cancel missing from the
   final record, or a hard cancel's task not CANCELLED, is a violation.
4. **Fencing.** Every progress report a version holds comes from the worker and attempt
   the version names (no write of a fenced run accepted); attempts never go back; no
   report or checkpoint was recorded twice; a completed task's result comes from its last
   attempt. And every run of a task's code ended soon (``slack``) after the store ended
   its attempt (requeued, started again, or finished) — counted from when the run's
   replica could know: after the end of any fault that cut it off (stopped, partitioned,
   killed) or took Redis away. Runs that overlapped a later attempt are counted.
5. **Budgets.** At most one report crossed a limit, and the usage never exceeded the limit
   by a whole report (the chaos worker sends no report once told nothing is left, and one
   at a time).
6. **Answers.** A completed task's answer is one a client sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

from reins import ReinsError
from reins.aio import AsyncClient
from reins.proto import tasks_pb2

from history import CancelCall, Fault, Run, TaskHistory, Version, state_name
from load import CHANNEL_OPTIONS, TRANSIENT

CANCELLED = tasks_pb2.TASK_STATE_CANCELLED
COMPLETED = tasks_pb2.TASK_STATE_COMPLETED
PENDING = tasks_pb2.TASK_STATE_PENDING
#: Faults that keep a replica from learning what the store decided.
CUT_OFF = frozenset({"kill", "stop", "partition"})
WORKER_FAULTS = frozenset({"worker-drop", "worker-kill"})


async def read_finals(
    addresses: dict[str, str], histories: Sequence[TaskHistory], concurrency: int = 64
) -> None:
    """Reads every task through every replica (``name → address``) into ``final``."""
    clients = {
        name: AsyncClient(address, timeout=10.0, channel_options=CHANNEL_OPTIONS)
        for name, address in addresses.items()
    }
    places = asyncio.Semaphore(concurrency)

    async def read(history: TaskHistory, name: str, client: AsyncClient) -> None:
        async with places:
            for _ in range(10):
                try:
                    task = await client.check(history.id)
                except ReinsError as err:
                    if err.code() in TRANSIENT:
                        await asyncio.sleep(0.5)
                        continue
                    return
                history.final[name] = Version.of(task, time.time(), checkpoints=True)
                return

    try:
        await asyncio.gather(
            *(
                read(history, name, client)
                for history in histories
                if history.id
                for name, client in clients.items()
            )
        )
    finally:
        for client in clients.values():
            await client.close()


@dataclasses.dataclass
class Verdict:
    violations: list[str] = dataclasses.field(default_factory=list)
    #: The tasks with a violation (their whole history goes into the work directory).
    violated: list[TaskHistory] = dataclasses.field(default_factory=list)
    stats: Counter[str] = dataclasses.field(default_factory=Counter)
    #: The longest a run of a task overlapped a later attempt's run, and which.
    longest_overlap: tuple[float, str] = (0.0, "")

    def violation(self, history: TaskHistory, what: str) -> None:
        self.violations.append(f"task {history.id} (#{history.number}): {what}")
        if not self.violated or self.violated[-1] is not history:
            self.violated.append(history)


def check(
    histories: Sequence[TaskHistory],
    runs: Iterable[Run],
    faults: Sequence[Fault],
    replicas: Sequence[str],
    slack: float,
) -> Verdict:
    verdict = Verdict()
    runs_of: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        runs_of[run.task].append(run)
    for history in histories:
        if not history.id:
            verdict.stats["starts never acknowledged"] += 1
            continue
        verdict.stats["tasks"] += 1
        final = _one_end(verdict, history, replicas)
        for fault in history.watch_faults:
            verdict.violation(history, f"watch: {fault}")
        verdict.stats["watch streams"] += history.streams
        if final is None:
            continue
        verdict.stats[f"ended {state_name(final.state)}"] += 1
        task_runs = sorted(runs_of.get(history.id, []), key=lambda r: (r.attempt, r.start))
        _cancels(verdict, history, final, task_runs)
        if history.plan.kind == "chaos":
            _fenced_reports(verdict, history, final)
            _runs_stopped(verdict, history, task_runs, faults, slack)
        _budget(verdict, history, final)
        _answer(verdict, history, final)
    return verdict


def _one_end(verdict: Verdict, history: TaskHistory, replicas: Sequence[str]) -> Version | None:
    finals = [history.final.get(name) for name in replicas]
    seen = {(v.state, v.version) for v in finals if v is not None}
    if any(v is None for v in finals):
        missing = [name for name, v in zip(replicas, finals, strict=True) if v is None]
        verdict.violation(history, f"could not be read through {', '.join(missing)}")
        return None
    if len(seen) != 1:
        verdict.violation(history, f"replicas disagree: {_states(history)}")
        return None
    final = next(v for v in finals if v is not None)
    if not final.terminal:
        verdict.violation(history, f"never ended: {_states(history)}")
        return None
    watched = next((v for v in history.versions if v.terminal), None)
    if watched is not None and (watched.version, watched.state) != (final.version, final.state):
        verdict.violation(
            history,
            f"terminal state overwritten: watched {state_name(watched.state)} at version "
            f"{watched.version}, now {state_name(final.state)} at version {final.version}",
        )
    return final


def _states(history: TaskHistory) -> str:
    return ", ".join(
        f"{name} {state_name(v.state)}@{v.version}" for name, v in sorted(history.final.items())
    )


def _cancels(
    verdict: Verdict, history: TaskHistory, final: Version, task_runs: Sequence[Run]
) -> None:
    for ack in history.cancels:
        verdict.stats[f"cancels acknowledged ({ack.call.value})"] += 1
        if final.state == CANCELLED or ack.outcome == "CANCEL_OUTCOME_ALREADY_FINISHED":
            continue
        said = f"{ack.call.value} cancel {ack.reason!r} answered {ack.outcome or 'listed'}"
        # A bulk cancel lists the tasks active when it starts and then cancels each: one
        # that had finished by then records nothing (a hard one would have ended the task;
        # a soft one after another soft cancel is that cancel again).
        unrecorded = final.cancel_reason != ack.reason
        if (ack.call == CancelCall.BULK_HARD and unrecorded) or (
            ack.call == CancelCall.BULK_SOFT and final.cancel_mode == 0
        ):
            verdict.stats["bulk-listed tasks that had finished"] += 1
            continue
        if final.cancel_mode == 0:
            verdict.violation(
                history, f"{said}, but it ended {state_name(final.state)} with no cancel"
            )
        elif ack.call in (CancelCall.HARD, CancelCall.BULK_HARD) or ack.outcome in (
            "CANCEL_OUTCOME_CANCELLED",
            "CANCEL_OUTCOME_ALREADY_CANCELLED",
        ):
            verdict.violation(history, f"{said}, but it ended {state_name(final.state)}")
        elif final.cancel_mode == tasks_pb2.CANCEL_MODE_SOFT:
            # The race a completion (or failure) wins: only if the code never saw the cancel.
            last = [r for r in task_runs if r.attempt == final.attempt]
            if history.plan.kind == "sleep" or any(
                r.how in ("complete", "fail") and not r.cancel_seen for r in last
            ):
                verdict.stats["soft cancels a completion won"] += 1
            else:
                verdict.violation(
                    history,
                    f"{said}, but it ended {state_name(final.state)} though its code saw "
                    f"the cancel ({[(r.worker, r.how, r.cancel_seen) for r in last]})",
                )


def _fenced_reports(verdict: Verdict, history: TaskHistory, final: Version) -> None:
    applied: set[str] = set()
    versions = [*history.versions]
    if final.version > versions[-1].version:
        versions.append(final)
    for before, after in itertools.pairwise(versions):
        if after.attempt < before.attempt:
            verdict.violation(
                history, f"attempt went back from {before.attempt} to {after.attempt}"
            )
        if after.version != before.version + 1 or after.message == before.message:
            continue
        by, _, rest = after.message.partition("#")
        attempt = int(rest.split(":")[0]) if rest else -1
        if (by, attempt) != (after.worker, after.attempt):
            verdict.violation(
                history,
                f"version {after.version} holds the report {after.message!r} though the task "
                f"ran on {after.worker!r} in attempt {after.attempt}: a fenced write was taken",
            )
        if after.message in applied:
            verdict.violation(history, f"report {after.message!r} recorded twice")
        applied.add(after.message)
    if len(set(final.checkpoints)) != len(final.checkpoints):
        verdict.violation(
            history, f"a checkpoint recorded twice (one report stored twice): {final.checkpoints}"
        )
    if final.state == COMPLETED and isinstance(final.result, dict):
        if (final.result.get("by"), final.result.get("attempt")) != (final.worker, final.attempt):
            verdict.violation(
                history,
                f"completed with the result of {final.result.get('by')} attempt "
                f"{final.result.get('attempt')}, though attempt {final.attempt} ran on "
                f"{final.worker}",
            )


def _attempt_end(history: TaskHistory, attempt: int) -> tuple[float, str] | None:
    """When the store ended ``attempt`` (requeued, started again, or finished), and which
    replica owned it."""
    owner = ""
    for version in history.versions:
        if version.attempt < attempt:
            continue
        if version.attempt == attempt and not owner:
            owner = version.owner
        if version.attempt > attempt or version.state == PENDING or version.terminal:
            return version.time, owner
    return None


def _runs_stopped(
    verdict: Verdict,
    history: TaskHistory,
    task_runs: Sequence[Run],
    faults: Sequence[Fault],
    slack: float,
) -> None:
    for run in task_runs:
        verdict.stats["runs"] += 1
        ended = _attempt_end(history, run.attempt)
        if ended is None:
            continue
        fence, owner = ended
        # When the run's replica could know: after every fault that cut it (or its worker)
        # off from what the store decided, and that began before it could have known.
        known = fence
        for fault in sorted(faults, key=lambda f: f.start):
            cut_off = (
                (fault.kind in CUT_OFF and fault.target == owner)
                or fault.kind == "redis"
                or (fault.kind in WORKER_FAULTS and fault.target == run.process)
            )
            if cut_off and fault.start <= known + slack and fault.end >= run.start:
                known = max(known, fault.end)
        if run.end is None:
            verdict.violation(
                history, f"attempt {run.attempt} on {run.worker} still ran at the end"
            )
            continue
        if run.end > known + slack:
            verdict.violation(
                history,
                f"attempt {run.attempt} ran on {run.worker} (via {owner}) until "
                f"{run.end - fence:.1f} s after the store ended it "
                f"({run.end - known:.1f} s after {owner} could know; slack {slack:.1f} s)",
            )
        for later in task_runs:
            if later.attempt <= run.attempt:
                continue
            overlap = min(run.end, later.end or run.end) - max(run.start, later.start)
            if overlap > 0:
                verdict.stats["runs overlapping a later attempt"] += 1
                if overlap > verdict.longest_overlap[0]:
                    verdict.longest_overlap = (
                        overlap,
                        f"task {history.id} attempts {run.attempt}/{later.attempt}",
                    )


def _budget(verdict: Verdict, history: TaskHistory, final: Version) -> None:
    if history.plan.budget is None:
        return
    dimension, limit, per_report = history.plan.budget
    verdict.stats["budgeted tasks"] += 1
    versions = [*history.versions, final]
    crossings = sum(
        1
        for before, after in itertools.pairwise(versions)
        if before.usage.get(dimension, 0) < limit <= after.usage.get(dimension, 0)
    )
    if crossings > 1:
        verdict.violation(history, f"{crossings} reports crossed the {dimension} limit {limit}")
    spent = final.usage.get(dimension, 0)
    if spent >= limit:
        verdict.stats["budgets exhausted"] += 1
    if spent >= limit + per_report:
        verdict.violation(
            history,
            f"{dimension} {spent} of a budget of {limit}: exceeded by more than one report "
            f"(each spends {per_report})",
        )


def _answer(verdict: Verdict, history: TaskHistory, final: Version) -> None:
    if final.state != COMPLETED or not isinstance(final.result, dict):
        return
    answer = final.result.get("answer")
    if answer is None:
        return
    verdict.stats["answered tasks completed"] += 1
    if answer not in history.answers_sent:
        verdict.violation(history, f"completed with the answer {answer!r}, which nobody sent")
