"""examples/client.py as a subprocess: start, watch and cancel a task end to end."""

from __future__ import annotations

import json
import subprocess
import sys

from harness import PATIENCE, PYTHON_DIR
from research_worker import research

CLIENT = PYTHON_DIR / "examples" / "client.py"


def client(server: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(CLIENT), "--server", server, *args],
        capture_output=True,
        text=True,
        timeout=3 * PATIENCE,
    )


def final(output: str) -> dict:
    lines = [line for line in output.splitlines() if line.startswith("final: ")]
    assert len(lines) == 1, output
    return json.loads(lines[0].removeprefix("final: "))


def test_the_client_starts_watches_and_soft_cancels_a_task(cluster, workers, kind):
    workers(cluster.a.address, [kind], research)
    run = client(
        cluster.b.address,
        "start",
        kind,
        "--params",
        '{"topic": "cli", "step_ms": 200}',
        "--watch",
        "--cancel-after-checkpoints",
        "1",
        "--reason",
        "from the cli",
        "--timeout",
        str(PATIENCE),
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("started ")
    assert any(" RUNNING " in line for line in lines), run.stdout
    assert "cancel: REQUESTED" in lines, run.stdout
    task = final(run.stdout)
    assert task["id"] == lines[0].removeprefix("started ")
    assert task["state"] == "TASK_STATE_CANCELLED"
    assert task["owner"] == "a"
    assert task["cancel"]["mode"] == "CANCEL_MODE_SOFT"
    phases = [partial["phase"] for partial in task["partialResults"]]
    assert phases and phases == ["search", "read", "summarize"][: len(phases)]
    assert task["result"]["stopped_early"] is True
    assert task["result"]["reason"] == "from the cli"

    check = client(cluster.a.address, "check", task["id"])
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)["state"] == "TASK_STATE_CANCELLED"


def test_the_client_hard_cancels_a_task(cluster, workers, kind):
    workers(cluster.a.address, [kind], research)
    run = client(
        cluster.b.address,
        "start",
        kind,
        "--params",
        '{"step_ms": 200}',
        "--watch",
        "--cancel-after-checkpoints",
        "1",
        "--hard",
        "--timeout",
        str(PATIENCE),
    )
    assert run.returncode == 0, run.stderr
    assert "cancel: CANCELLED" in run.stdout.splitlines(), run.stdout
    task = final(run.stdout)
    assert task["state"] == "TASK_STATE_CANCELLED"
    assert task["cancel"]["mode"] == "CANCEL_MODE_HARD"
    assert "result" not in task


def test_the_client_answers_and_reports_errors(cluster, workers, kind):
    workers(cluster.a.address, [kind], research)
    run = client(
        cluster.b.address,
        "start",
        kind,
        "--params",
        '{"step_ms": 10, "ask": "Which?"}',
        "--watch",
        "--answer",
        "these",
        "--timeout",
        str(PATIENCE),
    )
    assert run.returncode == 0, run.stderr
    assert "answered" in run.stdout.splitlines(), run.stdout
    assert final(run.stdout)["result"]["answer"] == "these"

    missing = client(cluster.b.address, "check", "01900000-0000-7000-8000-000000000000")
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: NOT_FOUND: "), missing.stderr
