"""The Python research worker against two real replicas on Redis.

The worker connects to replica ``a``; tasks are started, watched, cancelled and answered
through replica ``b``, so every step crosses replicas (b → Redis → a → worker).
"""

from __future__ import annotations

import threading

import grpc
import pytest

import research_worker
from harness import PATIENCE, until_terminal, watch_until
from reins import Aborted, Worker, from_value
from reins.proto import tasks_pb2
from research_worker import research

ALL_PHASES = [phase for phase, _ in research_worker.PHASES]


def start(stub, kind: str, **params) -> tasks_pb2.Task:
    request = tasks_pb2.StartTaskRequest(kind=kind, description="pytest")
    request.params.update(params)
    return stub.StartTask(request)


def phases(task: tasks_pb2.Task) -> list[str]:
    return [from_value(partial)["phase"] for partial in task.partial_results]


class Recorder:
    """Wraps a handler: records what each task's context saw and how the handler ended,
    and every message the worker sent or received (via ``trace``)."""

    def __init__(self, handler=research) -> None:
        self.handler = handler
        self.lock = threading.Lock()
        self.seen: dict[str, dict] = {}
        self.done: dict[str, threading.Event] = {}
        self.messages: list[tuple[str, str, str]] = []  # (direction, what, task_id)

    def event(self, task_id: str) -> threading.Event:
        with self.lock:
            return self.done.setdefault(task_id, threading.Event())

    def __call__(self, ctx):
        ended = "returned"
        try:
            return self.handler(ctx)
        except BaseException as err:
            ended = type(err).__name__
            raise
        finally:
            with self.lock:
                self.seen[ctx.task.id] = {
                    "ended": ended,
                    "aborted": ctx.aborted,
                    "abort_reason": ctx.abort_reason,
                    "cancel_requested": ctx.cancel_requested,
                    "cancel_reason": ctx.cancel_reason,
                    "params": ctx.task.params,
                }
            self.event(ctx.task.id).set()

    def trace(self, direction: str, message) -> None:
        field = "message" if direction == "send" else "command"
        what = message.WhichOneof(field)
        body = getattr(message, what)
        task_id = getattr(body, "task_id", "") or (body.task.id if what == "assign" else "")
        with self.lock:
            self.messages.append((direction, what, task_id))

    def wait(self, task_id: str) -> dict:
        assert self.event(task_id).wait(PATIENCE), f"the handler of {task_id} did not return"
        with self.lock:
            return self.seen[task_id]

    def sent(self, task_id: str) -> list[str]:
        with self.lock:
            return [what for d, what, t in self.messages if d == "send" and t == task_id]

    def received(self, task_id: str) -> list[str]:
        with self.lock:
            return [what for d, what, t in self.messages if d == "recv" and t == task_id]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def worker_on_a(cluster, workers, kind, recorder) -> Worker:
    return workers(
        cluster.a.address, [kind], recorder, name="research-pytest", trace=recorder.trace
    )


def test_a_task_started_on_b_runs_on_the_worker_connected_to_a(
    cluster, channels, kind, worker_on_a, recorder
):
    b = channels(cluster.b.address)
    task = start(b, kind, topic="rust", step_ms=10)
    assert task.kind == kind

    done = until_terminal(b, task.id)

    assert done.state == tasks_pb2.TASK_STATE_COMPLETED, done
    assert done.owner == "a"
    assert done.worker == f"research-pytest/{worker_on_a.worker_id}"
    assert from_value(done.result) == {
        "topic": "rust",
        "phases_done": ALL_PHASES,
        "summary": "rust: 8 steps in 3 phases",
        "answer": None,
        "stopped_early": False,
        "reason": "",
    }
    assert phases(done) == ALL_PHASES
    assert done.progress.fraction == pytest.approx(1.0)
    assert recorder.wait(task.id)["params"] == {"topic": "rust", "step_ms": 10}
    assert recorder.sent(task.id)[-1] == "complete"
    # Replica a reads the same record.
    a = channels(cluster.a.address)
    assert a.CheckTask(tasks_pb2.CheckTaskRequest(task_id=task.id)) == done


