"""The checker on made-up histories: each rule holds for a clean one and catches the
violation it is there for (the chaos run itself only shows that a real run has none).

    client/python/.venv/bin/pytest tests/chaos     # tests/chaos/run.sh runs it first
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from reins.proto import tasks_pb2

from checker import Verdict, check
from history import CancelAck, CancelCall, Fault, Plan, Run, TaskHistory, Version
from load import follow

RUNNING = tasks_pb2.TASK_STATE_RUNNING
PENDING = tasks_pb2.TASK_STATE_PENDING
WAITING = tasks_pb2.TASK_STATE_WAITING_FOR_ANSWER
COMPLETED = tasks_pb2.TASK_STATE_COMPLETED
CANCELLED = tasks_pb2.TASK_STATE_CANCELLED
SOFT = tasks_pb2.CANCEL_MODE_SOFT
REPLICAS = ("r0", "r1")
SLACK = 7.0
W0, W1 = "w0/c0", "w1/c1"


def version(number: int, state: int = RUNNING, **fields: Any) -> Version:
    base = Version(
        version=number,
        state=state,
        time=float(number),
        owner="r0",
        attempt=1,
        worker=W0,
        message="",
        usage={},
        cancel_mode=0,
        cancel_reason="",
        budget_exhausted="",
        result=None,
        error="",
        checkpoints=(),
    )
    return dataclasses.replace(base, **fields)


def report(number: int, step: int, **fields: Any) -> Version:
    """A version holding W0's report of ``step`` in attempt 1."""
    return version(number, message=f"{W0}#1:{step}", **fields)


def history(*versions: Version, final: Version | None = None, **plan: Any) -> TaskHistory:
    made = TaskHistory(
        number=0,
        plan=Plan(
            kind=plan.pop("kind", "chaos"),
            params={},
            max_attempts=plan.pop("max_attempts", 1),
            budget=plan.pop("budget", None),
            cancel_after=None,
            hard=False,
            cancel_question=False,
            session="s",
            batch="b",
        ),
        request_id="r",
        id="t0",
    )
    made.versions = list(versions)
    end = final or versions[-1]
    made.final = {name: end for name in REPLICAS}
    return made


def done(result: Any = None, **fields: Any) -> Version:
    return report(4, 3, state=COMPLETED, result=result, **fields)


def judged(
    task: TaskHistory, runs: list[Run] | None = None, faults: list[Fault] | None = None
) -> Verdict:
    return check([task], runs or [], faults or [], REPLICAS, SLACK)


def run(start: float, end: float | None, attempt: int = 1, **fields: Any) -> Run:
    base = Run(
        task="t0",
        attempt=attempt,
        worker=W0,
        process="w0",
        start=start,
        end=end,
        how="complete",
        cancel_seen=False,
    )
    return dataclasses.replace(base, **fields)


def clean() -> TaskHistory:
    result = {"by": W0, "attempt": 1, "answer": None}
    return history(version(1), report(2, 1), report(3, 2), done(result))


def test_a_clean_history_has_no_violation() -> None:
    assert judged(clean(), [run(1.0, 4.0)]).violations == []


def test_replicas_that_disagree_or_a_task_that_never_ended() -> None:
    task = clean()
    task.final["r1"] = report(3, 2)
    assert "replicas disagree" in judged(task).violations[0]
    task.final = {name: report(3, 2) for name in REPLICAS}
    assert "never ended" in judged(task).violations[0]


def test_a_terminal_state_overwritten() -> None:
    task = clean()
    task.final = {name: version(5, CANCELLED) for name in REPLICAS}
    assert "terminal state overwritten" in judged(task).violations[0]


def test_watch_gaps_repeats_and_changes_after_the_end() -> None:
    task = history(version(1))
    follow(task, version(3))
    follow(task, version(3))
    follow(task, version(4, COMPLETED))
    follow(task, version(5))
    assert len(task.watch_faults) == 3
    assert [v.version for v in task.versions] == [1, 3, 4, 5]
    assert len([v for v in judged(task).violations if "watch" in v]) == 3


def acknowledged(task: TaskHistory, call: CancelCall, outcome: str) -> TaskHistory:
    task.cancels.append(CancelAck(call, "chaos 1", outcome, 3.5))
    return task


def test_an_acknowledged_cancel_missing_from_the_end() -> None:
    task = acknowledged(clean(), CancelCall.SOFT, "CANCEL_OUTCOME_REQUESTED")
    assert "with no cancel" in judged(task).violations[0]
    # A bulk cancel that listed a task it then found finished: fine.
    task = acknowledged(clean(), CancelCall.BULK_SOFT, "")
    assert judged(task, [run(1.0, 4.0)]).violations == []


