"""What a chaos run records while it runs, for the checker to judge afterwards.

Times are wall-clock seconds since the epoch (``time.time()``): the replicas stamp watch
events with the same clock (one machine), the workers their runs.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from reins import from_value
from reins.proto import tasks_pb2

TERMINAL = frozenset(
    {
        tasks_pb2.TASK_STATE_COMPLETED,
        tasks_pb2.TASK_STATE_FAILED,
        tasks_pb2.TASK_STATE_CANCELLED,
    }
)


def state_name(state: int) -> str:
    return tasks_pb2.TaskState.Name(state).removeprefix("TASK_STATE_")


@dataclasses.dataclass(frozen=True)
class Version:
    """One version of a task as a watch saw it (or a final CheckTask read it)."""

    version: int
    state: int
    #: When the replica sent it (the watch event's time; for a CheckTask, when it was read).
    time: float
    owner: str
    attempt: int
    worker: str
    #: The progress message: the chaos worker writes ``worker#attempt:step`` into it.
    message: str
    usage: dict[str, float]
    cancel_mode: int
    cancel_reason: str
    budget_exhausted: str
    result: Any
    error: str
    #: ``(attempt, step)`` of each checkpoint kept, as the chaos worker writes them.
    checkpoints: tuple[tuple[int, int], ...]

    @staticmethod
    def of(task: tasks_pb2.Task, time: float, *, checkpoints: bool = False) -> Version:
        """``checkpoints``: read them too (only the final reads need them)."""
        kept: list[tuple[int, int]] = []
        for partial in task.partial_results if checkpoints else ():
            value = from_value(partial)
            if isinstance(value, dict) and "attempt" in value:
                kept.append((int(value["attempt"]), int(value["step"])))
        return Version(
            version=task.version,
            state=task.state,
            time=time,
            owner=task.owner,
            attempt=task.attempt,
            worker=task.worker,
            message=task.progress.message,
            usage=dict(task.usage),
            cancel_mode=task.cancel.mode if task.HasField("cancel") else 0,
            cancel_reason=task.cancel.reason if task.HasField("cancel") else "",
            budget_exhausted=task.cancel.budget_exhausted if task.HasField("cancel") else "",
            result=from_value(task.result) if task.HasField("result") else None,
            error=task.error,
            checkpoints=tuple(kept),
        )

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


class CancelCall(enum.Enum):
    SOFT = "soft"
    HARD = "hard"
    BULK_SOFT = "bulk-soft"
    BULK_HARD = "bulk-hard"


@dataclasses.dataclass(frozen=True)
class CancelAck:
    """A cancel a client saw answered: a SoftCancel/HardCancel reply, or a CancelTasks
    reply that listed the task."""

    call: CancelCall
    #: Unique per call, so the record's ``cancel.reason`` tells which cancel was recorded.
    reason: str
    #: The CancelOutcome name for single cancels; empty for bulk ones (no per-task outcome).
    outcome: str
    answered_at: float


@dataclasses.dataclass
class Plan:
    """What the load does with one task (drawn from the seed)."""

    kind: str
    params: dict[str, Any]
    max_attempts: int
    #: The budget's one dimension and limit (``tokens`` for chaos tasks, ``steps`` for
    #: sleep tasks), and what one report spends.
    budget: tuple[str, float, float] | None
    #: Seconds after the start to cancel (None: no single cancel), and how.
    cancel_after: float | None
    hard: bool
    #: Cancel when the question comes instead of answering it.
    cancel_question: bool
    session: str
    batch: str


@dataclasses.dataclass
class TaskHistory:
    """Everything the clients saw of one task."""

    number: int
    plan: Plan
    request_id: str
    id: str = ""
    started_at: float = 0.0
    versions: list[Version] = dataclasses.field(default_factory=list)
    #: Watch problems seen as they happened (a gap, a repeated version, a change after the
    #: terminal state).
    watch_faults: list[str] = dataclasses.field(default_factory=list)
    streams: int = 0
    cancels: list[CancelAck] = dataclasses.field(default_factory=list)
    answers_sent: list[str] = dataclasses.field(default_factory=list)
    answers_acked: list[str] = dataclasses.field(default_factory=list)
    #: The task as each replica reports it at the end.
    final: dict[str, Version] = dataclasses.field(default_factory=dict)

    @property
    def last(self) -> Version | None:
        return self.versions[-1] if self.versions else None


@dataclasses.dataclass
class Fault:
    """One injected fault: what, on which part, from when to when."""

    kind: str
    target: str
    start: float
    end: float = 0.0
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a task's code on a chaos worker, from its log."""

    task: str
    attempt: int
    #: ``name/connection`` as the server records it in ``Task.worker``.
    worker: str
    #: The worker process (``w0``, ``w1``…), the target of worker faults.
    process: str
    start: float
    #: When the handler ended (or its process was killed); None: still running at the end.
    end: float | None
    #: complete, cancel_ack, fail, aborted or killed.
    how: str
    #: Whether a soft cancel had reached the handler when it ended.
    cancel_seen: bool


def read_runs(path: Path, process: str, killed_at: list[float]) -> Iterator[Run]:
    """The runs in a worker's log. A run with no end ended when the process was next
    killed (``killed_at``), if it was."""
    open_runs: dict[tuple[str, int, str], dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # the last line of a process killed mid-write
        key = (entry["task"], entry["attempt"], entry["worker"])
        if entry["ev"] == "start":
            open_runs[key] = entry
        elif key in open_runs:
            started = open_runs.pop(key)
            yield Run(
                task=key[0],
                attempt=key[1],
                worker=key[2],
                process=process,
                start=started["t"],
                end=entry["t"],
                how=entry["how"],
                cancel_seen=entry["cancel_seen"],
            )
    for (task, attempt, worker), started in open_runs.items():
        kill = next((t for t in killed_at if t >= started["t"]), None)
        yield Run(
            task=task,
            attempt=attempt,
            worker=worker,
            process=process,
            start=started["t"],
            end=kill,
            how="killed" if kill is not None else "running",
            cancel_seen=False,
        )