def test_a_soft_cancel_from_b_stops_the_task_at_a_checkpoint(
    cluster, channels, kind, worker_on_a, recorder
):
    b = channels(cluster.b.address)
    task = start(b, kind, topic="grpc", step_ms=200)  # a phase takes 600 ms or more
    watch_until(b, task.id, lambda t: len(t.partial_results) >= 1, "checkpointed")

    response = b.SoftCancel(tasks_pb2.SoftCancelRequest(task_id=task.id, reason="enough"))
    assert response.outcome == tasks_pb2.CANCEL_OUTCOME_REQUESTED, response

    done = until_terminal(b, task.id)
    assert done.state == tasks_pb2.TASK_STATE_CANCELLED, done
    assert done.cancel.mode == tasks_pb2.CANCEL_MODE_SOFT
    assert not done.cancel.escalated
    done_phases = phases(done)
    assert 1 <= len(done_phases) < len(ALL_PHASES), done_phases
    assert done_phases == ALL_PHASES[: len(done_phases)]
    assert from_value(done.result) == {
        "topic": "grpc",
        "phases_done": done_phases,
        "answer": None,
        "stopped_early": True,
        "reason": "enough",
    }
    seen = recorder.wait(task.id)
    assert seen["ended"] == "Cancelled" and not seen["aborted"], seen
    assert "cancel" in recorder.received(task.id)
    assert recorder.sent(task.id)[-1] == "cancel_ack"


def test_a_hard_cancel_from_b_cancels_at_once_and_aborts_the_handler(
    cluster, channels, kind, worker_on_a, recorder
):
    b = channels(cluster.b.address)
    task = start(b, kind, topic="abort", step_ms=100)
    watch_until(b, task.id, lambda t: len(t.partial_results) >= 1, "checkpointed")

    response = b.HardCancel(tasks_pb2.HardCancelRequest(task_id=task.id, reason="stop now"))
    assert response.outcome == tasks_pb2.CANCEL_OUTCOME_CANCELLED, response
    assert response.task.state == tasks_pb2.TASK_STATE_CANCELLED  # when the call returns
    assert response.task.cancel.mode == tasks_pb2.CANCEL_MODE_HARD

    seen = recorder.wait(task.id)
    assert seen["aborted"], seen
    assert seen["ended"] == Aborted.__name__, seen
    assert "abort" in recorder.received(task.id)
    # Nothing that ends the task was sent for it after the abort.
    assert not {"complete", "fail", "cancel_ack"} & set(recorder.sent(task.id)), recorder.sent(
        task.id
    )
    a = channels(cluster.a.address)
    final = a.CheckTask(tasks_pb2.CheckTaskRequest(task_id=task.id))
    assert final.state == tasks_pb2.TASK_STATE_CANCELLED
    assert not final.HasField("result")
    assert len(final.partial_results) < len(ALL_PHASES)


@pytest.mark.parametrize("via", ["a", "b"])
def test_the_abort_carries_the_reason_of_the_hard_cancel(
    cluster, channels, kind, worker_on_a, recorder, via
):
    # workers.proto: `AbortTask.reason`; remote.rs keeps the record "for the reason of an
    # abort". The worker should learn why its task was stopped, as it does for `cancel`.
    b = channels(cluster.b.address)
    task = start(b, kind, step_ms=100)
    watch_until(b, task.id, lambda t: len(t.partial_results) >= 1, "checkpointed")

    replica = channels(getattr(cluster, via).address)
    replica.HardCancel(tasks_pb2.HardCancelRequest(task_id=task.id, reason="stop now"))

    seen = recorder.wait(task.id)
    assert seen["aborted"], seen
    assert seen["abort_reason"] == "stop now", seen


def test_a_question_answered_through_b_reaches_the_handler(
    cluster, channels, kind, worker_on_a, recorder
):
    b = channels(cluster.b.address)
    task = start(b, kind, topic="q", step_ms=10, ask="Which sources?")
    waiting = watch_until(
        b,
        task.id,
        lambda t: t.state == tasks_pb2.TASK_STATE_WAITING_FOR_ANSWER,
        "waiting for an answer",
    )
    assert waiting.question == "Which sources?"
    assert phases(waiting) == ["search"]

    answered = b.AnswerTask(tasks_pb2.AnswerTaskRequest(task_id=task.id, answer="arxiv"))
    assert answered.state != tasks_pb2.TASK_STATE_WAITING_FOR_ANSWER

    done = until_terminal(b, task.id)
    assert done.state == tasks_pb2.TASK_STATE_COMPLETED, done
    assert done.answer == "arxiv"
    assert from_value(done.result)["answer"] == "arxiv"  # the handler got it from ask()
    assert "answer" in recorder.received(task.id)


