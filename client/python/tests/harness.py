"""Test harness: a real redis-server and real ``reinsd`` replicas, as tests/harness does in
Rust, and event-driven waits on tasks.

- ``redis-server`` runs on a free loopback port (never 6379) in a temporary directory,
  nothing persisted; ``$REDIS_SERVER_BIN`` overrides the binary.
- ``reinsd`` is ``<repo>/target/debug/reinsd`` or ``$REINSD_BIN`` (build it first:
  ``cargo build --bins``). Each replica listens on ``127.0.0.1:0`` and prints
  ``reinsd listening on ADDR`` on stdout; its log goes to a file, printed when a test
  using it fails. :meth:`Reinsd.restart` starts it again on the same address.
- ``reins`` is the installed package (run_tests.sh installs it into its venv), never the
  source tree: the source tree has no generated stubs.

Every wait has a deadline (:data:`PATIENCE`); nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

PYTHON_DIR = Path(__file__).resolve().parents[1]
REPO = PYTHON_DIR.parents[1]
sys.path.insert(0, str(PYTHON_DIR / "examples"))

from reins.aio import AsyncClient, AsyncWorker  # noqa: E402
from reins.proto import tasks_pb2, tasks_pb2_grpc  # noqa: E402

T = TypeVar("T")

#: Upper bound of every wait: generous, the machine is shared.
PATIENCE = 20.0

TERMINAL = {
    tasks_pb2.TASK_STATE_COMPLETED,
    tasks_pb2.TASK_STATE_FAILED,
    tasks_pb2.TASK_STATE_CANCELLED,
}


def reinsd_binary() -> Path:
    path = Path(os.environ.get("REINSD_BIN", REPO / "target" / "debug" / "reinsd"))
    if not path.exists():
        pytest.fail(f"{path} is missing: run `cargo build --bins` in {REPO} first")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.settimeout(0.5)
            sock.sendall(b"PING\r\n")
            return sock.recv(7) == b"+PONG\r\n"
    except OSError:
        return False


class RedisServer:
    """A ``redis-server`` of the tests' own on a free loopback port."""

    def __init__(self) -> None:
        binary = os.environ.get("REDIS_SERVER_BIN") or shutil.which("redis-server")
        if not binary:
            pytest.fail("redis-server is not installed (tests/run.sh installs it)")
        self.dir = tempfile.TemporaryDirectory(prefix="reins-redis-")
        # Another process may take the port between the probe and the bind: try again.
        for _ in range(5):
            self.port = free_port()
            assert self.port != 6379
            self.process = subprocess.Popen(
                [
                    binary,
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--loglevel",
                    "warning",
                    "--dir",
                    self.dir.name,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.process.poll() is None:
                if answers_ping(self.port):
                    return
                time.sleep(0.01)  # polling for readiness, with a deadline
            self.stop()
        self.dir.cleanup()
        pytest.fail("redis-server did not start on a free port")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def cleanup(self) -> None:
        self.stop()
        self.dir.cleanup()


class Reinsd:
    """A running ``reinsd`` process; ``address`` is where it listens."""

    def __init__(
        self, *args: str, replica_id: str = "test-replica", env: dict[str, str] | None = None
    ) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix=f"reinsd-{replica_id}-")
        self.log_path = Path(self.dir.name) / "reinsd.log"
        self.replica_id = replica_id
        self.args = args
        #: Extra environment variables of the process (e.g. ``OTEL_*``).
        self.env = env or {}
        self._launch("127.0.0.1:0")

    def restart(self) -> None:
        """Kills the process and starts it again, same id, arguments and address."""
        self._kill()
        self._launch(self.address)

    def _launch(self, listen: str) -> None:
        replica_id = self.replica_id
        command = [
            str(reinsd_binary()),
            "--listen",
            listen,
            "--replica-id",
            replica_id,
            "--shutdown-grace",
            "2s",
            *self.args,
        ]
        env = dict(os.environ, RUST_LOG="info,reins_server=debug", **self.env)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env
            )
        first_line: list[bytes] = []
        got_line = threading.Event()

        def read_stdout() -> None:
            # The first line is the address; the rest is drained so reinsd never blocks
            # (or gets EPIPE) writing to stdout.
            for line in self.process.stdout:
                if not got_line.is_set():
                    first_line.append(line)
                    got_line.set()
            got_line.set()

        self._reader = threading.Thread(target=read_stdout, daemon=True)
        self._reader.start()
        if not got_line.wait(PATIENCE) or not first_line:
            log = self.log()
            self.stop()
            pytest.fail(f"reinsd did not start: {command}\n{log}")
        line = first_line[0].decode().strip()
        prefix = "reinsd listening on "
        if not line.startswith(prefix):
            log = self.log()
            self.stop()
            pytest.fail(f"reinsd printed {line!r}, not its address\n{log}")
        self.address = line[len(prefix) :]

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._reader.join(PATIENCE)
        self.process.stdout.close()

    def stop(self) -> None:
        """Kills the process (if it still runs), reaps it and removes its directory."""
        self._kill()
        self.dir.cleanup()


