"""pytest fixtures: a two-replica cluster on Redis, TaskService stubs, workers."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

import reins
from harness import PATIENCE, PYTHON_DIR, Cluster
from reins import Worker

if Path(reins.__file__).resolve().is_relative_to(PYTHON_DIR / "reins"):
    raise ImportError(
        f"tests import reins from the source tree ({reins.__file__}): run them with the "
        "installed package (run_tests.sh), from a directory that does not shadow it"
    )
from reins.proto import tasks_pb2_grpc


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    cluster = Cluster()
    yield cluster
    cluster.stop()


@pytest.fixture(autouse=True)
def _logs_on_failure(request):
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for name in ("cluster", "reinsd"):
            if name in request.fixturenames:
                server = request.getfixturevalue(name)
                logs = server.logs() if isinstance(server, Cluster) else server.log()
                print(logs)


@pytest.fixture
def channels() -> Iterator[Callable[[str], tasks_pb2_grpc.TaskServiceStub]]:
    """``stub(address)``: a TaskService stub on a channel closed after the test."""
    opened: list[grpc.Channel] = []

    def stub(address: str) -> tasks_pb2_grpc.TaskServiceStub:
        channel = grpc.insecure_channel(address)
        opened.append(channel)
        return tasks_pb2_grpc.TaskServiceStub(channel)

    yield stub
    for channel in opened:
        channel.close()


@pytest.fixture
def kind() -> str:
    """A task kind of this test's own, so tests never share workers or queues."""
    return f"research-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def workers() -> Iterator[Callable[..., Worker]]:
    """``connect(address, kinds, handler, **kw)``: a started worker, connected (welcome
    received), stopped after the test."""
    started: list[Worker] = []

    def connect(address: str, kinds: list[str], handler, **kwargs) -> Worker:
        kwargs.setdefault("name", "pytest-worker")
        kwargs.setdefault("max_concurrency", 4)
        worker = Worker(address, kinds, handler, **kwargs)
        started.append(worker)
        worker.start()
        assert worker.wait_connected(PATIENCE), "the worker got no welcome"
        return worker

    yield connect
    for worker in started:
        worker.stop()
