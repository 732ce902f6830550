"""OpenTelemetry end to end: one trace follows a task from a client's span through the
replica that took StartTask (b), the replica that ran it (a), the worker's handler and the
soft cancel that stopped it. The replicas export to a real OTLP/gRPC receiver
(:class:`harness.OtlpReceiver`); the client and the worker (this process) use the
OpenTelemetry SDK with an in-memory exporter."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import grpc.aio
import pytest
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from harness import (
    PATIENCE,
    Cluster,
    OtlpReceiver,
    attributes,
    eventually,
    run_async,
    serving,
    watch_until,
)
from reins import Cancelled, Client, TaskContext
from reins.aio import AsyncTaskContext
from reins.proto import tasks_pb2, tasks_pb2_grpc


@pytest.fixture(scope="module")
def local_spans() -> Iterator[InMemorySpanExporter]:
    """The spans of this process (the client's and the workers' handlers)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "pytest"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    yield exporter
    provider.shutdown()


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def traced(receiver: OtlpReceiver) -> Iterator[Cluster]:
    """Replicas a and b exporting to the receiver, in batches of a tenth of a second."""
    cluster = Cluster(
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_SERVICE_NAME": "reinsd-test",
        }
    )
    yield cluster
    cluster.stop()


def metadata() -> list[tuple[str, str]]:
    """The current context as gRPC metadata (what gRPC instrumentation would send), for
    calls made with the generated stubs."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return list(carrier.items())


def hex_id(raw: bytes) -> str:
    return raw.hex()


def spans_until(
    receiver: OtlpReceiver,
    found: Callable[[list[tuple[dict[str, Any], Any]]], bool],
    what: str,
) -> list[tuple[dict[str, Any], Any]]:
    """Polls the receiver (batches arrive on the exporter's schedule) until ``found``."""
    deadline = time.monotonic() + PATIENCE
    while True:
        spans = receiver.spans()
        if found(spans):
            return spans
        if time.monotonic() > deadline:
            names = sorted({span.name for _, span in spans})
            pytest.fail(f"the receiver got no {what} within {PATIENCE}s; got {names}")
        time.sleep(0.05)  # polling with a deadline, not synchronising by time


def test_one_trace_from_the_client_through_both_replicas_the_worker_and_the_cancel(
    traced: Cluster,
    receiver: OtlpReceiver,
    local_spans: InMemorySpanExporter,
    channels,
    workers,
    kind: str,
) -> None:
    running = threading.Event()

    def handler(ctx: TaskContext) -> None:
        while True:
            if ctx.checkpoint({"step": 1}, 0.5):
                raise Cancelled({"stopped": True})
            running.set()
            ctx.wait_cancelled(PATIENCE)

    workers(traced.a.address, [kind], handler)  # the worker is on a: a runs the task
    b = channels(traced.b.address)
    tracer = trace.get_tracer("pytest")
    # reins.Client sends the current context with each call.
    with Client(traced.b.address) as client, tracer.start_as_current_span("client") as client_span:
        task = client.start(kind)
        assert running.wait(PATIENCE), "the worker never ran the task"
        client.soft_cancel(task.id, "enough")
    done = watch_until(b, task.id, lambda t: t.state == tasks_pb2.TASK_STATE_CANCELLED, "cancelled")
    assert done.owner == "a"

    trace_id = format(client_span.get_span_context().trace_id, "032x")
    assert task.trace_id == trace_id, "Task.trace_id is the trace of the StartTask call"
    assert done.trace_id == trace_id

    def named(spans, name: str, replica: str | None = None):
        return [
            (resource, span)
            for resource, span in spans
            if span.name == name
            and (replica is None or resource.get("service.instance.id") == replica)
            and attributes(span.attributes).get("reins.task.id") == task.id
        ]

    spans = spans_until(
        receiver,
        lambda spans: (
            named(spans, "reins.task.run", "a")
            and named(spans, "reins.v1.TaskService/SoftCancel", "b")
        ),
        "execution span from a and cancel span from b",
    )
    [(b_resource, start)] = named(spans, "reins.v1.TaskService/StartTask", "b")
    [(a_resource, run)] = named(spans, "reins.task.run", "a")
    [(_, cancel)] = named(spans, "reins.v1.TaskService/SoftCancel", "b")
    [(_, queued)] = named(spans, "reins.task.queued", "a")
    assert b_resource["service.name"] == "reinsd-test"
    assert a_resource["service.instance.id"] == "a"

    # One trace: client span → b's StartTask → a's execution (and its queue wait).
    for span in (start, run, cancel, queued):
        assert hex_id(span.trace_id) == trace_id, span.name
    client_span_id = format(client_span.get_span_context().span_id, "016x")
    assert hex_id(start.parent_span_id) == client_span_id
    assert hex_id(cancel.parent_span_id) == client_span_id
    assert hex_id(run.parent_span_id) == hex_id(start.span_id)
    assert hex_id(queued.parent_span_id) == hex_id(start.span_id)
    assert queued.end_time_unix_nano >= queued.start_time_unix_nano

    # The RPC semantic conventions on the server spans.
    started_attrs = attributes(start.attributes)
    assert start.kind == 2  # SPAN_KIND_SERVER
    assert started_attrs["rpc.system"] == "grpc"
    assert started_attrs["rpc.service"] == "reins.v1.TaskService"
    assert started_attrs["rpc.method"] == "StartTask"
    assert started_attrs["rpc.grpc.status_code"] == 0
    assert started_attrs["server.address"] == "127.0.0.1"
    assert str(started_attrs["server.port"]) == traced.b.address.rsplit(":", 1)[1]
    assert started_attrs["network.peer.address"] == "127.0.0.1"
    assert started_attrs["reins.task.kind"] == kind
    assert started_attrs["reins.task.state"] == "PENDING"
    cancel_attrs = attributes(cancel.attributes)
    assert cancel_attrs["rpc.method"] == "SoftCancel"
    assert cancel_attrs["rpc.grpc.status_code"] == 0
    assert cancel_attrs["reins.task.state"] == "RUNNING"

    # The execution span: linked to the cancel call, with the task's events.
    assert [(hex_id(link.trace_id), hex_id(link.span_id)) for link in run.links] == [
        (trace_id, hex_id(cancel.span_id))
    ]
    events = {event.name: attributes(event.attributes) for event in run.events}
    assert events["cancel.requested"] == {
        "reins.cancel.mode": "soft",
        "reins.cancel.reason": "enough",
        "reins.cancel.replica": "b",
    }
    assert "checkpoint" in events
    assert events["task.finished"] == {"reins.task.state": "CANCELLED"}
    run_attrs = attributes(run.attributes)
    assert run_attrs["reins.task.state"] == "CANCELLED"
    assert run_attrs["reins.task.queue_wait_ms"] >= 0

    # The worker's handler span: a child of a's execution span, in the same trace.
    [handled] = [
        span
        for span in local_spans.get_finished_spans()
        if span.name == "reins.task.handle" and span.attributes["reins.task.id"] == task.id
    ]
    assert format(handled.context.trace_id, "032x") == trace_id
    assert handled.parent is not None
    assert format(handled.parent.span_id, "016x") == hex_id(run.span_id)
    assert handled.attributes["reins.task.outcome"] == "cancel_ack"


def test_the_async_worker_handler_joins_the_trace(
    traced: Cluster, receiver: OtlpReceiver, local_spans: InMemorySpanExporter, kind: str
) -> None:
    async def handler(ctx: AsyncTaskContext) -> dict[str, bool]:
        return {"done": True}

    def handled(task_id: str) -> list[Any]:
        return [
            s
            for s in local_spans.get_finished_spans()
            if s.name == "reins.task.handle" and s.attributes["reins.task.id"] == task_id
        ]

    async def main() -> tuple[tasks_pb2.Task, trace.Span]:
        async with serving(traced.a.address, [kind], handler):
            async with grpc.aio.insecure_channel(traced.a.address) as channel:
                stub = tasks_pb2_grpc.TaskServiceStub(channel)
                with tracer.start_as_current_span("async client") as span:
                    task = await stub.StartTask(
                        tasks_pb2.StartTaskRequest(kind=kind), metadata=metadata()
                    )
            await eventually(lambda: bool(handled(task.id)), "the async handler's span ended")
            return task, span

    tracer = trace.get_tracer("pytest")
    task, client_span = run_async(main)
    trace_id = format(client_span.get_span_context().trace_id, "032x")
    assert task.trace_id == trace_id
    [span] = handled(task.id)
    assert format(span.context.trace_id, "032x") == trace_id
    assert span.attributes["reins.task.outcome"] == "complete"
    spans = spans_until(
        receiver,
        lambda spans: any(
            span.name == "reins.task.run"
            and attributes(span.attributes).get("reins.task.id") == task.id
            for _, span in spans
        ),
        "execution span of the async worker's task",
    )
    [run] = [
        span
        for _, span in spans
        if span.name == "reins.task.run"
        and attributes(span.attributes).get("reins.task.id") == task.id
    ]
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == hex_id(run.span_id)


def test_an_error_answer_records_its_code_and_is_not_a_server_failure(
    traced: Cluster, receiver: OtlpReceiver, channels
) -> None:
    missing = "01900000-0000-7000-8000-000000000000"
    with pytest.raises(grpc.RpcError) as raised:
        channels(traced.b.address).CheckTask(tasks_pb2.CheckTaskRequest(task_id=missing))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND

    def checks(spans):
        return [
            span
            for resource, span in spans
            if span.name == "reins.v1.TaskService/CheckTask"
            and resource.get("service.instance.id") == "b"
            and attributes(span.attributes).get("rpc.grpc.status_code") == 5
        ]

    [span] = checks(spans_until(receiver, checks, "CheckTask span with NOT_FOUND"))
    # NOT_FOUND is the client's business: the span's status stays unset (not ERROR).
    assert span.status.code == 0