class Cluster:
    """Replicas ``a`` and ``b`` of one deployment on one Redis (``env``: extra environment
    variables of both)."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.redis = RedisServer()
        self.replicas: list[Reinsd] = []
        try:
            for replica_id in ("a", "b"):
                self.replicas.append(
                    Reinsd("--redis-url", self.redis.url, replica_id=replica_id, env=env)
                )
        except BaseException:
            self.stop()
            raise
        self.a, self.b = self.replicas

    def logs(self) -> str:
        return "\n".join(
            f"---- reinsd {r.replica_id} ({getattr(r, 'address', '?')}) log ----\n{r.log()}"
            for r in self.replicas
        )

    def stop(self) -> None:
        for replica in self.replicas:
            replica.stop()
        self.redis.cleanup()


def watch_until(
    stub: tasks_pb2_grpc.TaskServiceStub,
    task_id: str,
    predicate: Callable[[tasks_pb2.Task], bool],
    what: str,
    timeout: float = PATIENCE,
) -> tasks_pb2.Task:
    """Watches the task and returns the first version satisfying ``predicate``.

    Fails the test if the task ends (or the deadline passes) first.
    """
    last: tasks_pb2.Task | None = None
    try:
        for event in stub.WatchTask(tasks_pb2.WatchTaskRequest(task_id=task_id), timeout=timeout):
            last = event.task
            if predicate(last):
                return last
            if last.state in TERMINAL:
                break
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
        pytest.fail(f"task {task_id}: not {what} within {timeout}s; last seen:\n{last}")
    pytest.fail(f"task {task_id} ended before it was {what}:\n{last}")


def until_terminal(stub, task_id: str, timeout: float = PATIENCE) -> tasks_pb2.Task:
    return watch_until(stub, task_id, lambda t: t.state in TERMINAL, "finished", timeout)


# -- asyncio ---------------------------------------------------------------------------


def run_async(main: Callable[[], Awaitable[T]], timeout: float = 3 * PATIENCE) -> T:
    """Runs ``main()`` in a new event loop, failing the test after ``timeout``."""

    async def bounded() -> T:
        try:
            return await asyncio.wait_for(main(), timeout)
        except asyncio.TimeoutError:
            pytest.fail(f"the test did not finish within {timeout}s")

    return asyncio.run(bounded())


async def until_async(
    client: AsyncClient,
    task_id: str,
    predicate: Callable[[tasks_pb2.Task], bool],
    what: str,
    timeout: float = PATIENCE,
) -> tasks_pb2.Task:
    """:func:`watch_until` with an :class:`~reins.aio.AsyncClient`."""
    last: tasks_pb2.Task | None = None

    async def watch() -> tasks_pb2.Task | None:
        nonlocal last
        async with contextlib.aclosing(client.watch(task_id)) as events:
            async for event in events:
                last = event.task
                if predicate(last):
                    return last
                if last.state in TERMINAL:
                    return None
        return None

    try:
        found = await asyncio.wait_for(watch(), timeout)
    except asyncio.TimeoutError:
        pytest.fail(f"task {task_id}: not {what} within {timeout}s; last seen:\n{last}")
    if found is None:
        pytest.fail(f"task {task_id} ended before it was {what}:\n{last}")
    return found


async def done_async(client: AsyncClient, task_id: str) -> tasks_pb2.Task:
    return await until_async(client, task_id, lambda t: t.state in TERMINAL, "finished")


async def eventually(condition: Callable[[], bool], what: str, timeout: float = PATIENCE) -> None:
    """Polls ``condition`` (for state with no event to wait on) until true or the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not {what} within {timeout}s")
        await asyncio.sleep(0.01)  # polling with a deadline, not synchronising by time


@contextlib.asynccontextmanager
async def serving(
    address: str, kinds: list[str], handler: Any, **kwargs: Any
) -> AsyncIterator[AsyncWorker]:
    """An :class:`AsyncWorker` running in this loop, connected; closed on the way out."""
    kwargs.setdefault("name", "pytest-async")
    kwargs.setdefault("handle_signals", False)
    kwargs.setdefault("shutdown_grace", 0.5)
    worker = AsyncWorker(address, kinds, handler, **kwargs)
    runner = asyncio.ensure_future(worker.run())
    try:
        assert await worker.wait_connected(PATIENCE), "the worker got no welcome"
        yield worker
    finally:
        await worker.close()
        await runner


# -- OpenTelemetry -----------------------------------------------------------------------


class OtlpReceiver:
    """A real OTLP/gRPC trace receiver on a free loopback port: it implements
    ``opentelemetry.proto.collector.trace.v1.TraceService/Export`` (the protocol's own
    messages and service, from ``opentelemetry-proto``) and keeps every span it is sent,
    with its resource's attributes."""

    def __init__(self) -> None:
        from concurrent import futures

        from opentelemetry.proto.collector.trace.v1 import (
            trace_service_pb2,
            trace_service_pb2_grpc,
        )

        receiver = self
        self._lock = threading.Lock()
        self._spans: list[tuple[dict[str, Any], Any]] = []

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):  # the RPC's name
                with receiver._lock:
                    for resource_spans in request.resource_spans:
                        resource = attributes(resource_spans.resource.attributes)
                        for scope_spans in resource_spans.scope_spans:
                            for span in scope_spans.spans:
                                receiver._spans.append((resource, span))
                return trace_service_pb2.ExportTraceServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """``(resource attributes, Span message)`` of every span received so far."""
        with self._lock:
            return list(self._spans)

    def stop(self) -> None:
        self.server.stop(grace=None)


def attributes(key_values: Any) -> dict[str, Any]:
    """OTLP ``KeyValue``s as a dict of plain values."""
    found: dict[str, Any] = {}
    for kv in key_values:
        which = kv.value.WhichOneof("value")
        found[kv.key] = getattr(kv.value, which) if which else None
    return found