def test_a_soft_cancel_while_waiting_for_an_answer_stops_the_task(
    cluster, channels, kind, worker_on_a, recorder
):
    b = channels(cluster.b.address)
    task = start(b, kind, topic="q", step_ms=10, ask="Which sources?")
    watch_until(b, task.id, lambda t: t.state == tasks_pb2.TASK_STATE_WAITING_FOR_ANSWER, "waiting")

    response = b.SoftCancel(tasks_pb2.SoftCancelRequest(task_id=task.id, reason="no answer"))
    assert response.outcome == tasks_pb2.CANCEL_OUTCOME_REQUESTED, response

    done = until_terminal(b, task.id)
    assert done.state == tasks_pb2.TASK_STATE_CANCELLED, done
    assert phases(done) == ["search"]
    assert from_value(done.result)["phases_done"] == ["search"]
    assert from_value(done.result)["reason"] == "no answer"
    assert recorder.wait(task.id)["ended"] == "Cancelled"


def test_an_exception_in_the_handler_fails_the_task(cluster, channels, kind, worker_on_a):
    b = channels(cluster.b.address)
    task = start(b, kind, topic="nothing", step_ms=10, fail_in="read")

    done = until_terminal(b, task.id)
    assert done.state == tasks_pb2.TASK_STATE_FAILED, done
    assert done.error == "read failed: no sources about 'nothing'"
    assert phases(done) == ["search"]


def test_a_result_that_is_not_json_fails_the_task_and_keeps_the_stream(
    cluster, channels, kind, workers
):
    results = iter([float("nan"), {"ok": True}])
    worker = workers(cluster.a.address, [kind], lambda ctx: next(results), max_concurrency=1)
    b = channels(cluster.b.address)

    first = until_terminal(b, start(b, kind).id)
    assert first.state == tasks_pb2.TASK_STATE_FAILED, first
    assert "not JSON" in first.error
    second = until_terminal(b, start(b, kind).id)
    assert second.state == tasks_pb2.TASK_STATE_COMPLETED, second
    assert from_value(second.result) == {"ok": True}
    assert worker.error is None


def test_a_worker_cannot_serve_a_built_in_kind(cluster):
    worker = Worker(cluster.a.address, ["sleep"], research, name="bad")
    with pytest.raises(grpc.RpcError) as raised:
        worker.run()
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "built-in" in raised.value.details()


def test_an_ignored_soft_cancel_escalates_to_an_abort_after_the_grace_period(
    cluster, channels, kind, workers
):
    recorder = Recorder(handler=lambda ctx: ctx.sleep(3 * PATIENCE))  # never checkpoints
    workers(cluster.a.address, [kind], recorder, trace=recorder.trace)
    b = channels(cluster.b.address)
    task = start(b, kind)
    watch_until(b, task.id, lambda t: t.state == tasks_pb2.TASK_STATE_RUNNING, "running")

    request = tasks_pb2.SoftCancelRequest(task_id=task.id, reason="too slow")
    request.grace_period.FromMilliseconds(300)
    assert b.SoftCancel(request).outcome == tasks_pb2.CANCEL_OUTCOME_REQUESTED

    done = until_terminal(b, task.id)
    assert done.state == tasks_pb2.TASK_STATE_CANCELLED, done
    assert done.cancel.escalated
    seen = recorder.wait(task.id)
    assert seen["aborted"] and seen["ended"] == "Aborted", seen
    assert seen["cancel_reason"] == "too slow"
    assert recorder.received(task.id)[-2:] == ["cancel", "abort"]


def test_a_task_whose_worker_is_lost_is_retried_on_another_worker(cluster, channels, kind, workers):
    first = workers(cluster.a.address, [kind], lambda ctx: ctx.sleep(3 * PATIENCE), name="first")
    b = channels(cluster.b.address)
    request = tasks_pb2.StartTaskRequest(kind=kind, max_attempts=2)
    task = b.StartTask(request)
    watch_until(b, task.id, lambda t: t.worker.startswith("first/"), "running on the first worker")

    first.stop()
    workers(cluster.b.address, [kind], lambda ctx: {"attempt": ctx.task.attempt}, name="second")

    done = until_terminal(b, task.id)
    assert done.state == tasks_pb2.TASK_STATE_COMPLETED, done
    assert done.attempt == 2
    assert done.owner == "b"
    assert done.worker.startswith("second/")
    assert from_value(done.result) == {"attempt": 2}