def test_a_bulk_hard_cancel_that_found_the_task_finished() -> None:
    # A soft cancel was recorded, the completion won it, then the bulk cancel that had
    # listed the task found it finished: nothing of the bulk cancel is in the record.
    result = {"by": W0, "attempt": 1}
    end = done(result, cancel_mode=SOFT, cancel_reason="chaos 0")
    task = acknowledged(history(version(1), report(2, 1), end), CancelCall.BULK_HARD, "")
    assert judged(task, [run(1.0, 4.0)]).violations == []
    task.final = {name: dataclasses.replace(end, cancel_reason="chaos 1") for name in REPLICAS}
    assert "bulk-hard cancel 'chaos 1' answered listed" in judged(task).violations[0]


def test_a_soft_cancel_may_lose_only_to_code_that_never_saw_it() -> None:
    result = {"by": W0, "attempt": 1}
    task = history(version(1), report(2, 1), done(result, cancel_mode=SOFT))
    acknowledged(task, CancelCall.SOFT, "CANCEL_OUTCOME_REQUESTED")
    assert judged(task, [run(1.0, 4.0)]).violations == []
    saw_it = [run(1.0, 4.0, cancel_seen=True)]
    assert "saw the cancel" in judged(task, saw_it).violations[0]


def test_a_hard_cancel_that_did_not_end_the_task() -> None:
    task = acknowledged(clean(), CancelCall.HARD, "CANCEL_OUTCOME_CANCELLED")
    task.final = {name: done({"by": W0, "attempt": 1}, cancel_mode=SOFT) for name in REPLICAS}
    assert "answered CANCEL_OUTCOME_CANCELLED, but it ended COMPLETED" in judged(task).violations[0]


def test_a_fenced_report_taken_or_a_report_taken_twice() -> None:
    stale = version(3, message=f"{W1}#1:2")
    task = history(version(1), report(2, 1), stale, done({"by": W0, "attempt": 1}))
    assert "a fenced write was taken" in judged(task).violations[0]
    again = history(version(1), report(2, 1), report(3, 2), report(4, 1), report(5, 3))
    again.final = {name: report(5, 3, state=COMPLETED) for name in REPLICAS}
    assert any("recorded twice" in v for v in judged(again).violations)


def test_a_checkpoint_kept_twice() -> None:
    twice = done({"by": W0, "attempt": 1}, checkpoints=((1, 1), (1, 2), (1, 2), (1, 3)))
    task = history(version(1), report(2, 1), twice)
    assert "a checkpoint recorded twice" in judged(task).violations[0]


def test_a_completed_result_from_an_older_attempt() -> None:
    task = history(version(1), report(2, 1), done({"by": W0, "attempt": 1}, attempt=2))
    assert any("completed with the result of" in v for v in judged(task).violations)


def requeued() -> TaskHistory:
    """Attempt 1 on r0 handed back at t=3; attempt 2 on r1 runs to the end."""
    return history(
        version(1),
        report(2, 1),
        version(3, PENDING, owner="", worker="", message=f"{W0}#1:1"),
        version(4, owner="r1", attempt=2, worker=W1, message=f"{W0}#1:1"),
        version(
            5,
            COMPLETED,
            owner="r1",
            attempt=2,
            worker=W1,
            message=f"{W1}#2:1",
            result={"by": W1, "attempt": 2},
        ),
        max_attempts=2,
    )


def test_a_run_that_outlived_its_attempt() -> None:
    late = [run(1.0, 3.0 + SLACK + 1), run(4.0, 5.0, attempt=2, worker=W1, process="w1")]
    verdict = judged(requeued(), late)
    assert "until 8.0 s after the store ended it" in verdict.violations[0]
    assert verdict.stats["runs overlapping a later attempt"] == 1
    # Excused while its replica was stopped: it could not know before the end of the stop.
    stopped = [Fault("stop", "r0", 2.0, 6.0)]
    assert judged(requeued(), late, stopped).violations == []
    assert "still ran at the end" in judged(requeued(), [run(1.0, None)]).violations[0]


@pytest.mark.parametrize(("spent", "violations"), [(30.0, 0), (40.0, 1)])
def test_a_budget_exceeded_by_more_than_one_report(spent: float, violations: int) -> None:
    usage = {"tokens": spent}
    task = history(
        version(1),
        report(2, 1, usage={"tokens": 10.0}),
        done({"by": W0, "attempt": 1}, usage=usage),
        budget=("tokens", 25.0, 10.0),
    )
    assert len(judged(task).violations) == violations


def test_two_reports_crossing_one_limit() -> None:
    budget = ("tokens", 25.0, 10.0)
    crossing = [report(2, 1, usage={"tokens": 30.0}), report(3, 2, usage={"tokens": 20.0})]
    task = history(
        version(1), *crossing, done({"by": W0, "attempt": 1}, usage={"tokens": 30.0}), budget=budget
    )
    assert any("2 reports crossed" in v for v in judged(task).violations)


def test_an_answer_nobody_sent() -> None:
    task = history(version(1), report(2, 1), done({"by": W0, "attempt": 1, "answer": "blue"}))
    assert "which nobody sent" in judged(task).violations[0]
    task.answers_sent.append("blue")
    assert judged(task).violations == []
