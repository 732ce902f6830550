"""Traces, when OpenTelemetry is there (``pip install 'reins[otel]'``): the handler's span,
and the caller's context on every client call.

A task's assignment carries the W3C Trace Context of its execution on the server
(``TaskAssignment.trace_context``); the worker runs the handler inside a span that is a
child of it, so the handler's own spans (and those of the libraries it calls) land in the
task's trace. Without ``opentelemetry-api`` installed, or without a tracer provider set up
by the application, this costs nothing and records nothing. The worker's stream itself
gets no span (it lives as long as the worker).

Clients (:class:`reins.Client`, :class:`reins.aio.AsyncClient`) send the current context
with each call (:func:`trace_metadata`, through the application's propagator: W3C
``traceparent``/``tracestate`` and ``baggage`` by default), so the task they start belongs
to the caller's trace.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

try:
    from opentelemetry import propagate, trace
except ImportError:  # the optional dependency is not installed
    trace = None  # type: ignore[assignment]

from ._calls import TaskInfo

#: The instrumentation scope of the handler spans.
SCOPE = "reins"


class HandlerSpan:
    """Records how the handler ended on its span (no-op without OpenTelemetry)."""

    def __init__(self, span: Any) -> None:
        self._span = span

    def outcome(self, outcome: str, error: str = "") -> None:
        """``outcome``: ``complete``, ``cancel_ack``, ``fail`` or ``aborted``."""
        if self._span is None:
            return
        self._span.set_attribute("reins.task.outcome", outcome)
        if outcome == "fail":
            assert trace is not None
            self._span.set_status(trace.Status(trace.StatusCode.ERROR, error))


@contextlib.contextmanager
def handler_span(task: TaskInfo, trace_context: Mapping[str, str]) -> Iterator[HandlerSpan]:
    """A CONSUMER span ``reins.task.handle`` around a handler, child of ``trace_context``;
    current while the handler runs (in its thread, or its asyncio task's context)."""
    if trace is None:
        yield HandlerSpan(None)
        return
    parent = propagate.extract(dict(trace_context))
    tracer = trace.get_tracer(SCOPE)
    with tracer.start_as_current_span(
        "reins.task.handle",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes={
            "reins.task.id": task.id,
            "reins.task.kind": task.kind,
            "reins.task.attempt": task.attempt,
        },
        # How a handler stops (Cancelled, Aborted) is its outcome, not an error.
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield HandlerSpan(span)


def trace_metadata() -> tuple[tuple[str, str], ...]:
    """The current context as gRPC metadata; empty without OpenTelemetry or a span."""
    if trace is None:
        return ()
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple(carrier.items())
