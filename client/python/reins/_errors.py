"""The exceptions of the package: one for failed calls, three for stopping a task, one for
a question nobody answered in time."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

#: The trailer in which gRPC servers send a ``google.rpc.Status`` with its details.
STATUS_DETAILS_KEY = "grpc-status-details-bin"


class ReinsError(grpc.RpcError):
    """A call to Reins failed: the one exception type the clients and workers raise.

    ``code()`` is the gRPC status code, ``details()`` the server's message (as on
    ``grpc.RpcError`` and ``grpc.Call``); ``reason`` and ``domain`` come from the
    ``google.rpc.ErrorInfo`` the server attaches (``TASK_NOT_FOUND``, ``KIND_UNKNOWN``,
    ``TASK_NOT_WAITING``, … in domain ``reins.v1``; empty when there is none, e.g. for a
    server that cannot be reached: UNAVAILABLE). ``field_violations`` lists the
    ``google.rpc.BadRequest`` entries as ``(field, description)``. Branch on ``reason``
    (stable), not on ``details()`` (for people)::

        try:
            client.check(task_id)
        except reins.ReinsError as err:
            if err.reason == "TASK_NOT_FOUND":
                ...

    A subclass of ``grpc.RpcError``, so code that catches that keeps working.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        metadata: dict[str, str] | None = None,
        field_violations: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}" + (f" ({reason})" if reason else ""))
        self._code = code
        self._message = message
        self.reason = reason
        self.domain = domain
        #: ``ErrorInfo.metadata``.
        self.metadata = dict(metadata or {})
        self.field_violations = list(field_violations or [])

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError) -> ReinsError:
        """Decodes a failed call (sync or ``grpc.aio``) into a :class:`ReinsError`."""
        if isinstance(err, ReinsError):
            return err
        code_of = getattr(err, "code", None)
        code = code_of() if callable(code_of) else grpc.StatusCode.UNKNOWN
        details_of = getattr(err, "details", None)
        message = (details_of() if callable(details_of) else None) or str(err)
        trailers_of = getattr(err, "trailing_metadata", None)
        trailers = trailers_of() if callable(trailers_of) else None
        error = cls(code, message)
        error._read_details(trailers)
        error.__cause__ = err
        return error

    def code(self) -> grpc.StatusCode:
        """The gRPC status code."""
        return self._code

    def details(self) -> str:
        """The server's message, for people."""
        return self._message

    def _read_details(self, trailers: Iterable[tuple[str, Any]] | None) -> None:
        for key, value in trailers or ():
            if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
                continue
            status = status_pb2.Status()
            try:
                status.ParseFromString(value)
            except Exception:
                return
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                bad = error_details_pb2.BadRequest()
                if detail.Is(info.DESCRIPTOR):
                    detail.Unpack(info)
                    self.reason, self.domain = info.reason, info.domain
                    self.metadata = dict(info.metadata)
                elif detail.Is(bad.DESCRIPTOR):
                    detail.Unpack(bad)
                    self.field_violations = [(v.field, v.description) for v in bad.field_violations]
            self.args = (
                f"{self._code.name}: {self._message}"
                + (f" ({self.reason})" if self.reason else ""),
            )


class CancelRequested(Exception):
    """A soft cancel was requested for the task.

    Raised by ``ctx.raise_if_cancelled()`` and ``ctx.ask()`` (and, in an
    :class:`~reins.aio.AsyncWorker`, by ``ctx.checkpoint()``) once a cancel has arrived. A
    handler that lets it propagate acknowledges the cancel (``cancel_ack``) without a
    result; the partial results checkpointed so far are kept. To stop with a result, raise
    :class:`Cancelled` instead.
    """

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason or "a cancel was requested")
        self.reason = reason


class Aborted(CancelRequested):
    """Thread workers only: the task was hard-cancelled (``abort``); it is CANCELLED
    already. Stop now; nothing the handler sends afterwards counts.

    Raised by ``ctx.sleep``, ``ctx.ask`` and ``ctx.raise_if_cancelled`` of a
    :class:`~reins.Worker`'s context. (An :class:`~reins.aio.AsyncWorker` cancels the
    handler's asyncio task instead: ``asyncio.CancelledError``.)
    """


class Cancelled(Exception):
    """Raise from a handler to stop the task after a soft cancel, with ``result``.

    The worker sends ``cancel_ack`` with ``result`` (what was done); the task ends
    CANCELLED, keeping its partial results. Raised without a cancel having been requested,
    the server records the task FAILED ("the task stopped without being asked to").
    """

    def __init__(self, result: Any = None) -> None:
        super().__init__("the task stopped on request")
        self.result = result


class AnswerTimedOut(TimeoutError):
    """The question asked with ``answer_within`` was not answered in time: the server
    resumed the task without an answer (``Task.answer_timed_out``). The task runs on;
    AnswerTask for that question is refused from now on."""

    def __init__(self, question: str) -> None:
        super().__init__(f"nobody answered {question!r} in time")
        self.question = question
